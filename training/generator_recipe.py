"""Recipe: LoRA fine-tuning of the generator for tone, format and grounding (RAFT). Reads top to bottom.

    data    -> validate chat JSONL, clean, de-duplicate, seeded 80/10/10 split, RAFT prompts built with
               the serving template and the real retriever; all stored in the run directory
    model   -> base generator (4-bit QLoRA when CUDA + bitsandbytes are present, else full precision)
               with a peft LoraConfig
    train   -> TRL SFTTrainer, prompt/completion format (loss on the answer only), eval loss each epoch,
               early stopping, best checkpoint kept; ``resume`` continues an interrupted run
    save    -> a versioned adapter artifact: peft files + manifest (base model, data hash, split sizes,
               hyperparameters, loss curve, trainable fraction, adapter size, wall time)

Also here: ``train_dpo`` (TRL DPOTrainer on top of an SFT adapter) and ``merge_adapter`` (export a merged model).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import artifacts
from core.errors import ConfigError, InvalidInputError, NotFoundError
from core.jsonl import read_jsonl
from core.models import load_generator, resolve_device, resolve_generator
from core.prompt import ContextPassage, build_prompt, escape_control_tokens, load_template
from core.settings import GeneratorTrainingSettings, Settings
from inference.refusal import REFUSAL_FILE, write_refusal
from retrieval import index_store
from retrieval.indexer import update_index
from retrieval.search import Retriever, open_retriever
from training import distributed
from training.generator_data import (
    RaftConfig,
    TrainingRow,
    build_rows,
    clean,
    drop_too_long,
    infer_refusal,
    load_chat_jsonl,
    split,
)

if TYPE_CHECKING:
    from trl import SFTConfig

logger = logging.getLogger(__name__)

DATA_DIR = "data"


def training_retriever(settings: Settings, workdir: Path) -> Retriever:
    """The serving index when one exists, else a private index of the configured sources in ``workdir``."""
    index_dir = settings.paths.index_dir
    if index_store.current_version(index_dir) is None:
        private = settings.model_copy(update={"paths": settings.paths.model_copy(update={"data_dir": workdir})})
        update_index(private)
        index_dir = private.paths.index_dir
    return open_retriever(settings, index_dir)


def qlora_decision(cfg: GeneratorTrainingSettings, device: str) -> tuple[bool, str]:
    """Whether to load the base in 4 bits, and why (logged and stored in the manifest).

    ``qlora: auto`` falls back to a full-precision base when CUDA or bitsandbytes is missing;
    ``qlora: on`` asked for 4 bits explicitly, so their absence is an error, never a silent fallback.

    Raises:
        ConfigError: ``qlora`` is ``on`` and CUDA or bitsandbytes is missing.
    """
    if cfg.qlora == "off":
        return False, "qlora=off"
    if device != "cuda":
        reason = "QLoRA needs CUDA (bitsandbytes 4-bit on CPU is slower than fp32 for small models)"
    else:
        try:
            import bitsandbytes  # noqa: F401

            return True, "CUDA and bitsandbytes present: 4-bit NF4 base with LoRA on top"
        except ImportError:
            reason = "bitsandbytes is not installed"
    if cfg.qlora == "on":
        raise ConfigError(f"train_generator.qlora is 'on' but {reason}; set qlora to 'auto' or 'off'")
    return False, f"{reason}; training LoRA on a full-precision base"


def build_sft_config(cfg: GeneratorTrainingSettings, output_dir: Path, *, on_cpu: bool) -> SFTConfig:
    """TRL's ``SFTConfig`` for this recipe: completion-only loss, eval and save on the same schedule, best
    checkpoint by validation loss, and the CPU switches (no bf16, no activation checkpointing)."""
    from trl import SFTConfig

    strategy = "steps" if cfg.eval_steps else "epoch"
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        max_length=cfg.max_length,
        # Loss on the answer only: the prompt (system, context, question) is what serving supplies.
        completion_only_loss=True,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.eval_steps,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=2,
        logging_steps=1 if cfg.max_steps and 0 < cfg.max_steps <= 20 else 5,
        seed=cfg.seed,
        report_to=[],
        use_cpu=on_cpu,
        # bf16 and activation (gradient) checkpointing make a CPU step ~20x slower.
        bf16=not on_cpu,
        activation_checkpointing=not on_cpu,
        dataloader_num_workers=0,
    )


def top_layers(model, count: int | None) -> list[int] | None:
    """Indices of the last ``count`` transformer blocks (None: every block). With LoRA only there, the
    backward pass stops at the lowest adapted block: a CPU step costs ~25% less when half the blocks are
    adapted."""
    if count is None:
        return None
    total = model.config.get_text_config().num_hidden_layers
    return list(range(max(0, total - count), total))


def lora_targets(model, cfg: GeneratorTrainingSettings) -> list[str] | str:
    """``cfg.target_modules``; "all-linear" is spelled out (every linear layer but the LM head) when only the
    top layers are adapted, since peft restricts layers only for named modules."""
    if cfg.top_layers is None or cfg.target_modules != "all-linear":
        return cfg.target_modules
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and ".layers." in name})


def prepare_data(settings: Settings, cfg: GeneratorTrainingSettings, workdir: Path, tokenizer) -> dict[str, Any]:
    """Build and store train/validation/test rows in ``workdir/data``; returns the data summary."""
    examples = [ex for path in cfg.chat_files for ex in load_chat_jsonl(path)]
    if not examples:
        raise InvalidInputError(f"no chat examples in {', '.join(map(str, cfg.chat_files))}")
    cleaned, report = clean(examples, near_duplicate_jaccard=cfg.near_duplicate_jaccard)
    splits = split(cleaned, cfg.split_fractions, cfg.seed)
    if len(splits["train"]) < 2 or not splits["validation"]:
        raise InvalidInputError(
            f"generator training needs at least 2 training and 1 validation example after cleaning; got "
            f"{len(splits['train'])} and {len(splits['validation'])} from {len(examples)} examples"
        )
    template = load_template(settings)
    retriever = training_retriever(settings, workdir)
    refusal = cfg.refusal_answer or infer_refusal(cleaned)
    raft = RaftConfig(settings.retrieval.top_k, cfg.golden_fraction, cfg.no_context_fraction, cfg.seed,
                      distractor_source=cfg.distractor_source)
    rows: dict[str, list[TrainingRow]] = {
        "train": build_rows(splits["train"], retriever, template, tokenizer,
                            replace(raft, unanswerable_repeats=cfg.unanswerable_repeats), refusal),
        "validation": build_rows(splits["validation"], retriever, template, tokenizer, raft, refusal),
        # The test split is scored base-vs-adapted with the same retrieved context: always the gold variant.
        "test": build_rows([e for e in splits["test"] if e.doc_ids], retriever, template, tokenizer, raft, refusal,
                           variant="gold"),
    }
    too_long = 0
    for name in rows:
        rows[name], dropped = drop_too_long(rows[name], tokenizer, cfg.max_length)
        too_long += dropped
    report.too_long = too_long
    feedback = _feedback_rows(cfg, retriever, template, tokenizer, raft, refusal, rows) if cfg.feedback_files else None
    out = workdir / DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, items in rows.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in items:
                fh.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    summary = {
        "sources": [str(p) for p in [*cfg.chat_files, *cfg.feedback_files]],
        "feedback": feedback,
        "cleaning": asdict(report),
        "split_sizes": {name: len(items) for name, items in rows.items()},
        "variants": {name: dict(Counter(r.variant for r in items)) for name, items in rows.items()},
        "refusal_answer": refusal,
        "data_hash": artifacts.data_hash(r.to_json() for name in ("train", "validation", "test") for r in rows[name]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _feedback_rows(cfg: GeneratorTrainingSettings, retriever: Retriever, template, tokenizer,
                   raft: RaftConfig, refusal: str | None, rows: dict[str, list[TrainingRow]]) -> dict[str, Any]:
    """Add the feedback examples to ``rows["train"]`` (in place) and return what was done.

    Every feedback example is a training row, never a validation or test one, on the passages it was served
    (:func:`training.generator_data.build_rows`, gold variant), ``cfg.feedback_repeats`` times. A round on top
    of ``cfg.init_adapter`` trains on them plus ``cfg.feedback_replay_ratio`` regular rows per feedback row.
    """
    examples = [ex for path in cfg.feedback_files for ex in load_chat_jsonl(path)]
    if not examples:
        raise InvalidInputError(f"no feedback examples in {', '.join(map(str, cfg.feedback_files))}")
    kept, report = clean(examples, near_duplicate_jaccard=cfg.near_duplicate_jaccard)
    once, too_long = drop_too_long(build_rows(kept, retriever, template, tokenizer, raft, refusal, variant="gold"),
                                   tokenizer, cfg.max_length)
    added = [row for row in once for _ in range(cfg.feedback_repeats)]
    regular = rows["train"]
    replay = regular
    if cfg.init_adapter is not None:
        count = min(len(regular), round(cfg.feedback_replay_ratio * len(added)))
        replay = random.Random(cfg.seed).sample(regular, count)
    rows["train"] = replay + added
    return {"sources": [str(p) for p in cfg.feedback_files], "examples": len(examples), "cleaning": asdict(report),
            "too_long": too_long, "repeats": cfg.feedback_repeats, "rows": len(added),
            "regular_rows": len(replay), "round_on": cfg.init_adapter,
            "rule": "every feedback example trains (none split off), on its served passages, repeated; a round "
                    "on an adapter adds feedback_replay_ratio regular rows per feedback row, else all of them"}


def read_rows(workdir: Path, name: str) -> list[dict]:
    path = workdir / DATA_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _latest_checkpoint(workdir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = workdir / "checkpoints"
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return Path(last) if last else None


def find_resumable_run(settings: Settings, run_id: str) -> str:
    """``latest`` or a run id -> the id of an interrupted run that has a checkpoint."""
    runs_root = artifacts.kind_dir(settings, "adapter") / ".runs"
    candidates = sorted((p for p in runs_root.glob("adapter-*") if _latest_checkpoint(p)), key=lambda p: p.name)
    if run_id == "latest" and candidates:
        return candidates[-1].name
    if any(p.name == run_id for p in candidates):
        return run_id
    raise NotFoundError(f"no interrupted generator run {run_id!r} with a checkpoint; resumable: "
                        f"{', '.join(p.name for p in candidates) or 'none'}")


def _round_start(settings: Settings, name: str) -> artifacts.Artifact:
    """The adapter a next round continues; refused when it was trained on another base model."""
    start = artifacts.get_artifact(settings, "adapter", name)
    trained_on, configured = start.manifest.get("base_model", {}).get("spec"), resolve_generator(settings).spec
    if trained_on != configured:
        raise ConfigError(f"adapter {start.id} was trained on {trained_on!r}, not on the configured generator "
                          f"{configured!r}: a next round continues an adapter of the same base model")
    return start


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def train_generator(settings: Settings, cfg: GeneratorTrainingSettings | None = None, *,
                    resume: str | None = None) -> artifacts.Artifact:
    """Run the SFT recipe (or resume an interrupted run) and return the adapter artifact.

    Raises:
        InvalidInputError: malformed or too little data (names the file and line).
        NotFoundError: ``resume`` names no interrupted run.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
    from trl import SFTTrainer

    from training.budget import TimeBudget

    began = time.perf_counter()
    cfg = cfg or settings.train_generator

    # --- data (a resumed run reuses the data and config stored with it)
    if resume:
        artifact_id = find_resumable_run(settings, resume)
        workdir = artifacts.run_dir(settings, "adapter", artifact_id)
        cfg = GeneratorTrainingSettings.model_validate_json((workdir / "config.json").read_text())
    else:
        if cfg.init_adapter is not None:  # 'latest' / 'active' become the id now: a resumed run continues the same one
            cfg = cfg.model_copy(update={"init_adapter": _round_start(settings, cfg.init_adapter).id})
        # Under torchrun every rank trains one run: rank 0 names it, and alone writes its files.
        artifact_id = distributed.agree(lambda: artifacts.new_artifact_id("adapter"))
        workdir = artifacts.run_dir(settings, "adapter", artifact_id)
        if distributed.is_main():
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(cfg.model_dump_json(indent=2))
    base = resolve_generator(settings)
    tokenizer = AutoTokenizer.from_pretrained(base.location)  # the model itself is loaded once, below
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not resume:  # rank 0 builds the data set (retrieval, RAFT contexts) once; the others read it
        distributed.on_main(lambda: prepare_data(settings, cfg, workdir, tokenizer))
    summary = json.loads((workdir / DATA_DIR / "summary.json").read_text())
    train_rows, val_rows = read_rows(workdir, "train"), read_rows(workdir, "validation")
    to_dataset = lambda rows: Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])  # noqa: E731

    # --- model
    device = resolve_device(settings)
    use_4bit, qlora_reason = qlora_decision(cfg, device)
    logger.info("QLoRA: %s", qlora_reason)
    quantization = None
    if use_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
        model = AutoModelForCausalLM.from_pretrained(base.location, quantization_config=quantization, dtype=torch.bfloat16)
    else:
        model, _ = load_generator(settings, fresh=True)
        model.train()
    replay: list[dict[str, str]] = []
    if cfg.general_replay_fraction > 0:  # the base model's own general answers, before any adapter exists
        from training.forgetting import replay_rows

        count = max(1, round(cfg.general_replay_fraction * len(train_rows)))
        replay = replay_rows(model, tokenizer, count, cfg.forgetting.instructions, cfg.general_replay_max_new_tokens)
        logger.info("general replay: %d rows added to %d training rows", len(replay), len(train_rows))
        train_rows = train_rows + replay
        model.train()
    lora: LoraConfig | None = LoraConfig(
        r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=lora_targets(model, cfg),
        layers_to_transform=top_layers(model, cfg.top_layers), task_type="CAUSAL_LM")
    start = None
    if cfg.init_adapter is not None:  # a next round: the adapter's own weights (and LoRA shape) go on training
        from peft import PeftModel

        start = _round_start(settings, cfg.init_adapter)
        model = PeftModel.from_pretrained(model, str(start.path / "adapter"), is_trainable=True)
        lora = None
        logger.info("continuing adapter %s", start.id)

    # --- train
    args = build_sft_config(cfg, workdir / "checkpoints", on_cpu=device == "cpu")
    budget = TimeBudget(cfg.max_train_seconds) if cfg.max_train_seconds else None
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=to_dataset(train_rows), eval_dataset=to_dataset(val_rows),
        processing_class=tokenizer, peft_config=lora,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience),
                   *([budget] if budget else [])],
    )
    checkpoint = _latest_checkpoint(workdir) if resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    # The best checkpoint's validation loss is already known (it is what was loaded): no second pass over
    # the validation set, which costs a minute on 2 cores.
    final_eval = ({"eval_loss": trainer.state.best_metric} if trainer.state.best_metric is not None
                  else trainer.evaluate())

    # --- save (rank 0 alone; the others wait, then return the same artifact)
    if not distributed.is_main():
        distributed.barrier()
        return artifacts.get_artifact(settings, "adapter", artifact_id)
    trainer.model.save_pretrained(str(workdir / "adapter"))
    write_refusal(workdir / "adapter", summary["refusal_answer"], tokenizer,
                  (r["completion"] for r in train_rows if r["variant"] == "gold"))
    trainable, total = trainer.model.get_nb_trainable_parameters()
    history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in trainer.state.log_history]
    train_losses = [row["loss"] for row in history if "loss" in row]
    manifest = {
        "created_at": artifacts.utc_now(),
        "stage": "sft",
        "base_model": {"spec": base.spec, "location": base.location},
        "data_hash": summary["data_hash"],
        "data": summary,
        "hyperparameters": cfg.model_dump(mode="json"),
        "qlora": {"used": use_4bit, "reason": qlora_reason},
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_fraction": trainable / total,
        "adapter_size_bytes": _dir_size(workdir / "adapter"),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_validation_loss": final_eval.get("eval_loss"),
        "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
        "global_steps": trainer.state.global_step,
        "time_budget": budget.report if budget else None,
        "resumed_from": checkpoint.name if checkpoint else None,
        "init_adapter": start.id if start is not None else None,
        "loss_curve": history,
        "forgetting": _forgetting(trainer.model, tokenizer, cfg),
        "general_replay": {"fraction": cfg.general_replay_fraction, "rows": len(replay)},
        "distributed": {"processes": distributed.world_size(), "backend": distributed.backend()},
        "wall_time_s": round(time.perf_counter() - began, 1),
    }
    artifact = artifacts.finalize(settings, "adapter", artifact_id, manifest, keep=["adapter", DATA_DIR])
    logger.info("adapter artifact %s written to %s", artifact.id, artifact.path)
    distributed.barrier()
    return artifact


