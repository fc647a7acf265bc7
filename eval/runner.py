"""The comparative evaluation: prompt-only vs RAG-only vs FT-only vs combined on one held-out set.

    system              generator        retrieval
    prompt              base             none (style system prompt + few-shot examples)
    rag                 base             base embedder index
    ft                  adapter          none
    combined            adapter          fine-tuned embedder index
    rag+verifier        rag, gated by the answerability verifier (its refusal below the threshold, no generation)
    combined+verifier   combined, gated the same way

The two verifier systems run when a verifier artifact exists (``eval.verifier``) and no system list is given.

All systems answer through the backend the server uses (:func:`inference.loader.load_engine`: the same engine,
weights, decoding, adapter loading and refusal gate as ``/v1/chat``; inside the server, its very backend
object), ``eval.batch_size`` requests in flight, one system at a time; the report names the engine, the weights
file and its hash, and the decoding settings. Answers are cached per system in ``<out>/answers/<system>.jsonl``,
keyed by the hash of everything that makes an answer (prompt, adapter, engine, decoding): an interrupted run
resumes where it stopped, a re-run only scores, and a verifier system reuses the answers of the system it gates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core import artifacts
from core.errors import InvalidInputError, NotFoundError
from core.jsonl import read_jsonl
from core.models import load_embedder, resolve_embedder, resolve_generator
from core.prompt import MODES, build_prompt, load_template
from core.settings import Settings
from eval import answer_metrics as am
from eval.stats import bootstrap_ci, holm_adjust, paired_test
from eval.style import StyleRules, check_style, is_refusal
from inference.backends import GenerationBackend
from inference.generation import Generation
from retrieval.answerability import Verifier, pair_text
from retrieval.embedding import embedder_fingerprint
from retrieval.indexer import update_index
from retrieval.metrics import query_metrics
from retrieval.search import Retriever, SearchResult, doc_ranking, open_retriever

logger = logging.getLogger(__name__)

SystemName = str  # a Mode, or a Mode + "+verifier"
VERIFIED: tuple[SystemName, ...] = ("rag+verifier", "combined+verifier")
SYSTEM_ORDER: tuple[SystemName, ...] = (*MODES, *VERIFIED)
Progress = Callable[[str, int, int], None]
PAIRED_METRICS = ("rouge_l", "token_f1", "embedding_similarity", "style_adherence", "citation_hit", "refusal_correct")


@dataclass(frozen=True)
class SystemSpec:
    name: SystemName
    uses_adapter: bool
    retrieval: Literal["base", "finetuned"] | None
    description: str
    verifier: bool = False


SYSTEMS: dict[SystemName, SystemSpec] = {
    "prompt": SystemSpec("prompt", False, None, "base generator, style prompt with few-shot examples, no retrieval"),
    "rag": SystemSpec("rag", False, "base", "base generator + retrieval with the base embedder"),
    "ft": SystemSpec("ft", True, None, "LoRA-adapted generator, no retrieval"),
    "combined": SystemSpec("combined", True, "finetuned", "LoRA-adapted generator + retrieval with the fine-tuned embedder"),
    "rag+verifier": SystemSpec("rag+verifier", False, "base", "rag, answering only where the verifier says the "
                               "context answers the question", verifier=True),
    "combined+verifier": SystemSpec("combined+verifier", True, "finetuned", "combined, answering only where the "
                                    "verifier says the context answers the question", verifier=True),
}


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None
    systems: tuple[str, ...] | None = None
    out_dir: Path | None = None
    eval_file: Path | None = None


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    gold_doc_ids: tuple[str, ...]
    answerable: bool
    reference_answer: str


@dataclass
class SystemRun:
    spec: SystemSpec
    status: Literal["ok", "missing"]
    reason: str | None = None
    adapter: str | None = None
    embedder: str | None = None
    index_version: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def load_eval_set(path: Path, limit: int | None = None) -> list[EvalItem]:
    """``{"id", "question", "gold_doc_ids", "reference_answer", "answerable"?}`` per line; errors name the line."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: evaluation file not found")
    items = []
    for n, row in read_jsonl(path):
        missing = [k for k in ("id", "question", "reference_answer") if not str(row.get(k) or "").strip()]
        if missing or not isinstance(row.get("gold_doc_ids", []), list):
            raise InvalidInputError(f"{path}:{n}: needs 'id', 'question', 'reference_answer' and a 'gold_doc_ids' list; "
                                    f"missing {missing or ['gold_doc_ids']}")
        gold = tuple(row.get("gold_doc_ids") or ())
        items.append(EvalItem(str(row["id"]), row["question"], gold, bool(row.get("answerable", bool(gold))),
                              row["reference_answer"]))
    if not items:
        raise InvalidInputError(f"{path}: no evaluation questions")
    return items[:limit] if limit else items


