"""LoRA generator training: data handling, template identity, loss masking, a tiny run, resume, DPO, merge."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core import artifacts
from core.errors import ConfigError, InvalidInputError
from core.models import load_generator
from core.prompt import ContextPassage, build_prompt, load_template
from core.settings import SAMPLE_DIR, Settings
from inference.engine import GenerationEngine
from inference.refusal import REFUSAL_FILE
from training.generator_data import (
    ChatExample,
    RaftConfig,
    build_rows,
    clean,
    infer_refusal,
    load_chat_jsonl,
    split,
    strip_citations,
)
from training.generator_recipe import (
    build_sft_config,
    merge_adapter,
    qlora_decision,
    train_dpo,
    train_generator,
)


def ex(id_: str, question: str, answer: str = "A [doc-a]", doc_ids: tuple[str, ...] = ("doc-a",),
       history: tuple[tuple[str, str], ...] = ()) -> ChatExample:
    return ChatExample(id_, history, question, answer, doc_ids, 1)


class FixedRetriever:
    """Stands in for retrieval.search.Retriever: always the same ranked passages (doc-a is the gold one)."""

    class Hit:
        def __init__(self, doc_id: str, text: str) -> None:
            self.doc_id, self.text = doc_id, text

        def to_passage(self) -> ContextPassage:
            return ContextPassage(self.doc_id, self.doc_id.upper(), self.text)

    def search(self, query: str, k: int = 4, filters: dict | None = None) -> list[Hit]:
        hits = [self.Hit("doc-b", "b text"), self.Hit("doc-c", "c text"), self.Hit("doc-a", "a text"),
                self.Hit("doc-d", "d text")]
        if filters:
            hits = [h for h in hits if h.doc_id in filters["doc_id"]]
        return hits[:k]


@pytest.fixture
def small_chat_file(tmp_path: Path) -> Path:
    lines = (SAMPLE_DIR / "chat_train.jsonl").read_text().splitlines()
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines[:36] + lines[-4:]) + "\n")  # 36 grounded chats + 4 refusals
    return path


def test_training_prompts_are_byte_identical_to_serving_prompts(settings: Settings) -> None:
    """The training row's prompt against what the API's ChatService builds for the same turn."""
    import asyncio

    from service.chat import ChatService
    from service.state import ServiceState

    _, tokenizer = load_generator(settings)
    template = load_template(settings)
    history = (("user", "Hi, how do I sign up?"), ("assistant", "Hi there!\n\nGo to the signup page."))
    example = ex("e1", "And is there a free trial?", history=history)
    cfg = RaftConfig(top_k=3, golden_fraction=1.0, no_context_fraction=0.0, seed=0)
    [row] = build_rows([example], FixedRetriever(), template, tokenizer, cfg, "Sorry.")
    state = ServiceState(settings, backend=None, tokenizer=tokenizer, retriever=FixedRetriever())  # type: ignore[arg-type]
    state.embedder_is_finetuned = lambda: True  # type: ignore[method-assign]
    serving = asyncio.run(ChatService(state).prepare(
        "And is there a free trial?", [{"role": r, "content": c} for r, c in history], "combined", 3, None))
    assert row.prompt == serving.prompt
    assert row.completion == "A [doc-a]" + tokenizer.eos_token
    assert row.context_doc_ids == ["doc-b", "doc-c", "doc-a"]


def test_raft_variants_put_or_remove_the_gold_document(settings: Settings) -> None:
    _, tokenizer = load_generator(settings)
    template = load_template(settings)
    examples = [ex(f"e{i}", f"question {i}?") for i in range(40)]
    cfg = RaftConfig(top_k=2, golden_fraction=0.5, no_context_fraction=0.25, seed=0)
    rows = build_rows(examples, FixedRetriever(), template, tokenizer, cfg, "REFUSAL")
    by_variant = {v: [r for r in rows if r.variant == v] for v in ("gold", "distractors", "no_context")}
    assert all(by_variant.values()), "every variant occurs"
    for r in by_variant["gold"]:  # doc-a ranks 3rd, so it is inserted into the top 2
        assert "doc-a" in r.context_doc_ids and len(r.context_doc_ids) == 2 and r.completion.startswith("A [doc-a]")
    for r in by_variant["distractors"]:
        assert "doc-a" not in r.context_doc_ids and r.completion.startswith("REFUSAL")
    for r in by_variant["no_context"]:
        assert r.context_doc_ids == [] and "Context documents" not in r.prompt and r.completion.startswith("A<")
    refusal_example = ex("r", "Can you ship to the moon?", "REFUSAL", ())
    [row] = build_rows([refusal_example], FixedRetriever(), template, tokenizer, cfg, "REFUSAL")
    assert row.variant == "distractors"
    # Repeated unanswerable examples see other passages each time; answerable ones are never repeated.
    repeated = replace(cfg, unanswerable_repeats=2, golden_fraction=1.0, no_context_fraction=0.0)
    rows = build_rows([refusal_example, examples[0]], FixedRetriever(), template, tokenizer, repeated, "REFUSAL")
    assert [r.id for r in rows] == ["r", "r", "e0"]
    assert rows[0].context_doc_ids != rows[1].context_doc_ids and rows[0].completion == rows[1].completion
    forced = build_rows([refusal_example], FixedRetriever(), template, tokenizer, repeated, "REFUSAL", variant="gold")
    assert len(forced) == 1, "evaluation splits are never repeated"


class TopicRetriever(FixedRetriever):
    """Passages about the question's topic: "topic-N ..." questions retrieve topic-N's documents first."""

    def search(self, query: str, k: int = 4, filters: dict | None = None) -> list[FixedRetriever.Hit]:
        topic = query.split()[0]
        hits = [self.Hit(f"{topic}-{n}", f"{topic} text {n}") for n in range(3)] + [self.Hit("faq-x", "x")]
        if filters:
            hits = [h for h in hits if h.doc_id in filters["doc_id"]]
        return hits[:k]


def test_distractors_from_other_questions_come_from_unrelated_topics(settings: Settings) -> None:
    _, tokenizer = load_generator(settings)
    template = load_template(settings)
    examples = [ex(f"e{i}", f"topic{i % 4} question {i}?", f"A [topic{i % 4}-0]", (f"topic{i % 4}-0",))
                for i in range(40)]
    cfg = RaftConfig(top_k=2, golden_fraction=0.5, no_context_fraction=0.0, seed=0,
                     distractor_source="other_questions")
    rows = build_rows(examples, TopicRetriever(), template, tokenizer, cfg, "REFUSAL")
    distractors = [r for r in rows if r.variant == "distractors"]
    assert distractors and all(r.completion.startswith("REFUSAL") for r in distractors)
    for r in distractors:
        own_topic = r.doc_ids[0].split("-")[0]
        assert r.context_doc_ids and not any(d.startswith(own_topic) for d in r.context_doc_ids), r
    near = build_rows(examples, TopicRetriever(), template, tokenizer, replace(cfg, distractor_source="near"), "REFUSAL")
    # near: the same topic's other documents (the cited one removed)
    assert all(r.context_doc_ids[0].split("-")[0] == r.doc_ids[0].split("-")[0] and r.doc_ids[0] not in r.context_doc_ids
               for r in near if r.variant == "distractors")


def test_cleaning_removes_empty_exact_and_near_duplicates_but_keeps_follow_ups() -> None:
    examples = [
        ex("1", "How do I void a label?"),
        ex("2", "how do I  void a label?"),                      # exact duplicate after normalising
        ex("3", "How do I void a label ?", "A [doc-a]"),         # same words: near duplicate
        ex("4", "How do I void a label?", "Different answer"),   # same question, other answer: kept
        ex("5", "How do I void a label?", history=(("user", "Hi"), ("assistant", "Hello"))),  # follow-up: kept
        ex("6", "   "),
        ex("7", "Ok?", history=(("user", ""), ("assistant", "x"))),
    ]
    kept, report = clean(examples)
    assert [e.id for e in kept] == ["1", "4", "5"]
    assert (report.exact_duplicates, report.near_duplicates, report.empty_turns) == (1, 1, 2)


def test_split_is_deterministic_and_disjoint() -> None:
    examples = [ex(f"e{i:03d}", f"q{i}") for i in range(100)]
    first = split(examples, (0.8, 0.1, 0.1), seed=7)
    again = split(list(reversed(examples)), (0.8, 0.1, 0.1), seed=7)
    other = split(examples, (0.8, 0.1, 0.1), seed=8)
    ids = {name: [e.id for e in part] for name, part in first.items()}
    assert ids == {name: [e.id for e in part] for name, part in again.items()}
    assert ids != {name: [e.id for e in part] for name, part in other.items()}
    assert [len(ids[n]) for n in ("train", "validation", "test")] == [80, 10, 10]
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["validation"]) & set(ids["test"])
    with pytest.raises(ValueError, match="sum to 1"):
        split(examples, (0.8, 0.1, 0.2), seed=0)


def test_helpers_strip_citations_and_infer_the_refusal() -> None:
    assert strip_citations("Go to Settings [billing-plans]. Done [a/b_c-1].") == "Go to Settings. Done."
    assert infer_refusal([ex("1", "q", "no", ()), ex("2", "q2", "no", ()), ex("3", "q3")]) == "no"
    assert infer_refusal([ex("3", "q3")]) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r":2: invalid JSON"),
        ('{"messages": []}', r":2: expected an object with a non-empty 'messages' list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r":2: messages\[0\]\.role must be"),
        ('{"messages": [{"role": "user", "content": "x"}]}', r":2: the last message must be the assistant"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', r":2: the assistant answer must follow a user"),
        ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', r":2: messages\[0\]\.content must be a string"),
        ('{"doc_ids": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]}',
         r":2: 'doc_ids' must be a list"),
    ],
)
def test_malformed_chat_jsonl_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "chats.jsonl"
    good = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(InvalidInputError, match=r"chats\.jsonl" + message):
        load_chat_jsonl(path)


def test_loss_is_computed_on_the_answer_tokens_only(settings: Settings, small_chat_file: Path) -> None:
    """Build TRL's own tokenized dataset and check that exactly the completion is unmasked."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    model, tokenizer = load_generator(settings, fresh=True)
    template = load_template(settings)
    prompt = build_prompt(template, tokenizer, "How do I void a label?", [ContextPassage("ts-void-label", "Voiding", "Open the shipment.")])
    completion = "Hi there!\n\nOpen the shipment and click Void label. [ts-void-label]" + tokenizer.eos_token
    # The recipe's own config builder, so a change there (the loss, the CPU switches) is what is tested.
    cfg = settings.train_generator.model_copy(update={"max_length": 2048})
    args = build_sft_config(cfg, settings.paths.data_dir / "mask", on_cpu=True)
    assert not args.bf16 and not args.activation_checkpointing
    data = Dataset.from_list([{"prompt": prompt, "completion": completion}])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    row = trainer.train_dataset[0]
    ids = row["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert ids[:n_prompt] == tokenizer(prompt, add_special_tokens=False).input_ids
    # The labels the model is trained on are what TRL's collator builds (older TRL keeps no labels column).
    labels = trainer.data_collator([row])["labels"][0].tolist()
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert tokenizer.decode([t for t in labels if t != -100]) == completion


def test_tiny_run_lowers_loss_and_writes_a_loadable_adapter(settings: Settings, small_chat_file: Path) -> None:
    cfg = settings.train_generator.model_copy(update={
        "chat_files": [small_chat_file], "max_steps": 12, "learning_rate": 3e-3, "per_device_train_batch_size": 4,
        "eval_steps": 6, "r": 8, "lora_alpha": 16, "top_layers": 1,
    })
    artifact = train_generator(settings, cfg)
    m = artifact.manifest
    from safetensors import safe_open

    with safe_open(str(artifact.path / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        names = list(fh.keys())  # noqa: SIM118 (a safetensors handle is not a dict)
    layers = {name.split(".layers.")[1].split(".")[0] for name in names}
    assert layers == {"1"}, "top_layers: 1 adapts only the last of the tiny model's 2 blocks"
    losses = [row["loss"] for row in m["loss_curve"] if "loss" in row]
    assert len(losses) >= 6 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert m["global_steps"] == 12 and m["final_validation_loss"] is not None
    assert 0 < m["trainable_fraction"] < 1 and m["adapter_size_bytes"] > 0
    assert m["qlora"]["used"] is False and "CUDA" in m["qlora"]["reason"]
    assert sum(m["data"]["split_sizes"].values()) > 30 and len(m["data_hash"]) == 64
    assert (artifact.path / "data" / "train.jsonl").is_file() and (artifact.path / "adapter" / "adapter_config.json").is_file()
    forgot = m["forgetting"]  # every run checks what it did outside the domain
    assert forgot["perplexity"]["base"] > 0 and forgot["perplexity"]["adapter"] != forgot["perplexity"]["base"]
    assert forgot["perplexity"]["change"] == pytest.approx(forgot["perplexity"]["adapter"] / forgot["perplexity"]["base"] - 1, abs=1e-3)

    engine = GenerationEngine.from_settings(settings)
    engine.config = engine.config.model_copy(update={"refusal_min_prob": 0.5})  # the gate is opt-in
    prompt = build_prompt(load_template(settings), engine.tokenizer, "How do I void a label?")
    base = engine.generate([prompt], max_new_tokens=6)[0].text
    engine.load_adapter("tuned", artifact.path / "adapter")
    refusal = json.loads((artifact.path / "adapter" / REFUSAL_FILE).read_text())["refusal_answer"]
    assert refusal == m["data"]["refusal_answer"] and "couldn't find" in refusal, "the refusal it was taught"
    gate = engine._gates["tuned"]
    assert gate.tokens == tuple(engine.tokenizer(refusal, add_special_tokens=False).input_ids)
    assert gate.opening == len(engine.tokenizer("Hi there!\n\n", add_special_tokens=False).input_ids)
    engine.generate([prompt], adapter="tuned", max_new_tokens=6)
    assert engine.generate([prompt], max_new_tokens=6)[0].text == base, "adapter off gives the base model back"
    import torch

    inputs = engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(), engine.model.disable_adapter():
        base_logits = engine.model(**inputs).logits
    engine.model.set_adapter("tuned")
    with torch.no_grad():
        tuned_logits = engine.model(**inputs).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-4), "the adapter changes the model"


def test_a_time_budget_stops_the_run_where_it_fits_and_the_manifest_says_so(settings: Settings,
                                                                            small_chat_file: Path) -> None:
    """A budget far below one step: after the 3 calibration steps nothing more fits, so the run stops at 3 of its
    12 planned steps, still validates and keeps its best checkpoint, and the manifest records it."""
    cfg = settings.train_generator.model_copy(update={
        "chat_files": [small_chat_file], "max_steps": 12, "per_device_train_batch_size": 2, "warmup_ratio": 0.0,
        "max_train_seconds": 1e-3, "r": 4, "lora_alpha": 8})
    m = train_generator(settings, cfg).manifest
    assert m["global_steps"] == 3 and m["final_validation_loss"] is not None
    budget = m["time_budget"]
    assert budget["planned_steps"] == 12 and budget["fitted_steps"] == 3 and budget["steps"] == 3
    assert budget["stopped_early"] is True and budget["seconds_per_step"] > 0


def _run_budgeted_loop(monkeypatch: pytest.MonkeyPatch, clock: list[float], planned_steps: int, budget_s: float):
    """A training loop without a model on a fake clock (``perf_counter`` returns ``clock``'s readings in turn):
    SGD on one parameter, a linear schedule, TimeBudget stopping it; returns the state, the callback and the
    rate after each step."""
    import torch
    from transformers import TrainerControl, TrainerState, get_scheduler

    import training.budget as budget_module
    from training.budget import TimeBudget

    readings = iter(clock)
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: next(readings))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=planned_steps)
    state, control, callback = TrainerState(max_steps=planned_steps), TrainerControl(), TimeBudget(budget_s)
    callback.on_train_begin(None, state, control)
    rates = []
    while not control.should_training_stop:
        optimizer.step()
        scheduler.step()
        state.global_step += 1
        rates.append(scheduler.get_last_lr()[0])
        control = callback.on_step_end(None, state, control, lr_scheduler=scheduler)
    return state, callback, rates


