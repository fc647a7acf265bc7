"""Recipe: fine-tune the embedder for domain retrieval. Reads top to bottom.

    setup   -> corpus chunks, (query, doc) pairs from labelled / chat / synthetic / inverse-cloze sources,
               filtering
    check   -> estimate the gain first: a pre-check run trains on most labelled queries and scores the rest
               against the base embedder; no gain, no tuning (the artifact keeps the base and says why).
               The same held-out share picks the document-vector weight the index will rank with
    split   -> optional seeded held-out split of queries (picks the best checkpoint; reported before/after).
               Off by default: with a few hundred pairs a held-out dozen picks checkpoints by noise, and
               every labelled pair is worth more in training (bench/bench_embedder.py)
    mine    -> hard negatives with the *current* embedder, margin-filtered, never from the gold document
    train   -> SentenceTransformerTrainer + MultipleNegativesRankingLoss (no-duplicates batches; the cached
               form for large batches), optionally wrapped in MatryoshkaLoss
    save    -> a versioned artifact: model/ (with the chosen weight beside the weights) + manifest.json (base
               model, data hash, pair counts, hyperparameters, gain check, before/after metrics, wall time)

Interrupting (Ctrl-C) leaves checkpoints in the run directory and no artifact; nothing half-written is
ever visible under ``artifacts/embedder/``.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import artifacts
from core.errors import InvalidInputError
from core.models import (
    load_embedder,
    load_generator,
    resolve_device,
    resolve_embedder,
    write_embedder_retrieval_hints,
)
from core.settings import EmbedderTrainingSettings, Settings
from retrieval.chunking import Chunker
from retrieval.documents import Chunk
from retrieval.loaders import load_documents
from retrieval.metrics import PRIMARY_METRIC
from training import distributed
from training.embedder_data import (
    QueryPair,
    add_hard_negatives,
    corpus_pairs,
    filter_pairs,
    pairs_from_chats,
    pairs_from_labelled,
    pairs_to_json,
    synthetic_pairs,
    to_dataset,
)
from training.embedder_eval import DocRetrievalEvaluator

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformerTrainingArguments

logger = logging.getLogger(__name__)


def corpus(settings: Settings, sources: list[Path], tokenizer) -> tuple[dict[str, str], list[Chunk]]:
    """The documents' own embedded texts by id and their chunks, as the index builds them."""
    chunker = Chunker(tokenizer, settings.retrieval.chunk_size, settings.retrieval.chunk_overlap)
    documents = load_documents(sources)
    return {d.doc_id: d.embedding_text() for d in documents}, [c for d in documents for c in chunker.split(d)]


def corpus_chunks(settings: Settings, sources: list[Path], tokenizer) -> list[Chunk]:
    return corpus(settings, sources, tokenizer)[1]


def collect_pairs(settings: Settings, cfg: EmbedderTrainingSettings, chunks: list[Chunk]) -> list[QueryPair]:
    """Labelled first, then chat, synthetic, inverse-cloze: on duplicates the human-written query wins."""
    pairs: list[QueryPair] = []
    for path in cfg.labelled_files:
        pairs += pairs_from_labelled(path)
    for path in cfg.chat_files:
        pairs += pairs_from_chats(path)
    if cfg.synthetic_queries_per_chunk > 0:
        model, tokenizer = load_generator(settings)
        cache = settings.paths.data_dir / "cache" / "synthetic_queries.json"
        pairs += synthetic_pairs(chunks, model, tokenizer, settings.generation, cache,
                                 per_chunk=cfg.synthetic_queries_per_chunk)
    if cfg.corpus_queries_per_chunk > 0:
        pairs += corpus_pairs(chunks, per_chunk=cfg.corpus_queries_per_chunk, seed=cfg.seed)
    return pairs


def split_pairs(pairs: list[QueryPair], eval_fraction: float, seed: int) -> tuple[list[QueryPair], list[QueryPair]]:
    shuffled = sorted(pairs, key=lambda p: (p.query, p.doc_id))
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * eval_fraction))
    return shuffled[n_eval:], shuffled[:n_eval]