def load_dpo_pairs(path: Path) -> list[dict[str, Any]]:
    """``{"question", "chosen", "rejected", "context"?: [{"doc_id","title","text"}]}`` per line."""
    pairs = []
    for n, row in read_jsonl(path):
        missing = [k for k in ("question", "chosen", "rejected") if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise InvalidInputError(f"{path}:{n}: a preference pair needs 'question', 'chosen' and 'rejected'; missing {missing}")
        try:
            context = [ContextPassage(**p) for p in row["context"]] if row.get("context") is not None else None
        except TypeError:
            raise InvalidInputError(f"{path}:{n}: 'context' must be a list of {{doc_id, title, text}}") from None
        pairs.append({"question": row["question"], "chosen": row["chosen"], "rejected": row["rejected"], "context": context})
    if len(pairs) < 2:
        raise InvalidInputError(f"{path}: DPO needs at least 2 preference pairs, got {len(pairs)}")
    return pairs


def train_dpo(settings: Settings, pairs_file: Path, sft: artifacts.Artifact,
              cfg: GeneratorTrainingSettings | None = None) -> artifacts.Artifact:
    """Preference-tune an SFT adapter with TRL's DPOTrainer; the frozen base (adapter off) is the reference."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    began = time.perf_counter()
    cfg = cfg or settings.train_generator
    pairs = load_dpo_pairs(pairs_file)
    model, tokenizer = load_generator(settings, fresh=True)
    tokenizer.padding_side = "right"
    template = load_template(settings)
    rows = [{"prompt": build_prompt(template, tokenizer, p["question"], p["context"]),
             "chosen": escape_control_tokens(p["chosen"], tokenizer) + tokenizer.eos_token,
             "rejected": escape_control_tokens(p["rejected"], tokenizer) + tokenizer.eos_token} for p in pairs]
    model = PeftModel.from_pretrained(model, str(sft.path / "adapter"), is_trainable=True)
    artifact_id = artifacts.new_artifact_id("adapter")
    workdir = artifacts.run_dir(settings, "adapter", artifact_id)
    on_cpu = resolve_device(settings) == "cpu"
    args = DPOConfig(
        output_dir=str(workdir / "checkpoints"), beta=cfg.dpo_beta, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=min(cfg.per_device_train_batch_size, len(rows)),
        learning_rate=cfg.learning_rate / 10, max_length=cfg.max_length, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=on_cpu, bf16=not on_cpu, activation_checkpointing=False, seed=cfg.seed,
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.train()
    trainer.model.save_pretrained(str(workdir / "adapter"))
    parent = sft.path / "adapter" / REFUSAL_FILE
    if parent.is_file():  # the same refusal and opening as the SFT adapter it refines
        shutil.copyfile(parent, workdir / "adapter" / REFUSAL_FILE)
    history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in trainer.state.log_history]
    manifest = {
        "created_at": artifacts.utc_now(), "stage": "dpo", "parent": sft.id,
        "base_model": sft.manifest.get("base_model"),
        "data_hash": artifacts.data_hash(rows), "data": {"sources": [str(pairs_file)], "pairs": len(rows)},
        "hyperparameters": cfg.model_dump(mode="json"), "adapter_size_bytes": _dir_size(workdir / "adapter"),
        "loss_curve": history, "global_steps": trainer.state.global_step,
        "forgetting": _forgetting(trainer.model, tokenizer, cfg),
        "wall_time_s": round(time.perf_counter() - began, 1),
    }
    return artifacts.finalize(settings, "adapter", artifact_id, manifest, keep=["adapter"])


def _forgetting(model: Any, tokenizer: Any, cfg: GeneratorTrainingSettings) -> dict[str, Any] | None:
    """The catastrophic-forgetting check (base vs base + adapter on general text), or None when turned off."""
    if not cfg.forgetting.enabled:
        return None
    from training.forgetting import forgetting_check

    return forgetting_check(model, tokenizer, cfg.forgetting)


def merge_adapter(settings: Settings, adapter: artifacts.Artifact, out_dir: Path) -> Path:
    """Write base + adapter merged into one model folder (usable as ``models.generator``)."""
    from peft import PeftModel

    model, tokenizer = load_generator(settings, fresh=True)
    merged = PeftModel.from_pretrained(model, str(adapter.path / "adapter")).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "tunerag-merge.json").write_text(json.dumps({"adapter": adapter.id, "base_model": adapter.manifest.get("base_model")}, indent=2))
    return out_dir