def test_the_time_budget_stretches_the_lr_schedule_to_end_at_the_fitted_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock of 1 s a step and a 6 s budget, 6 of 12 planned steps fit: training stops at 6, and the linear
    schedule (a real transformers LambdaLR) reaches zero there instead of being cut at half the peak rate."""
    state, callback, rates = _run_budgeted_loop(monkeypatch, [float(t) for t in range(100)], 12, 6.0)
    assert state.global_step == 6 and callback.report["fitted_steps"] == 6 and callback.report["lr_schedule_rescaled"]
    assert rates[2] == pytest.approx(9 / 12) and rates[-1] == pytest.approx(0.0), rates


def test_the_fit_is_redone_after_a_slow_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three warm-up steps of 3 s, then 1 s a step, a 15 s budget: calibration fits 5 steps, the pace after it
    fits 9 (the time left, 6 s, at 1 s a step), training stops at 9 and the schedule still ends at zero there."""
    state, callback, rates = _run_budgeted_loop(monkeypatch, [0.0, 3.0, 6.0, 9.0, *[float(t) for t in range(10, 40)]], 20, 15.0)
    report = callback.report
    assert report["seconds_per_step"] == 3.0 and report["seconds_per_step_after_warmup"] == 1.0
    assert state.global_step == 9 and report["fitted_steps"] == 9 and report["steps"] == 9 and report["refits"] >= 1
    assert rates[-1] == pytest.approx(0.0) and all(a >= b for a, b in zip(rates[3:-1], rates[4:], strict=True)), rates


