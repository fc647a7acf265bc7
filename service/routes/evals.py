"""Evaluation jobs: ``POST /v1/evals`` runs the comparative evaluation in the background; results as JSON
and as the self-contained HTML report."""

from __future__ import annotations

import json
import uuid
from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import File

from core.errors import ConflictError, NotFoundError
from service.auth import requires
from service.db import Job
from service.job_kinds import eval_report_dir
from service.jobs import JobRunner
from service.schemas import EvalRequest, JobDTO
from service.state import ServiceState


class EvalController(Controller):
    path = "/v1/evals"
    tags = ["evaluation"]
    guards = [requires("admin")]

    @post("/", summary="Start a prompt-only vs RAG vs FT vs combined evaluation job.", status_code=202,
          return_dto=JobDTO)
    async def start(self, data: EvalRequest, service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Job:
        return await job_runner.submit("eval", {"limit": data.limit, "systems": data.systems})

    @get("/{job_id:uuid}", summary="The evaluation's JSON report (or the job's status while it runs).")
    async def result(self, job_id: FromPath[uuid.UUID], service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> Response[Any]:
        job = await job_runner.get(job_id)
        if job.kind != "eval":
            raise NotFoundError(f"job {job_id} is not an evaluation")
        report = eval_report_dir(service_state, job_id) / "report.json"
        if job.status != "succeeded" or not report.is_file():
            return Response({"id": str(job.id), "status": job.status, "progress": job.progress, "error": job.error},
                            status_code=202 if job.status in ("queued", "running") else 200)
        return Response(json.loads(report.read_text()))

    @get("/{job_id:uuid}/report", summary="The self-contained HTML report.", media_type="text/html")
    async def report(self, job_id: FromPath[uuid.UUID], service_state: NamedDependency[ServiceState], job_runner: NamedDependency[JobRunner]) -> File:
        job = await job_runner.get(job_id)
        path = eval_report_dir(service_state, job_id) / "report.html"
        if job.status != "succeeded" or not path.is_file():
            raise ConflictError(f"evaluation {job_id} has no report yet (status: {job.status})")
        return File(path, media_type="text/html", content_disposition_type="inline")