def _artifact(settings: Settings, kind: artifacts.ArtifactKind, name: str) -> artifacts.Artifact | None:
    if name == "active":
        active = artifacts.active_id(settings, kind)
        name = active or "latest"
    try:
        return artifacts.get_artifact(settings, kind, name)
    except NotFoundError:
        return None


def _retriever(settings: Settings, location: str, root: Path) -> Retriever:
    """An index of the configured sources built with ``location``'s embedder, kept under ``root`` for reruns."""
    private = settings.model_copy(update={"paths": settings.paths.model_copy(
        update={"data_dir": root / embedder_fingerprint(location)})})
    update_index(private, embedder_location=location)
    return open_retriever(settings, private.paths.index_dir)


def _prompt_hash(prompt: str, adapter: str | None, max_new_tokens: int, settings: Settings,
                 engine: str = "") -> str:
    """The cache key of one answer: the prompt, the adapter, the engine and its weights, and every decoding
    setting that changes the answer."""
    gen = settings.generation
    decoding = (gen.temperature, gen.top_p, gen.repetition_penalty, gen.repetition_penalty_scope, gen.refusal_min_prob)
    key = f"{adapter}\x00{max_new_tokens}\x00{decoding}\x00{engine}\x00{prompt}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class EvalEngine:
    """The serving backend as evaluation uses it: ``call`` runs a coroutine function on the loop the backend
    lives on (a blocking portal for the CLI, ``anyio.from_thread.run`` inside the server) and blocks for it."""

    backend: GenerationBackend
    tokenizer: Any
    info: dict[str, Any]
    call: Callable[[Callable[[], Any]], Any]
    concurrency: int = 8

    def __post_init__(self) -> None:  # the weights' hash is read here, on the evaluation's thread, not at start-up
        from inference.loader import with_weights_hash

        self.info = with_weights_hash(self.info)

    @property
    def identity(self) -> str:
        """What makes answers of this engine differ from another's (the answer cache key)."""
        return f"{self.info.get('engine')}:{self.info.get('weights_sha256') or self.info.get('base_url')}"

    def load_adapter(self, name: str, path: Path) -> None:
        self.call(lambda: self.backend.load_adapter(name, path))

    def generate(self, prompts: Sequence[str], adapter: str | None, max_new_tokens: int) -> list[Generation]:
        """Answers for ``prompts`` in order, ``concurrency`` requests in flight (the backend batches them as it
        batches the server's traffic)."""
        import asyncio

        async def answer_all() -> list[Generation]:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(prompt: str) -> Generation:
                async with gate:
                    return await self.backend.generate(prompt, adapter, max_new_tokens, None)

            return list(await asyncio.gather(*(one(p) for p in prompts)))

        return self.call(answer_all)


def _read_cache(folder: Path) -> dict[str, dict[str, Any]]:
    """Every cached answer under ``folder`` (all systems' files), keyed by its prompt hash: a system whose prompt,
    adapter, engine and decoding equal another's (combined+verifier and combined, on what the verifier lets
    through) reuses that answer instead of generating it again."""
    cache: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
            if isinstance(row, dict) and "prompt_hash" in row:
                cache[row["prompt_hash"]] = row
    return cache


