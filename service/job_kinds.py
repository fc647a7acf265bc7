"""The job kinds the API runs, bound to this process's state: reindex (refresh, rebuild), embedder switch, evaluation.

Each kind is rebuilt from its row's params alone, so any replica can run a job another replica was asked for.
The replica that ran it swaps the result in at once; the others follow the shared pointers
(:meth:`service.state.ServiceState.follow_pointers`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from core import artifacts
from retrieval.indexer import update_index
from service.jobs import JobKind, Progress
from service.state import ServiceState


def eval_report_dir(state: ServiceState, job_id: uuid.UUID) -> Path:
    return state.settings.paths.reports_dir / f"eval-{job_id}"


def job_kinds(state: ServiceState) -> dict[str, JobKind]:
    settings = state.settings

    def reindex(rebuild: bool):
        def work(_: uuid.UUID, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
            location = params.get("embedder_location") or artifacts.active_embedder_location(settings)
            report = update_index(settings, rebuild=rebuild, embedder_location=location, on_progress=progress)
            return {k: getattr(report, k) for k in report.__dataclass_fields__}
        return work

    async def swap(_: dict[str, Any], __: dict[str, Any]) -> None:
        await state.swap_index()

    async def activate_embedder(params: dict[str, Any], _: dict[str, Any]) -> None:
        # The pointer moves only once the index built with this embedder serves.
        await state.swap_index()
        artifacts.activate(settings, "embedder", params.get("embedder_id"))

    def evaluate(job_id: uuid.UUID, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from eval.runner import EvalEngine, EvalOptions, run_evaluation

        # The server's own backend answers the evaluation (from the job's worker thread, on the server's loop):
        # the report describes what /v1/chat answers, and no second model is loaded.
        engine = EvalEngine(state.backend, state.tokenizer, state.engine_info, anyio.from_thread.run,
                            settings.eval.batch_size)
        out = eval_report_dir(state, job_id)
        systems = params.get("systems")
        options = EvalOptions(limit=params.get("limit"), systems=tuple(systems) if systems else None, out_dir=out)
        report = run_evaluation(settings, options, on_progress=progress, engine=engine)
        return {"report_dir": str(out), "headline": report["headline"]}

    return {
        "index.refresh": JobKind("index", reindex(rebuild=False), swap),
        "index.rebuild": JobKind("index", reindex(rebuild=True), swap),
        "embedder.activate": JobKind("index", reindex(rebuild=True), activate_embedder),
        "eval": JobKind("eval", evaluate),
    }