def build_training_args(cfg: EmbedderTrainingSettings, output_dir: Path, *, batch_size: int, metric: str | None,
                        on_cpu: bool) -> SentenceTransformerTrainingArguments:
    """sentence-transformers' training arguments for this recipe: no-duplicate batches (in-batch negatives
    must not contain the positive), best checkpoint by ``metric`` (None: no held-out set, the last
    step is the model), fp16 only on a GPU."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    strategy = "no" if metric is None else "steps" if cfg.eval_steps else "epoch"
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.eval_steps,
        load_best_model_at_end=metric is not None,
        metric_for_best_model=metric,
        greater_is_better=True,
        save_total_limit=2,
        logging_steps=max(1, min(10, cfg.max_steps if cfg.max_steps > 0 else 10)),
        seed=cfg.seed,
        report_to=[],
        use_cpu=on_cpu,
        bf16=False,
        fp16=not on_cpu,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _loss(model, cfg: EmbedderTrainingSettings, gather: bool):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size, gather_across_devices=gather)
            if cfg.loss == "cached_mnrl" else MultipleNegativesRankingLoss(model, gather_across_devices=gather))
    return MatryoshkaLoss(model, loss, matryoshka_dims=cfg.matryoshka_dims) if cfg.matryoshka_dims else loss


def split_human_queries(pairs: list[QueryPair], fraction: float, seed: int) -> tuple[list[QueryPair], list[QueryPair]]:
    """(training pairs, held-out pairs): a seeded share of the human-written queries held out; inverse-cloze
    corpus sentences always train (held out, they would flatter the numbers)."""
    kept, heldout = split_pairs([p for p in pairs if p.source != "corpus"], fraction, seed)
    return kept + [p for p in pairs if p.source == "corpus"], heldout


def heldout_evaluator(heldout: list[QueryPair], chunks: list[Chunk], doc_texts: dict[str, str], doc_weight: float,
                      name: str = "heldout") -> DocRetrievalEvaluator:
    """Document retrieval of ``heldout`` over ``chunks``, ranked the way the index ranks them."""
    return DocRetrievalEvaluator([p.query for p in heldout], [[p.doc_id] for p in heldout], chunks, name=name,
                                 doc_texts=doc_texts, doc_weight=doc_weight)


def candidate_weights(settings: Settings, cfg: EmbedderTrainingSettings) -> list[float]:
    """The document-vector weights to choose from: the setting alone when it is a number."""
    fixed = settings.retrieval.doc_vector_weight
    return sorted(set(cfg.doc_vector_weights)) if fixed == "auto" else [fixed]


def best_weight(scores: dict[float, float]) -> float:
    """The best-scoring weight; ties go to the smaller one (closer to plain chunk ranking)."""
    return max(scores, key=lambda w: (scores[w], -w))


def choose_weight_on_base(settings: Settings, cfg: EmbedderTrainingSettings, pairs: list[QueryPair],
                          chunks: list[Chunk], doc_texts: dict[str, str]) -> dict[str, Any]:
    """With no gain check: the weight the base embedder ranks best with on the labelled queries (it never
    trained on them)."""
    human = [p for p in pairs if p.source != "corpus"]
    weights = candidate_weights(settings, cfg)
    if len(weights) == 1 or not human:
        return {"chosen": weights[0] if len(weights) == 1 else 0.0, "chosen_on": "setting" if len(weights) == 1
                else "no labelled queries: chunks alone"}
    scores = heldout_evaluator(human, chunks, doc_texts, 0.0, name="weights").sweep(load_embedder(settings), weights)
    return {"chosen": best_weight(scores), "chosen_on": f"base embedder, {len(human)} labelled training queries",
            f"{PRIMARY_METRIC}_by_weight": {"base": _rounded(scores)}}


def _rounded(scores: dict[float, float]) -> dict[str, float]:
    return {str(w): round(v, 4) for w, v in scores.items()}


def check_gain(settings: Settings, cfg: EmbedderTrainingSettings, pairs: list[QueryPair],
               chunks_by_doc: dict[str, list[Chunk]], chunks: list[Chunk], doc_texts: dict[str, str],
               workdir: Path) -> dict[str, Any]:
    """Estimate what tuning gains before paying for it: train the recipe (``gain_check_epochs`` long) on the
    labelled queries outside a seeded ``gain_check_fraction`` share, score that share (document nDCG@10 over the
    same chunks the index holds) with the base and the pre-check model, each at its best document-vector weight
    (which is chosen here too, on queries neither model trained on). ``decision`` is ``tune`` or ``keep_base``; without enough
    held-out queries there is no estimate and the weight is chosen by :func:`choose_weight_on_base`."""
    from sentence_transformers import SentenceTransformerTrainer

    human = [p for p in pairs if p.source != "corpus"]
    n_heldout = round(len(human) * cfg.gain_check_fraction)
    if cfg.gain_check_fraction == 0 or n_heldout < cfg.gain_check_min_queries or len(human) - n_heldout < 2:
        reason = ("gain_check_fraction is 0" if cfg.gain_check_fraction == 0 else
                  f"{n_heldout} held-out queries, fewer than gain_check_min_queries ({cfg.gain_check_min_queries}): "
                  "no estimate")
        return {"decision": "tune", "reason": reason, "heldout": n_heldout,
                "doc_vector_weight": choose_weight_on_base(settings, cfg, pairs, chunks, doc_texts)}
    train, heldout = split_human_queries(pairs, cfg.gain_check_fraction, cfg.seed + 1)
    weights = candidate_weights(settings, cfg)
    evaluator = heldout_evaluator(heldout, chunks, doc_texts, 0.0, name="check")
    began = time.perf_counter()
    model = load_embedder(settings, fresh=True)
    base_scores = evaluator.sweep(model, weights)
    dataset = to_dataset(train, chunks_by_doc, doc_texts=doc_texts, positive=cfg.positive).remove_columns(["doc_id"])
    quick = cfg if cfg.gain_check_epochs is None else cfg.model_copy(update={"num_train_epochs": cfg.gain_check_epochs})
    args = build_training_args(quick, workdir / "gain-check", batch_size=min(cfg.per_device_train_batch_size, len(dataset)),
                               metric=None, on_cpu=resolve_device(settings) == "cpu")
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                               loss=_loss(model, cfg, distributed.world_size() > 1)).train()
    tuned_scores = evaluator.sweep(model, weights)
    shutil.rmtree(workdir / "gain-check", ignore_errors=True)
    base_w, tuned_w = best_weight(base_scores), best_weight(tuned_scores)
    base, tuned = base_scores[base_w], tuned_scores[tuned_w]
    gain = tuned - base
    decision = "tune" if gain > cfg.gain_check_min_gain else "keep_base"
    chosen = {"chosen": tuned_w if decision == "tune" else base_w,
              "chosen_on": f"the gain check's {len(heldout)} held-out queries"
              + ("" if len(weights) > 1 else " (fixed by retrieval.doc_vector_weight)"),
              f"{PRIMARY_METRIC}_by_weight": {"base": _rounded(base_scores), "tuned": _rounded(tuned_scores)}}
    return {"decision": decision, "metric": PRIMARY_METRIC, "base": round(base, 4), "tuned": round(tuned, 4),
            "gain": round(gain, 4), "min_gain": cfg.gain_check_min_gain, "heldout": len(heldout), "train": len(train),
            "epochs": quick.num_train_epochs, "wall_time_s": round(time.perf_counter() - began, 1), "doc_vector_weight": chosen,
            "reason": None if decision == "tune" else
            f"the pre-check run did not beat the base embedder on {len(heldout)} held-out queries "
            f"({PRIMARY_METRIC} {base:.4f} -> {tuned:.4f}): keeping the base model"}


def train_embedder(settings: Settings, cfg: EmbedderTrainingSettings | None = None) -> artifacts.Artifact:
    """Run the recipe and return the finished artifact.

    Raises:
        InvalidInputError: fewer than two usable training pairs, or a malformed data file.
    """
    from sentence_transformers import SentenceTransformerTrainer

    cfg = cfg or settings.train_embedder
    began = time.perf_counter()

    # --- setup: corpus, pairs, filtering
    base = resolve_embedder(settings)
    model = load_embedder(settings, fresh=True)
    sources = cfg.sources or list(settings.retrieval.sources)
    doc_texts, chunks = corpus(settings, sources, model.tokenizer)
    chunks_by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        chunks_by_doc.setdefault(chunk.doc_id, []).append(chunk)
    raw_pairs = collect_pairs(settings, cfg, chunks)
    pairs, filtered = filter_pairs(raw_pairs, chunks_by_doc)
    if len(pairs) < 2:
        raise InvalidInputError(
            f"embedder training needs at least 2 (query, document) pairs after filtering, got {len(pairs)} "
            f"(from {len(raw_pairs)} raw: {filtered.duplicates} duplicates, {filtered.leaks} leaks, "
            f"{filtered.unknown_doc} with unknown doc ids); add labelled_files or chat_files"
        )

    # --- split (held-out queries are human ones: inverse-cloze sentences would flatter the numbers)
    train_pairs, heldout_pairs = pairs, []
    if cfg.eval_fraction > 0:
        train_pairs, heldout_pairs = split_human_queries(pairs, cfg.eval_fraction, cfg.seed)
    if len(train_pairs) < 2:
        raise InvalidInputError(f"only {len(train_pairs)} training pair(s) left after the held-out split")

    # --- mine hard negatives with the current model
    train_dataset = to_dataset(train_pairs, chunks_by_doc, doc_texts=doc_texts, positive=cfg.positive)
    if cfg.hard_negatives > 0:
        mined = add_hard_negatives(train_dataset, model, chunks, num_negatives=cfg.hard_negatives,
                                   margin=cfg.hard_negative_margin)
        if len(mined) >= 2:
            train_dataset = mined
        else:
            logger.warning("too few rows kept hard negatives; training on (anchor, positive) pairs only")
            train_dataset = train_dataset.remove_columns(["doc_id"])
    else:
        train_dataset = train_dataset.remove_columns(["doc_id"])

    # --- train
    # Under torchrun every rank trains one run: rank 0 names it, and alone writes its files.
    artifact_id = distributed.agree(lambda: artifacts.new_artifact_id("embedder"))
    workdir = artifacts.run_dir(settings, "embedder", artifact_id)
    workdir.mkdir(parents=True, exist_ok=True)
    gather = distributed.world_size() > 1  # in-batch negatives from every rank, as in one process
    # A short run with nothing to resume: an interrupted or failed run leaves no half-written folder behind.
    try:
        gain_check = check_gain(settings, cfg, train_pairs, chunks_by_doc, chunks, doc_texts, workdir)
        doc_weight = gain_check.pop("doc_vector_weight")
        if gain_check["decision"] == "keep_base":
            logger.warning("embedder: %s", gain_check["reason"])
        logger.info("embedder: document-vector weight %s (chosen on %s)", doc_weight["chosen"], doc_weight["chosen_on"])
        evaluator = before = None
        if heldout_pairs:
            evaluator = heldout_evaluator(heldout_pairs, chunks, doc_texts, doc_weight["chosen"])
            before = evaluator(model)
            logger.info("before training: %s", {k: round(v, 4) for k, v in before.items()})
        loss = _loss(model, cfg, gather)
        batch_size = min(cfg.per_device_train_batch_size, len(train_dataset))
        metric = f"eval_{evaluator.primary_metric}" if evaluator else None
        args = build_training_args(cfg, workdir / "checkpoints", batch_size=batch_size, metric=metric,
                                   on_cpu=resolve_device(settings) == "cpu")
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss,
                                             evaluator=evaluator)
        if gain_check["decision"] == "tune":
            trainer.train()
        after = evaluator(model) if evaluator else None
        if after:
            logger.info("after training: %s", {k: round(v, 4) for k, v in after.items()})

        # --- save (rank 0 alone; the others wait, then return the same artifact)
        if not distributed.is_main():
            distributed.barrier()
            return artifacts.get_artifact(settings, "embedder", artifact_id)
        model.save(str(workdir / "model"))
        write_embedder_retrieval_hints(workdir / "model", doc_weight["chosen"], doc_weight)
        history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in trainer.state.log_history]
        manifest: dict[str, Any] = {
            "created_at": artifacts.utc_now(),
            "base_model": {"spec": base.spec, "location": base.location},
            "data_hash": artifacts.data_hash(pairs_to_json(pairs)),
            "pairs": {
                "raw_by_source": dict(Counter(p.source for p in raw_pairs)),
                "kept_by_source": dict(Counter(p.source for p in pairs)),
                "filtered": asdict(filtered),
                "train": len(train_pairs),
                "train_rows_with_negatives": len(train_dataset),
                "heldout": len(heldout_pairs),
            },
            "corpus": {"sources": [str(s) for s in sources], "chunks": len(chunks), "documents": len(chunks_by_doc)},
            "hyperparameters": cfg.model_dump(mode="json") | {"effective_batch_size": batch_size},
            "gain_check": gain_check,
            "kept_base": gain_check["decision"] == "keep_base",
            "doc_vector_weight": doc_weight,
            "metrics_before": before,
            "metrics_after": after,
            "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
            "global_steps": trainer.state.global_step,
            "log_history": history,
            "distributed": {"processes": distributed.world_size(), "backend": distributed.backend(),
                            "gather_across_devices": gather},
            "wall_time_s": round(time.perf_counter() - began, 1),
        }
        artifact = artifacts.finalize(settings, "embedder", artifact_id, manifest, keep=["model"])
    except BaseException:
        if distributed.is_main():
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    logger.info("embedder artifact %s written to %s", artifact.id, artifact.path)
    distributed.barrier()
    return artifact