def generate_answers(run: SystemRun, items: Sequence[EvalItem], engine: EvalEngine, retriever: Retriever | None,
                     settings: Settings, cache_file: Path, progress: Progress | None = None,
                     verifier: Verifier | None = None) -> None:
    """Fill ``run.answers`` (in ``items`` order), generating only what the cache lacks. With ``verifier``, a
    context it judges unanswerable gets its refusal without generation, as the service answers."""
    cfg = settings.eval
    template = load_template(settings)
    depth = max(cfg.retrieval_depth, settings.retrieval.top_k)
    # The context is retrieved exactly as /v1/chat retrieves it: one query at a time (a padded batch embeds each
    # query slightly differently) and k = top_k (exact search breaks score ties by k); the deeper ranking feeds
    # the retrieval metrics only.
    top_k = settings.retrieval.top_k
    contexts: list[list[SearchResult] | None] = [None] * len(items)
    results = contexts
    if retriever is not None:
        contexts = [retriever.search(i.question, k=top_k) for i in items]
        results = [retriever.search(i.question, k=depth) for i in items] if depth > top_k else contexts
    pending: list[tuple[int, str]] = []
    rows: list[dict[str, Any]] = []
    cache = _read_cache(cache_file.parent)
    for n, (item, found, context) in enumerate(zip(items, results, contexts, strict=True)):
        passages = [r.to_passage() for r in context] if context is not None else None
        prompt = build_prompt(template, engine.tokenizer, item.question, passages, with_examples=run.spec.name == "prompt",
                              max_tokens=settings.generation.max_context_tokens)
        key = _prompt_hash(prompt, run.adapter, cfg.max_new_tokens, settings, engine.identity)
        row = {"id": item.id, "prompt_hash": key,
               "context": [{"doc_id": p.doc_id, "title": p.title, "text": p.text} for p in passages or []],
               "ranking": doc_ranking(found) if found is not None else None, "answerability": None}
        if verifier is not None and context is not None:
            judged = verifier.judge(item.question, [pair_text(r.title, r.text) for r in context])
            row["answerability"] = judged.to_json() | {"refused": not judged.answerable}
            if not judged.answerable:
                row.update({"answer": verifier.refusal, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0})
                rows.append(row)
                continue
        cached = cache.get(key)
        if cached:
            row.update({k: cached[k] for k in ("answer", "prompt_tokens", "completion_tokens", "seconds")})
        else:
            pending.append((n, prompt))
        rows.append(row)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    done = len(items) - len(pending)
    with cache_file.open("a", encoding="utf-8") as fh, tqdm(total=len(items), initial=done,
                                                           desc=f"eval {run.spec.name}", unit="q") as bar:
        # Chunks of several times the requests in flight: the backend keeps batch_size running, a finished one
        # replaced at once (waiting for whole waves left the engine half empty at every wave's end), and the cache
        # is written after each chunk (an interrupted run loses at most one chunk).
        step = cfg.batch_size * 4
        for start in range(0, len(pending), step):
            batch = pending[start : start + step]
            chunk_began = time.perf_counter()
            outputs = engine.generate([p for _, p in batch], run.adapter, cfg.max_new_tokens)
            per_answer = (time.perf_counter() - chunk_began) / len(batch)  # wall per answer at this concurrency
            for (n, _), out in zip(batch, outputs, strict=True):
                rows[n].update({"answer": out.text, "prompt_tokens": out.prompt_tokens,
                                "completion_tokens": out.completion_tokens, "seconds": per_answer})
                fh.write(json.dumps({"id": items[n].id, **{k: rows[n][k] for k in
                                     ("prompt_hash", "answer", "prompt_tokens", "completion_tokens", "seconds")}}) + "\n")
            fh.flush()
            done += len(batch)
            bar.update(len(batch))
            if progress:
                progress(f"generating {run.spec.name}", done, len(items))
    run.answers = rows


