"""``tunerag pipeline``: from a team's documents, FAQ and style file to a tuned, evaluated assistant in one command.

Stages, in order: build the data (``onboarding``), index, train the embedder, index with it, train the generator,
train the verifier, evaluate every system. Each finished stage is recorded in ``OUT/pipeline.json`` (written
atomically, with its result and wall time) after its artifact is in place, so an interrupted run resumes at the
first unfinished stage; a run over changed inputs refuses to mix them (``--restart`` starts over). Before each
stage the command prints its number, an estimate from the default budget on 2 CPU cores, and the ETA of the rest;
after it, its wall time and peak resident memory (both also in the state).

A time budget (``budget_minutes``, 30 by default) fits the run to the machine: the generator's and the verifier's
training loops measure their seconds per step after three steps and stop where the budget says, with the learning
rate schedule stretched to end there (``training/budget.py``); the evaluation answers the first ``eval_limit``
(100) held-out questions. Each artifact's manifest records its budget, the planned and the trained steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import artifacts
from core.errors import InvalidInputError, TuneragError
from core.settings import Settings, load_settings

#: Estimated seconds per stage on 2 CPU cores within the default 30-minute budget, for the ETA before a stage
#: has run (zaragoza-construction-faq, ~500 entries: bench/RESULTS.md).
BUDGET_S = {"data": 5, "index": 30, "embedder": 170, "reindex": 20, "generator": 720, "verifier": 180, "eval": 700}
STAGES = tuple(BUDGET_S)
#: How a time budget is spent. The stages before the generator are not capped (~4 min for ~500 entries); the
#: verifier's training runs get a fixed share; the evaluation is estimated from the answers it will generate
#: (measured: 1,099 s for 149 questions x 4 systems on zaragoza, 1.84 s an answer, 8 in flight); the generator
#: gets the rest, less what follows its training loop (validation pass, saving, forgetting check).
VERIFIER_SHARE = 0.10
EVAL_SECONDS_PER_ANSWER = 1.9
GENERATING_SYSTEMS = 4  # prompt, rag, ft, combined; the +verifier systems reuse their answers
AFTER_GENERATOR_TRAINING_S = 150
MIN_GENERATOR_S = 300


@dataclass(frozen=True)
class PipelineInputs:
    docs: Path | None
    faq: Path
    style: Path
    seed: int = 0
    max_steps: int | None = None  # embedder and generator (quick runs)
    eval_limit: int | None = 100  # the first N held-out questions (None: all)
    on_conflict: str = "error"
    budget_minutes: float | None = 30.0  # wall time the training stages are fitted into (None: the recipes decide)
    unanswered: Path | None = None  # questions the documents do not answer (refusal chats, unanswerable eval)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in (self.faq, self.style, *([self.unanswered] if self.unanswered else [])):
            digest.update(path.read_bytes())
        if self.docs:
            for file in sorted(p for p in self.docs.rglob("*") if p.is_file()):
                digest.update(str(file.relative_to(self.docs)).encode())
                digest.update(file.read_bytes())
        digest.update(f"{self.seed}:{self.max_steps}:{self.eval_limit}:{self.on_conflict}:{self.budget_minutes}".encode())
        return digest.hexdigest()


def _reset_peak_rss() -> bool:
    """Start a new peak-memory measurement for this process (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(since_reset: bool) -> float:
    """The process's peak resident memory in MB: since the last reset (VmHWM) where that works, else over its
    whole life (``ru_maxrss``, said so in the state as ``peak_rss_scope``)."""
    if since_reset:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if found:
            return round(int(found.group(1)) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)


def generator_seconds(inputs: PipelineInputs, spent_s: float, eval_questions: int) -> float | None:
    """The generator's training-loop budget: what the pipeline's budget leaves after the finished stages, the
    verifier's share, the evaluation's estimate and the work after training (never under MIN_GENERATOR_S)."""
    if inputs.budget_minutes is None:
        return None
    total = inputs.budget_minutes * 60
    left = (total - spent_s - VERIFIER_SHARE * total - eval_questions * GENERATING_SYSTEMS * EVAL_SECONDS_PER_ANSWER
            - AFTER_GENERATOR_TRAINING_S)
    return max(left, MIN_GENERATOR_S)


def _stages(inputs: PipelineInputs, out: Path, overrides: dict[str, Any], spent: Callable[[], float],
            say: Callable[[str], None]) -> dict[str, Callable[[], dict[str, Any]]]:
    def settings() -> Settings:
        return load_settings(out / "data" / "tunerag.yaml", **overrides)

    def recipe_config(s: Settings, section: str, seconds: float | None = None) -> Any:
        """The settings' config for one recipe, with the pipeline's step cap (a quick run) and time budget."""
        update: dict[str, Any] = {"max_steps": inputs.max_steps} if inputs.max_steps else {}
        if seconds is not None:
            update["max_train_seconds"] = seconds
        return getattr(s, section).model_copy(update=update)

    def eval_questions() -> int:
        card = json.loads((out / "data" / "card.json").read_text())["counts"]
        held = card["heldout_answerable"] + card["heldout_unanswerable"]
        return min(held, inputs.eval_limit) if inputs.eval_limit else held

    def data() -> dict[str, Any]:
        from onboarding.build import build_data

        return build_data(inputs.docs, inputs.faq, inputs.style, out / "data", seed=inputs.seed, force=True,
                          on_conflict=inputs.on_conflict, unanswered_file=inputs.unanswered)["counts"]

    def index(with_tuned: bool) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            from retrieval.indexer import update_index

            s = settings()
            report = update_index(s, rebuild=True, embedder_location=artifacts.active_embedder_location(s) if with_tuned else None)
            return {"version": report.version, "documents": report.documents, "chunks": report.chunks}
        return run

    def embedder() -> dict[str, Any]:
        from training.embedder_recipe import train_embedder

        s = settings()
        artifact = train_embedder(s, recipe_config(s, "train_embedder"))
        artifacts.activate(s, "embedder", artifact.id)
        return {"artifact": artifact.id, "kept_base": artifact.manifest["kept_base"],
                "gain_check": artifact.manifest["gain_check"],
                "doc_vector_weight": artifact.manifest.get("doc_vector_weight"), "metrics_before": artifact.manifest["metrics_before"],
                "metrics_after": artifact.manifest["metrics_after"]}

    def generator() -> dict[str, Any]:
        from training.generator_recipe import train_generator

        s = settings()
        seconds = generator_seconds(inputs, spent(), eval_questions())
        if seconds is not None:
            say(f"    budget {inputs.budget_minutes:g} min: the generator's training gets {seconds / 60:.1f} min "
                f"({eval_questions()} questions to evaluate after it)")
        artifact = train_generator(s, recipe_config(s, "train_generator", seconds))
        artifacts.activate(s, "adapter", artifact.id)
        return {"artifact": artifact.id, "final_validation_loss": artifact.manifest["final_validation_loss"],
                "global_steps": artifact.manifest["global_steps"], "time_budget": artifact.manifest.get("time_budget"),
                "forgetting": (artifact.manifest.get("forgetting") or {}).get("perplexity")}

    def verifier() -> dict[str, Any]:
        from training.verifier_recipe import train_verifier

        s = settings()
        seconds = VERIFIER_SHARE * inputs.budget_minutes * 60 if inputs.budget_minutes is not None else None
        try:
            artifact = train_verifier(s, recipe_config(s, "train_verifier", seconds))
        except InvalidInputError as exc:  # too few refusals to learn from: the +verifier systems are skipped
            return {"skipped": str(exc)}
        artifacts.activate(s, "verifier", artifact.id)
        return {"artifact": artifact.id, "threshold": artifact.manifest.get("threshold"),
                "metrics_out_of_fold": artifact.manifest.get("metrics_out_of_fold"),
                "time_budget": artifact.manifest.get("time_budget")}

    def evaluate() -> dict[str, Any]:
        from eval.runner import EvalOptions, run_evaluation

        report = run_evaluation(settings(), EvalOptions(limit=inputs.eval_limit, out_dir=out / "report"))
        return {"report": str(out / "report" / "report.html"), "headline": report["headline"]}

    return {"data": data, "index": index(False), "embedder": embedder, "reindex": index(True),
            "generator": generator, "verifier": verifier, "eval": evaluate}


def run_pipeline(inputs: PipelineInputs, out: Path, *, overrides: dict[str, Any] | None = None, restart: bool = False,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every stage; returns the state (``OUT/pipeline.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "pipeline.json"
    fingerprint = inputs.fingerprint()
    state: dict[str, Any] = {"inputs_sha256": fingerprint, "stages": {}}
    if state_path.is_file() and not restart:
        previous = json.loads(state_path.read_text())
        if previous.get("inputs_sha256") != fingerprint:
            raise TuneragError(f"{out} holds a pipeline over other inputs (documents, FAQ, style or options changed): "
                               "pass --restart to start over, or choose another --out")
        state = previous
    actual = {name: s["seconds"] for name, s in state["stages"].items()}
    stages = _stages(inputs, out, overrides or {}, lambda: sum(actual.values()), say)
    for i, name in enumerate(STAGES, 1):
        if name in state["stages"]:
            say(f"[{i}/{len(STAGES)}] {name}: done earlier ({state['stages'][name]['seconds']:.0f} s), skipped")
            continue
        remaining = sum(BUDGET_S[n] for n in STAGES[i - 1:] if n not in actual)
        say(f"[{i}/{len(STAGES)}] {name}: ~{BUDGET_S[name] / 60:.0f} min on 2 cores; ETA of the rest ~{remaining / 60:.0f} min")
        per_stage = _reset_peak_rss()
        began = time.perf_counter()
        result = stages[name]()
        seconds = round(time.perf_counter() - began, 1)
        state["stages"][name] = {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(per_stage),
                                 "peak_rss_scope": "stage" if per_stage else "process", "result": result}
        actual[name] = seconds
        _write_state(state_path, state)
        say(f"[{i}/{len(STAGES)}] {name}: finished in {seconds:.0f} s, peak memory "
            f"{state['stages'][name]['peak_rss_mb']:.0f} MB")
    state["next"] = f"tunerag --config {out / 'data' / 'tunerag.yaml'} serve"
    _write_state(state_path, state)
    return state
