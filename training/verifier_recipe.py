"""Recipe: train the answerability verifier (a cross-encoder) on the domain's own chats. Reads top to bottom.

    setup   -> the chat training set (answers citing documents are answerable, uncited ones are not) and the
               serving retriever (the index the service answers from)
    pairs   -> per question, the passages the retriever returns (top_k, as served):
                 answerable, gold present: the best-ranked gold passage is a positive (1), the others of
                   other documents are negatives (0); the gold is added at its rank when the retriever missed it
                 answerable, gold removed: what the retriever returns once every gold document is gone, all 0
                   (exactly what a question the knowledge base cannot answer looks like)
                 unanswerable: what the retriever returns, all 0
    folds   -> cross-fitting over questions: each fold's model scores the contexts of questions it never saw;
               the threshold is the highest whose out-of-fold share of refused answerable contexts is at most
               ``max_false_refusal_rate``; ROC AUC, precision and recall at it are recorded
    train   -> the final model on every pair: CrossEncoderTrainer + BinaryCrossEntropyLoss (positives weighted
               by the class ratio)
    save    -> a versioned artifact: model/ + manifest.json (base model, data hash, counts, threshold,
               out-of-fold metrics, refusal, tokenizer fingerprint, wall time)

The evaluation set is never read. Interrupting (Ctrl-C) leaves no artifact and no half-written folder.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import artifacts
from core.errors import InvalidInputError
from core.models import resolve_device, resolve_embedder
from core.settings import Settings, VerifierTrainingSettings
from retrieval.answerability import MODEL_DIR, pair_text, tokenizer_fingerprint
from retrieval.search import Retriever
from training.generator_data import ChatExample, clean, infer_refusal, load_chat_jsonl
from training.generator_recipe import training_retriever

logger = logging.getLogger(__name__)


@dataclass
class ContextSet:
    """One question with one context: its passages, each pair's training label (None: not trained on) and
    whether the context answers the question."""

    example_id: str
    kind: str  # "gold", "gold_removed" or "unanswerable"
    question: str
    passages: list[str]
    labels: list[float | None]
    answerable: bool
    doc_ids: list[str] = field(default_factory=list)


def context_sets(examples: Sequence[ChatExample], retriever: Retriever, top_k: int) -> list[ContextSet]:
    """The verifier's training contexts (see the module docstring)."""
    sets: list[ContextSet] = []
    for ex in examples:
        results = retriever.search(ex.question, k=top_k * 3)
        gold = set(ex.doc_ids)
        others = [r for r in results if r.doc_id not in gold][:top_k]
        if not gold:
            sets.append(ContextSet(ex.id, "unanswerable", ex.question, [pair_text(r.title, r.text) for r in others],
                                   [0.0] * len(others), False, [r.doc_id for r in others]))
            continue
        served = results[:top_k]
        if not any(r.doc_id in gold for r in served):
            best = retriever.search(ex.question, k=1, filters={"doc_id": sorted(gold)})
            if not best:
                continue  # the cited documents are not in the index: nothing to learn from this row
            served = [*served[: top_k - 1], best[0]]
        first_gold = next(i for i, r in enumerate(served) if r.doc_id in gold)
        labels: list[float | None] = [
            1.0 if i == first_gold else (None if r.doc_id in gold else 0.0) for i, r in enumerate(served)]
        sets.append(ContextSet(ex.id, "gold", ex.question, [pair_text(r.title, r.text) for r in served], labels, True,
                               [r.doc_id for r in served]))
        sets.append(ContextSet(ex.id, "gold_removed", ex.question, [pair_text(r.title, r.text) for r in others],
                               [0.0] * len(others), False, [r.doc_id for r in others]))
    return sets


def training_pairs(sets: Sequence[ContextSet]) -> list[tuple[str, str, float]]:
    """(question, passage, label) rows, each pair once."""
    seen: dict[tuple[str, str], float] = {}
    for s in sets:
        for passage, label in zip(s.passages, s.labels, strict=True):
            if label is not None:
                seen[(s.question, passage)] = max(label, seen.get((s.question, passage), 0.0))
    return [(q, p, label) for (q, p), label in seen.items()]