def score(run: SystemRun, items: Sequence[EvalItem], rules: StyleRules, settings: Settings,
          similarity: np.ndarray) -> list[dict[str, Any]]:
    """Per-question metrics for one system; ``similarity[i]`` is the answer/reference cosine."""
    scored = []
    for n, (item, row) in enumerate(zip(items, run.answers, strict=True)):
        answer = row["answer"]
        style = check_style(answer, rules, item.reference_answer)
        refused = is_refusal(answer, rules)
        context_ids = [c["doc_id"] for c in row["context"]]
        m: dict[str, Any] = {
            "rouge_l": am.rouge_l(answer, item.reference_answer),
            "token_f1": am.token_f1(answer, item.reference_answer),
            "embedding_similarity": float(similarity[n]),
            "style_adherence": float(style["adheres"]),
            # Per rule, so the failing one is visible (style_adherence needs all of them).
            **{f"style_{rule}": float(ok) for rule, ok in style.items() if rule != "adheres"},
            "groundedness": (am.groundedness(answer, [c["text"] for c in row["context"]], rules,
                                             settings.eval.grounded_threshold)
                             if run.spec.retrieval else None),
            "citation_validity": am.citation_validity(answer, context_ids),
            "citation_hit": am.citation_hit(answer, item.gold_doc_ids) if item.answerable else None,
            "refusal_correct": float(refused) if not item.answerable else None,
            "false_refusal": float(refused) if item.answerable else None,
            "completion_tokens": row["completion_tokens"],
            "seconds_per_answer": row["seconds"],
        }
        if row["ranking"] is not None and item.gold_doc_ids:
            m.update({k: v for k, v in query_metrics(row["ranking"], item.gold_doc_ids, ks=(1, 3, 5)).items()
                      if k in ("recall@1", "recall@3", "recall@5", "mrr@10", "ndcg@10")})
        scored.append({"id": item.id, "style": style, "metrics": m})
    return scored


WORST_PER_SYSTEM = 5