def test_interrupted_run_resumes_from_its_checkpoint(settings: Settings, small_chat_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Trainer

    cfg = settings.train_generator.model_copy(update={
        "chat_files": [small_chat_file], "max_steps": 4, "eval_steps": 2, "per_device_train_batch_size": 2})
    original = Trainer.training_step
    calls = {"n": 0}

    def interrupt_on_third_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("Ctrl-C")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", interrupt_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        train_generator(settings, cfg)
    assert artifacts.list_artifacts(settings, "adapter") == [], "no half-written artifact"
    monkeypatch.setattr(Trainer, "training_step", original)
    artifact = train_generator(settings, resume="latest")
    assert artifact.manifest["resumed_from"] == "checkpoint-2" and artifact.manifest["global_steps"] == 4
    with pytest.raises(Exception, match="no interrupted generator run"):
        train_generator(settings, resume="latest")


def test_dpo_on_top_of_sft_and_merge_export(settings: Settings, small_chat_file: Path, tmp_path: Path) -> None:
    cfg = settings.train_generator.model_copy(update={
        "chat_files": [small_chat_file], "max_steps": 2, "per_device_train_batch_size": 2})
    sft = train_generator(settings, cfg)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({
        "question": q, "chosen": "Hi there!\n\nYes. [billing-plans]\n\n— Parcelly Support", "rejected": "idk lol",
        "context": [{"doc_id": "billing-plans", "title": "Plans", "text": "Growth costs $49."}]})
        for q in ("Is Growth $49?", "What does Growth cost?")) + "\n")
    dpo = train_dpo(settings, pairs, sft, cfg)
    assert dpo.manifest["stage"] == "dpo" and dpo.manifest["parent"] == sft.id
    assert (dpo.path / "adapter" / "adapter_model.safetensors").is_file()
    assert (dpo.path / "adapter" / REFUSAL_FILE).read_text() == (sft.path / "adapter" / REFUSAL_FILE).read_text()
    merged = merge_adapter(settings, dpo, tmp_path / "merged")
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "chosen": "a"}\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:1: .*missing \['rejected'\]"):
        train_dpo(settings, bad, sft, cfg)


@pytest.mark.parametrize("qlora,device,used,error", [
    ("off", "cuda", False, None),
    ("auto", "cpu", False, None),
    ("on", "cpu", None, "qlora is 'on' but QLoRA needs CUDA"),
])
def test_qlora_on_is_an_error_without_cuda_and_auto_falls_back(settings: Settings, qlora: str, device: str,
                                                                used: bool | None, error: str | None) -> None:
    cfg = settings.train_generator.model_copy(update={"qlora": qlora})
    if error:
        with pytest.raises(ConfigError, match=error):
            qlora_decision(cfg, device)
    else:
        assert qlora_decision(cfg, device)[0] is used