def choose_threshold(scores: Sequence[float], answerable: Sequence[bool], max_false_refusal_rate: float) -> float:
    """The highest threshold that refuses at most ``max_false_refusal_rate`` of the answerable contexts."""
    positives = sorted(s for s, a in zip(scores, answerable, strict=True) if a)
    allowed = int(max_false_refusal_rate * len(positives))  # answerable contexts that may fall below it
    return positives[allowed] if positives else 0.5


def threshold_metrics(scores: Sequence[float], answerable: Sequence[bool], threshold: float) -> dict[str, float]:
    """Out-of-fold quality: ROC AUC, and at the threshold the refusal rates and answering precision/recall."""
    from sklearn.metrics import roc_auc_score

    pos = [s for s, a in zip(scores, answerable, strict=True) if a]
    neg = [s for s, a in zip(scores, answerable, strict=True) if not a]
    answered_pos = sum(s >= threshold for s in pos)
    answered_neg = sum(s >= threshold for s in neg)
    return {
        "roc_auc": round(float(roc_auc_score(answerable, scores)), 4) if pos and neg else float("nan"),
        "false_refusal_rate": round(1 - answered_pos / len(pos), 4) if pos else 0.0,
        "correct_refusal_rate": round(1 - answered_neg / len(neg), 4) if neg else 0.0,
        "answer_precision": round(answered_pos / max(answered_pos + answered_neg, 1), 4),
        "answer_recall": round(answered_pos / len(pos), 4) if pos else 0.0,
        "contexts_answerable": len(pos),
        "contexts_unanswerable": len(neg),
    }