def refusal_confusion(items: Sequence[EvalItem], scored: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Refusal decisions against answerability: refused / answered x unanswerable / answerable."""
    counts = {"refused_unanswerable": 0, "answered_unanswerable": 0, "refused_answerable": 0, "answered_answerable": 0}
    for item, row in zip(items, scored, strict=True):
        m = row["metrics"]
        refused = (m["false_refusal"] if item.answerable else m["refusal_correct"]) == 1.0
        counts[f"{'refused' if refused else 'answered'}_{'answerable' if item.answerable else 'unanswerable'}"] += 1
    return counts


def failed_checks(metrics: dict[str, Any]) -> list[str]:
    """The checks an answer failed: style rules, citation validity and hit, refusal behaviour."""
    failed = [k.removeprefix("style_") for k, v in metrics.items()
              if k.startswith("style_") and k != "style_adherence" and v == 0.0]
    failed += [k for k in ("citation_validity", "citation_hit", "refusal_correct") if metrics.get(k) is not None
               and metrics[k] < 1.0]
    failed += ["false_refusal"] if metrics.get("false_refusal") == 1.0 else []
    return failed


def worst_answers(items: Sequence[EvalItem], run: SystemRun, scored: Sequence[dict[str, Any]],
                  n: int = WORST_PER_SYSTEM) -> list[dict[str, Any]]:
    """The ``n`` answers that failed the most checks (ties: lowest token F1), with their context, so a person
    sees why a system scores as it does."""
    failed = [failed_checks(s["metrics"]) for s in scored]
    order = sorted(range(len(scored)), key=lambda i: (-len(failed[i]), scored[i]["metrics"]["token_f1"], items[i].id))
    return [{"id": items[i].id, "question": items[i].question, "gold_doc_ids": items[i].gold_doc_ids,
             "answerable": items[i].answerable, "answer": run.answers[i]["answer"],
             "answerability": run.answers[i].get("answerability"),
             "failed": failed[i], "token_f1": round(scored[i]["metrics"]["token_f1"], 3),
             "context": [{"doc_id": c["doc_id"], "title": c["title"], "text": c["text"]} for c in run.answers[i]["context"]]}
            for i in order[:n]]


def aggregate(scored: Sequence[dict[str, Any]], settings: Settings) -> dict[str, dict[str, float]]:
    keys = sorted({k for s in scored for k, v in s["metrics"].items() if v is not None})
    return {k: bootstrap_ci([s["metrics"].get(k) for s in scored], samples=settings.eval.bootstrap_samples,
                            seed=settings.eval.seed).to_json() for k in keys}


@dataclass
class EvalPlan:
    """What one evaluation will run: the questions, the systems (with why any is missing) and the artifacts."""

    items: list[EvalItem]
    eval_file: Path
    out: Path
    runs: dict[str, SystemRun]
    adapter: artifacts.Artifact | None
    tuned_embedder: artifacts.Artifact | None
    base_embedder: str
    verifier: artifacts.Artifact | None = None
    engine_info: dict[str, Any] = field(default_factory=dict)  # what answered: inference.loader.LoadedEngine.info


def plan_evaluation(settings: Settings, options: EvalOptions) -> EvalPlan:
    """Resolve the systems, questions, output folder and artifacts; a system whose artifact is missing is
    kept with the reason and the command that creates it.

    Raises:
        InvalidInputError: an unknown system name, or a malformed eval file.
    """
    cfg = settings.eval
    verifier = _artifact(settings, "verifier", cfg.verifier)
    names = tuple(options.systems or [*cfg.systems, *(VERIFIED if verifier is not None else ())])
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise InvalidInputError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    eval_file = options.eval_file or cfg.eval_file
    items = load_eval_set(eval_file, options.limit)
    out = options.out_dir or settings.paths.reports_dir / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    adapter = _artifact(settings, "adapter", cfg.adapter)
    tuned_embedder = _artifact(settings, "embedder", cfg.embedder)
    runs: dict[str, SystemRun] = {}
    for name in SYSTEM_ORDER:
        if name not in names:
            continue
        spec = SYSTEMS[name]
        run = SystemRun(spec, "ok")
        if spec.uses_adapter and adapter is None:
            run.status, run.reason = "missing", "no adapter artifact: run `tunerag train generator` first"
        if spec.retrieval == "finetuned" and tuned_embedder is None:
            run.status = "missing"
            run.reason = "; ".join(filter(None, [run.reason, "no fine-tuned embedder: run `tunerag train embedder` first"]))
        if spec.verifier and verifier is None:
            run.status = "missing"
            run.reason = "; ".join(filter(None, [run.reason, "no verifier: run `tunerag train verifier` first"]))
        runs[name] = run
        if run.status == "missing":
            logger.warning("system %s skipped: %s", name, run.reason)
    return EvalPlan(items, eval_file, out, runs, adapter, tuned_embedder, resolve_embedder(settings).location, verifier)


def generate_all(settings: Settings, plan: EvalPlan, engine: EvalEngine, on_progress: Progress | None = None) -> None:
    """Answer every question with every runnable system (concurrently, resumable through the answer cache)."""
    adapter = plan.adapter
    if adapter is not None and any(r.status == "ok" and r.spec.uses_adapter for r in plan.runs.values()):
        engine.load_adapter(adapter.id, adapter.path / "adapter")
    retrievers: dict[str, Retriever] = {}
    verifier: Verifier | None = None
    for name, run in plan.runs.items():
        if run.status != "ok":
            continue
        retriever = None
        if run.spec.retrieval is not None:
            location = plan.base_embedder if run.spec.retrieval == "base" else str(plan.tuned_embedder.path / "model")
            retriever = retrievers.get(location) or _retriever(settings, location, plan.out / "indexes")
            retrievers[location] = retriever
            run.embedder, run.index_version = retriever.version.manifest.embedder_id, retriever.version.name
        run.adapter = adapter.id if run.spec.uses_adapter and adapter is not None else None
        if run.spec.verifier and verifier is None and plan.verifier is not None:
            from core.models import resolve_device

            verifier = Verifier.load(plan.verifier.path, plan.verifier.manifest, resolve_device(settings))
        started = time.perf_counter()
        generate_answers(run, plan.items, engine, retriever, settings, plan.out / "answers" / f"{name}.jsonl",
                         on_progress, verifier if run.spec.verifier else None)
        run.seconds = time.perf_counter() - started


def score_all(settings: Settings, plan: EvalPlan) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Per-question metrics and per-system aggregates (with bootstrap intervals) of every answered system."""
    items = plan.items
    rules = StyleRules.from_settings(settings.eval)
    similarity_model = load_embedder(settings, plan.base_embedder)
    references = similarity_model.encode([i.reference_answer for i in items], normalize_embeddings=True,
                                         show_progress_bar=False)
    judge = None
    if settings.eval.judge_base_url:
        from eval.judge import Judge

        judge = Judge(settings.eval)
    per_system: dict[str, Any] = {}
    scored_by_system: dict[str, list[dict[str, Any]]] = {}
    for name, run in plan.runs.items():
        entry: dict[str, Any] = {"description": run.spec.description, "status": run.status, "reason": run.reason,
                                 "adapter": run.adapter, "embedder": run.embedder, "index_version": run.index_version}
        if run.status == "ok":
            answers = similarity_model.encode([a["answer"] or "" for a in run.answers], normalize_embeddings=True,
                                              show_progress_bar=False)
            scored = score(run, items, rules, settings, (answers * references).sum(axis=1))
            if judge is not None:
                grades = judge.score_many([i.question for i in items], [i.reference_answer for i in items],
                                          [a["answer"] for a in run.answers])
                for row, grade in zip(scored, grades, strict=True):
                    row["metrics"]["judge_score"] = grade
            scored_by_system[name] = scored
            entry.update({"metrics": aggregate(scored, settings), "wall_time_s": round(run.seconds, 1),
                          "refusals": refusal_confusion(items, scored),
                          "worst_answers": worst_answers(items, run, scored)})
        per_system[name] = entry
    return per_system, scored_by_system


def compare_systems(settings: Settings, scored_by_system: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Paired sign-flip tests between every two systems on every paired metric, Holm-adjusted together."""
    cfg = settings.eval
    ok = [n for n in SYSTEM_ORDER if n in scored_by_system]
    has_judge = any("judge_score" in row["metrics"] for rows in scored_by_system.values() for row in rows)
    paired_metrics = PAIRED_METRICS + (("judge_score",) if has_judge else ())
    comparisons = []
    for i, a in enumerate(ok):
        for b in ok[i + 1 :]:
            for metric in paired_metrics:
                comparisons.append(paired_test(
                    [s["metrics"].get(metric) for s in scored_by_system[b]],
                    [s["metrics"].get(metric) for s in scored_by_system[a]],
                    name_a=b, name_b=a, metric=metric, samples=cfg.bootstrap_samples, seed=cfg.seed))
    adjusted = holm_adjust([c.p_value for c in comparisons])
    return [c.to_json() | {"p_holm": None if np.isnan(p) else round(p, 4), "significant_holm": bool(p < 0.05)}
            for c, p in zip(comparisons, adjusted, strict=True)]


def assemble_report(settings: Settings, plan: EvalPlan, options: EvalOptions, per_system: dict[str, Any],
                    scored_by_system: dict[str, list[dict[str, Any]]], comparisons: list[dict[str, Any]],
                    wall_time_s: float) -> dict[str, Any]:
    """The report dict: config, data and model versions, per-system metrics, comparisons, per-question rows."""
    cfg = settings.eval
    questions = []
    for n, item in enumerate(plan.items):
        questions.append({**asdict(item), "systems": {
            name: {"answer": plan.runs[name].answers[n]["answer"], "context": plan.runs[name].answers[n]["context"],
                   "answerability": plan.runs[name].answers[n].get("answerability"),
                   "metrics": scored_by_system[name][n]["metrics"], "style": scored_by_system[name][n]["style"]}
            for name in scored_by_system}})
    generator = resolve_generator(settings, convert=False)
    adapter, tuned_embedder = plan.adapter, plan.tuned_embedder
    return {
        "tunerag_report": 1,
        "created_at": artifacts.utc_now(),
        "wall_time_s": round(wall_time_s, 1),
        "config": {"eval": cfg.model_dump(mode="json"), "retrieval": settings.retrieval.model_dump(mode="json"),
                   "generation": settings.generation.model_dump(mode="json") | {"max_new_tokens": cfg.max_new_tokens,
                                                                                "batch_size": cfg.batch_size}},
        "data": {"eval_file": str(plan.eval_file),
                 "eval_file_sha256": hashlib.sha256(plan.eval_file.read_bytes()).hexdigest(),
                 "questions": len(plan.items), "answerable": sum(i.answerable for i in plan.items),
                 "limit": options.limit},
        "engine": plan.engine_info,
        "models": {"generator": generator.spec, "base_embedder": embedder_fingerprint(plan.base_embedder),
                   "adapter": adapter and {"id": adapter.id, "data_hash": adapter.manifest.get("data_hash"),
                                           "forgetting": adapter.manifest.get("forgetting")},
                   "finetuned_embedder": tuned_embedder and {"id": tuned_embedder.id,
                                                              "data_hash": tuned_embedder.manifest.get("data_hash")},
                   "verifier": plan.verifier and {"id": plan.verifier.id, "threshold": plan.verifier.manifest.get("threshold"),
                                                  "data_hash": plan.verifier.manifest.get("data_hash")}},
        "systems": per_system,
        "headline": headline(per_system),
        "comparisons": comparisons,
        "questions": questions,
        "files": {kind: str(plan.out / f"report.{kind}") for kind in ("json", "md", "html")},
    }


def run_evaluation(settings: Settings, options: EvalOptions | None = None, *,
                   on_progress: Progress | None = None, engine: EvalEngine | None = None) -> dict[str, Any]:
    """Plan, generate, score, compare, assemble; write report.json / report.md / report.html.

    ``engine``: the serving backend to answer with (the server passes its own); by default the one
    :func:`inference.loader.load_engine` builds for these settings, on an event loop of its own, closed after.

    Returns the report dict. Systems whose artifacts are missing are listed with the reason (and the
    command that creates them) instead of being dropped silently.
    """
    from eval.report import write_reports

    began = time.perf_counter()
    options = options or EvalOptions()
    plan = plan_evaluation(settings, options)
    if engine is None:
        from anyio.from_thread import start_blocking_portal

        from inference.loader import load_engine

        with start_blocking_portal() as portal:
            loaded = load_engine(settings)
            engine = EvalEngine(loaded.backend, loaded.tokenizer, loaded.info, portal.call, settings.eval.batch_size)
            try:
                generate_all(settings, plan, engine, on_progress)
            finally:
                portal.call(loaded.backend.close)
    else:
        generate_all(settings, plan, engine, on_progress)
    plan.engine_info = engine.info
    per_system, scored_by_system = score_all(settings, plan)
    comparisons = compare_systems(settings, scored_by_system)
    report = assemble_report(settings, plan, options, per_system, scored_by_system, comparisons,
                             time.perf_counter() - began)
    write_reports(report, plan.out)
    logger.info("evaluation written to %s in %.0fs", plan.out, report["wall_time_s"])
    return report


HEADLINE_METRICS = ("rouge_l", "token_f1", "embedding_similarity", "judge_score", "style_adherence", "groundedness",
                    "citation_validity", "citation_hit", "refusal_correct", "false_refusal", "ndcg@10", "recall@5",
                    "completion_tokens", "seconds_per_answer")


def headline(per_system: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated system with the means of the headline metrics."""
    rows = []
    for name, entry in per_system.items():
        row: dict[str, Any] = {"system": name, "status": entry["status"]}
        for metric in HEADLINE_METRICS:
            value = entry.get("metrics", {}).get(metric)
            row[metric] = value["mean"] if value else None
        rows.append(row)
    return rows