def _train_one(base_model: str, rows: Sequence[tuple[str, str, float]], cfg: VerifierTrainingSettings,
               output_dir: Path, on_cpu: bool, seconds: float | None = None):
    """A fresh cross-encoder from ``base_model`` trained on ``rows`` (within ``seconds`` of training loop)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    model = CrossEncoder(base_model, num_labels=1, max_length=cfg.max_length, device="cpu" if on_cpu else None)
    positives = sum(1 for *_, label in rows if label > 0.5)
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor((len(rows) - positives) / max(positives, 1)))
    dataset = Dataset.from_dict({"question": [r[0] for r in rows], "passage": [r[1] for r in rows],
                                 "label": [r[2] for r in rows]})
    args = CrossEncoderTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=min(cfg.per_device_train_batch_size, len(rows)), learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio, save_strategy="no", report_to=[], use_cpu=on_cpu, bf16=False, fp16=not on_cpu,
        seed=cfg.seed, logging_steps=10, dataloader_num_workers=0, disable_tqdm=False,
    )
    from training.budget import TimeBudget

    budget = TimeBudget(seconds) if seconds else None
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset.shuffle(seed=cfg.seed), loss=loss,
                                  callbacks=[budget] if budget else None)
    trainer.train()
    trainer.time_budget = budget.report if budget else None
    return model, trainer


def _set_scores(model: Any, sets: Sequence[ContextSet]) -> list[float]:
    pairs = [(s.question, p) for s in sets for p in s.passages]
    flat = [float(x) for x in model.predict(pairs, batch_size=32, show_progress_bar=False)] if pairs else []
    scores, at = [], 0
    for s in sets:
        scores.append(max(flat[at: at + len(s.passages)], default=0.0))
        at += len(s.passages)
    return scores


def train_verifier(settings: Settings, cfg: VerifierTrainingSettings | None = None) -> artifacts.Artifact:
    """Run the recipe and return the finished artifact.

    Raises:
        InvalidInputError: fewer than ``cfg.min_examples`` positive or negative training pairs (the message
            names both counts), or a malformed chat file.
    """
    cfg = cfg or settings.train_verifier
    began = time.perf_counter()
    on_cpu = resolve_device(settings) == "cpu"

    # --- setup
    examples = [ex for path in cfg.chat_files for ex in load_chat_jsonl(path)]
    cleaned, report = clean(examples)
    refusal = cfg.refusal_answer or infer_refusal(cleaned)
    if refusal is None:
        raise InvalidInputError("the verifier needs a refusal to answer with: the chats have no uncited answer; set "
                                "train_verifier.refusal_answer")
    base_model = cfg.model or resolve_embedder(settings).location
    top_k = cfg.top_k or settings.retrieval.top_k
    artifact_id = artifacts.new_artifact_id("verifier")
    workdir = artifacts.run_dir(settings, "verifier", artifact_id)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        retriever = training_retriever(settings, workdir)

        # --- pairs
        sets = context_sets(cleaned, retriever, top_k)
        rows = training_pairs(sets)
        counts = Counter("positive" if label > 0.5 else "negative" for *_, label in rows)
        if counts["positive"] < cfg.min_examples or counts["negative"] < cfg.min_examples:
            raise InvalidInputError(
                f"a verifier needs at least {cfg.min_examples} positive and {cfg.min_examples} negative training pairs; "
                f"the chats gave {counts['positive']} positive and {counts['negative']} negative "
                f"(from {len(cleaned)} chats: {sum(1 for e in cleaned if e.doc_ids)} answerable, "
                f"{sum(1 for e in cleaned if not e.doc_ids)} unanswerable); add chats or lower train_verifier.min_examples")
        logger.info("verifier data: %d contexts, %d pairs (%d positive)", len(sets), len(rows), counts["positive"])

        # --- folds: out-of-fold scores choose the threshold
        ids = sorted({s.example_id for s in sets})
        random.Random(cfg.seed).shuffle(ids)
        fold_of = {example_id: i % cfg.folds for i, example_id in enumerate(ids)}
        oof_scores: list[float] = [0.0] * len(sets)
        # A time budget is shared by the fold runs and the final one in proportion to their pairs.
        share = (lambda n: cfg.max_train_seconds * n / (len(rows) * cfg.folds)) if cfg.max_train_seconds else (lambda n: None)
        budgets: list[dict[str, Any] | None] = []
        for fold in range(cfg.folds):
            held = [i for i, s in enumerate(sets) if fold_of[s.example_id] == fold]
            fold_rows = training_pairs([s for s in sets if fold_of[s.example_id] != fold])
            logger.info("verifier fold %d/%d: %d training pairs, %d held-out contexts", fold + 1, cfg.folds,
                        len(fold_rows), len(held))
            model, fold_trainer = _train_one(base_model, fold_rows, cfg, workdir / f"fold-{fold}", on_cpu,
                                             share(len(fold_rows)))
            budgets.append(fold_trainer.time_budget)
            for i, score in zip(held, _set_scores(model, [sets[i] for i in held]), strict=True):
                oof_scores[i] = score
            shutil.rmtree(workdir / f"fold-{fold}", ignore_errors=True)
        answerable = [s.answerable for s in sets]
        threshold = choose_threshold(oof_scores, answerable, cfg.max_false_refusal_rate)
        oof = threshold_metrics(oof_scores, answerable, threshold)
        by_kind = {kind: threshold_metrics([sc for sc, s in zip(oof_scores, sets, strict=True) if s.kind == kind],
                                           [s.answerable for s in sets if s.kind == kind], threshold)
                   for kind in ("gold", "gold_removed", "unanswerable")}
        logger.info("verifier threshold %.4f (out of fold: %s)", threshold, oof)

        # --- train the final model on every pair
        model, trainer = _train_one(base_model, rows, cfg, workdir / "final", on_cpu, share(len(rows)))
        budgets.append(trainer.time_budget)

        # --- save
        model.save_pretrained(str(workdir / MODEL_DIR))
        shutil.rmtree(workdir / "final", ignore_errors=True)
        version = retriever.version
        manifest: dict[str, Any] = {
            "created_at": artifacts.utc_now(),
            "base_model": base_model,
            "threshold": threshold,
            "max_length": cfg.max_length,
            "top_k": top_k,
            "refusal_answer": refusal,
            "tokenizer_fingerprint": tokenizer_fingerprint(model.tokenizer),
            "index": {"version": version.name, "embedder": version.manifest.embedder_id},
            "data_hash": artifacts.data_hash(rows),
            "data": {"chats": len(examples), "cleaning": asdict(report), "contexts": dict(Counter(s.kind for s in sets)),
                     "pairs": dict(counts)},
            "metrics_out_of_fold": oof,
            "metrics_out_of_fold_by_context": by_kind,
            "hyperparameters": cfg.model_dump(mode="json") | {"top_k": top_k},
            "global_steps": trainer.state.global_step,
            "time_budget": budgets if cfg.max_train_seconds else None,
            "wall_time_s": round(time.perf_counter() - began, 1),
        }
        artifact = artifacts.finalize(settings, "verifier", artifact_id, manifest, keep=[MODEL_DIR])
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    logger.info("verifier artifact %s written to %s", artifact.id, artifact.path)
    return artifact
