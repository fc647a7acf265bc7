"""The ``tunerag`` command line: serve, index, search, ask, train, eval and model provisioning.

Every command reads the same :class:`core.settings.Settings` (``--config FILE``, ``TUNERAG_*`` env vars).
User errors (:class:`core.errors.TuneragError`) print one ``error: ...`` line and exit with status 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel

from core.errors import TuneragError
from core.logs import configure_logging
from core.settings import Settings, load_settings

app = typer.Typer(
    help="tunerag: fine-tuned retrieval + a LoRA-adapted generator for customer support, behind an HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Prepare and inspect the generator and embedder.", no_args_is_help=True)
train_app = typer.Typer(help="Fine-tune the embedder, the generator or the answerability verifier.", no_args_is_help=True)
app.add_typer(models_app, name="models")
data_app = typer.Typer(help="Your own domain: documents, an FAQ export and a style file into training data.",
                        no_args_is_help=True)
feedback_app = typer.Typer(help="Users' ratings into training data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(feedback_app, name="feedback")
app.add_typer(data_app, name="data")



def _settings(ctx: typer.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]


@contextmanager
def _library_output_to_stderr() -> Iterator[None]:
    """Trainers print progress dicts on stdout; the command's own result is the only thing printed there."""
    with redirect_stdout(sys.stderr):
        yield


def _training_config(base: BaseModel, cls: type[BaseModel], config: Path | None, max_steps: int | None) -> BaseModel:
    """The settings' training section, overridden by a YAML file and then by --max-steps."""
    from pydantic import ValidationError

    from core.safe_yaml import load_yaml

    values = base.model_dump()
    if config is not None:
        if not config.is_file():
            raise TuneragError(f"training config not found: {config}")
        loaded = load_yaml(config.read_text(), where=str(config)) or {}
        if not isinstance(loaded, dict):
            raise TuneragError(f"{config}: expected a mapping of training options")
        values.update(loaded)
    if max_steps is not None:
        values["max_steps"] = max_steps
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TuneragError(f"invalid training config: {problems}") from None


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file (else $TUNERAG_CONFIG).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Override TUNERAG_DATA_DIR.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    overrides = {"data_dir": data_dir} if data_dir else {}
    settings = load_settings(config, **overrides)
    configure_logging("DEBUG" if verbose else settings.log_level)
    ctx.ensure_object(dict)["settings"] = settings


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port).")] = None,
) -> None:
    """Start the HTTP API."""
    from service.server import run_server

    run_server(_settings(ctx), host=host, port=port)


@models_app.command("prepare")
def models_prepare(ctx: typer.Context) -> None:
    """Resolve both models, convert the GGUF generator once, and report load times."""
    from core.models import load_embedder, load_generator, resolve_embedder, resolve_generator

    settings = _settings(ctx)
    began = time.perf_counter()
    before = resolve_generator(settings, convert=False)
    generator = resolve_generator(settings)
    prepared = time.perf_counter() - began
    began = time.perf_counter()
    load_generator(settings)
    loaded = time.perf_counter() - began
    embedder = resolve_embedder(settings)
    began = time.perf_counter()
    load_embedder(settings)
    embedder_loaded = time.perf_counter() - began
    report = {
        "generator": {"spec": generator.spec, "path": generator.location, "was_cached": before.source == "cache",
                      "prepare_s": round(prepared, 2), "load_s": round(loaded, 2)},
        "embedder": {"spec": embedder.spec, "path": embedder.location, "load_s": round(embedder_loaded, 2)},
    }
    from inference.loader import choose_engine

    if choose_engine(settings)[0] == "llamacpp":  # the serving engine's weights (re-quantized once, cached)
        from core.models import generator_gguf_path
        from inference.llamacpp_weights import engine_weights

        weights = engine_weights(settings, generator_gguf_path(settings))  # type: ignore[arg-type]
        report["llamacpp"] = {"weights": str(weights.path), "prompt_call_tokens": weights.max_call_tokens,
                              "note": weights.note}
    typer.echo(json.dumps(report, indent=2))


@app.command()
def index(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders (default: retrieval.sources).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-embed everything into a new index.")] = False,
    embedder: Annotated[str | None, typer.Option(help="Embedder for this index: a spec such as artifact:latest "
                                                      "(default: the current index's, else the active one).")] = None,
) -> None:
    """Index documents: incremental by default (only new or changed documents are embedded)."""
    from dataclasses import asdict

    from core import artifacts
    from core.models import resolve_embedder
    from retrieval.index_store import read_manifest
    from retrieval.indexer import update_index

    settings = _settings(ctx)
    manifest = read_manifest(settings.paths.index_dir)
    if embedder is not None:
        location = resolve_embedder(settings.model_copy(update={"models": settings.models.model_copy(
            update={"embedder": embedder})})).location
    elif manifest is not None and not rebuild:
        location = manifest.embedder_location
    else:
        location = artifacts.active_embedder_location(settings) or resolve_embedder(settings).location
    with _library_output_to_stderr():
        report = update_index(settings, paths or None, rebuild=rebuild, embedder_location=location, progress=True)
    # The API and later incremental runs follow the embedder the index was just built with.
    artifacts.activate(settings, "embedder", artifacts.embedder_artifact_id(settings, location))
    typer.echo(json.dumps(asdict(report) | {"seconds": round(report.seconds, 2)}))


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="Number of results.", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    mode: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid (default: retrieval.search_mode)")] = None,
) -> None:
    """Search the index (dense by default; BM25 and hybrid reciprocal-rank fusion on request)."""
    from retrieval.search import open_retriever

    if mode is not None and mode not in ("dense", "bm25", "hybrid"):
        raise TuneragError(f"--mode must be one of dense, bm25, hybrid; got {mode!r}")
    settings = _settings(ctx)
    retriever = open_retriever(settings)
    version = retriever.version
    results = retriever.search(query, k=k, mode=mode)  # type: ignore[arg-type]
    if as_json:
        typer.echo(json.dumps({"index_version": version.name, "results": [r.to_json() for r in results]}, indent=2))
        return
    for rank, r in enumerate(results, 1):
        heading = " > ".join(r.heading_path)
        snippet = " ".join(r.text.split())[:160]
        typer.echo(f"{rank}. [{r.doc_id}] {heading}  (score {r.score:.3f})\n   {snippet}")


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The customer's question.")],
    mode: Annotated[str, typer.Option(help="combined | rag | ft | prompt")] = "combined",
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer length limit.", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full answer record as JSON.")] = False,
) -> None:
    """Answer one question through the same pipeline as the API (active adapter and index)."""
    import asyncio
    from dataclasses import asdict

    from core.prompt import MODES
    from inference.loader import load_engine
    from service.chat import ChatService
    from service.state import ServiceState

    if mode not in MODES:
        raise TuneragError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    settings = _settings(ctx)

    async def run():
        loaded = load_engine(settings)  # the server's engine, weights and decoding
        backend = loaded.backend
        state = ServiceState(settings, backend, loaded.tokenizer, engine_info=loaded.info)
        try:
            await state.start()
            return await ChatService(state).answer(question, mode=mode, max_new_tokens=max_new_tokens)
        finally:
            await backend.close()

    answer = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps({k: v for k, v in asdict(answer).items() if k != "prompt"}, indent=2))
        return
    typer.echo(answer.text)
    for note in answer.notes:
        typer.echo(f"note: {note}", err=True)
    if answer.sources:
        typer.echo("sources: " + ", ".join(dict.fromkeys(s["doc_id"] for s in answer.sources)), err=True)


def _main_rank() -> bool:
    """Under torchrun / accelerate launch only rank 0 reports and moves pointers (every rank trained)."""
    from training import distributed

    return distributed.is_main()


@train_app.command("embedder")
def train_embedder(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with training overrides.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")] = None,
) -> None:
    """Fine-tune the embedder on (query, passage) pairs with hard negatives."""
    from core.settings import EmbedderTrainingSettings
    from training.embedder_recipe import train_embedder as run

    settings = _settings(ctx)
    cfg = _training_config(settings.train_embedder, EmbedderTrainingSettings, config, max_steps)
    with _library_output_to_stderr():
        artifact = run(settings, cfg)
    if not _main_rank():
        return
    summary = {k: artifact.manifest.get(k) for k in ("pairs", "gain_check", "kept_base", "doc_vector_weight",
                                                      "metrics_before", "metrics_after", "wall_time_s")}
    typer.echo(json.dumps({"artifact": artifact.id, "path": str(artifact.path), **summary}, indent=2))
    if artifact.manifest["kept_base"]:
        typer.echo(f"note: {artifact.manifest['gain_check']['reason']}", err=True)
    typer.echo(f"next: `tunerag index --rebuild --embedder artifact:{artifact.id}` (or activate it through "
               "the API) to search with it", err=True)


@train_app.command("verifier")
def train_verifier(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with training overrides.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop each training after N optimizer steps.")] = None,
    activate: Annotated[bool, typer.Option("--activate", help="Make it the active verifier.")] = False,
) -> None:
    """Train the answerability verifier: a cross-encoder that refuses what the retrieved context cannot answer."""
    from core import artifacts
    from core.settings import VerifierTrainingSettings
    from training.verifier_recipe import train_verifier as run

    settings = _settings(ctx)
    cfg = _training_config(settings.train_verifier, VerifierTrainingSettings, config, max_steps)
    with _library_output_to_stderr():
        artifact = run(settings, cfg)
    if activate:
        artifacts.activate(settings, "verifier", artifact.id)
    summary = {k: artifact.manifest[k] for k in ("threshold", "data", "metrics_out_of_fold", "wall_time_s")}
    typer.echo(json.dumps({"artifact": artifact.id, "path": str(artifact.path), "active": activate, **summary}, indent=2))
    if not activate:
        typer.echo(f"next: `curl -X POST localhost:8000/v1/verifiers/{artifact.id}/activate` (or train with --activate)",
                   err=True)


@train_app.command("generator")
def train_generator(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with training overrides.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue an interrupted run: its id or 'latest'.")] = None,
    dpo: Annotated[Path | None, typer.Option("--dpo", help="Preference pairs JSONL: run DPO on top of an SFT adapter.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Export base + adapter merged into one model folder.")] = False,
    adapter: Annotated[str, typer.Option(help="Adapter for --dpo / --merge: an id, 'latest' or 'active'.")] = "latest",
    out: Annotated[Path | None, typer.Option("--out", help="Folder for --merge (default: data_dir/exports/<id>).")] = None,
    activate: Annotated[bool, typer.Option("--activate/--no-activate", help="Make the new adapter the active one.")] = True,
    with_feedback: Annotated[Path | None, typer.Option("--with-feedback", help="A `tunerag feedback export` folder: "
                                                       "its chat examples join the training chats.")] = None,
    from_adapter: Annotated[str | None, typer.Option("--from-adapter", help="Continue this adapter (an id, 'latest' or "
                                                     "'active'): a next round. With --with-feedback it trains on the "
                                                     "feedback plus a replay share of the regular chats.")] = None,
) -> None:
    """Fine-tune the generator with LoRA on grounded chat examples (or --dpo / --merge an adapter)."""
    from core import artifacts
    from core.settings import GeneratorTrainingSettings
    from training import generator_recipe as recipe

    settings = _settings(ctx)
    cfg = _training_config(settings.train_generator, GeneratorTrainingSettings, config, max_steps)
    if with_feedback is not None:
        chats = with_feedback / "feedback_chats.jsonl"
        if not chats.is_file():
            raise TuneragError(f"{with_feedback} has no feedback_chats.jsonl: run `tunerag feedback export --out "
                               f"{with_feedback}` first")
        cfg = cfg.model_copy(update={"feedback_files": [*cfg.feedback_files, chats]})
    if from_adapter is not None:
        cfg = cfg.model_copy(update={"init_adapter": from_adapter})
    if merge:
        source = artifacts.get_artifact(settings, "adapter", adapter)
        with _library_output_to_stderr():
            folder = recipe.merge_adapter(settings, source, out or settings.paths.data_dir / "exports" / f"{source.id}-merged")
        typer.echo(json.dumps({"merged": source.id, "path": str(folder),
                               "use_with": f"TUNERAG_MODELS__GENERATOR={folder}"}, indent=2))
        return
    with _library_output_to_stderr():
        if dpo is not None:
            result = recipe.train_dpo(settings, dpo, artifacts.get_artifact(settings, "adapter", adapter), cfg)
        else:
            result = recipe.train_generator(settings, cfg, resume=resume)
    if not _main_rank():
        return
    if activate:
        artifacts.activate(settings, "adapter", result.id)
    keys = ("stage", "init_adapter", "data", "trainable_fraction", "adapter_size_bytes", "final_train_loss",
            "final_validation_loss", "global_steps", "forgetting", "wall_time_s")
    summary = {k: result.manifest[k] for k in keys if k in result.manifest}
    typer.echo(json.dumps({"artifact": result.id, "path": str(result.path), "active": activate, **summary}, indent=2,
                          default=str))
    for warning in (result.manifest.get("forgetting") or {}).get("warnings", []):
        typer.echo(f"warning: forgetting check: {warning}", err=True)


@data_app.command("build")
def data_build(
    faq: Annotated[Path, typer.Option("--faq", help="FAQ export: CSV or JSONL with question, answer, optional doc_id.")],
    style: Annotated[Path, typer.Option("--style", help="Style YAML: company, greeting, sign_off, word_limit, refusal.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist, or --force).")],
    docs: Annotated[Path | None, typer.Option("--docs", help="The help center: a folder of Markdown/HTML/PDF/text.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    heldout: Annotated[float, typer.Option(help="Share of FAQ answers held out for evaluation.", min=0.05, max=0.9)] = 0.3,
    unanswered: Annotated[Path | None, typer.Option("--unanswered", help="Questions the documents do not answer "
                                                    "(.txt, one per line, or .jsonl): refusal chats and unanswerable "
                                                    "held-out questions.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out folder.")] = False,
    on_conflict: Annotated[str, typer.Option("--on-conflict", help="The same question with another answer: error "
                                                                    "(default) or keep-first (the rest are listed).")] = "error",
) -> None:
    """Turn a team's documents, FAQ and style file into chats, embedder pairs, a held-out set and a config."""
    from onboarding.build import build_data

    if on_conflict not in ("error", "keep-first"):
        raise TuneragError(f"--on-conflict must be error or keep-first, got {on_conflict!r}")
    card = build_data(docs, faq, style, out, seed=seed, heldout_fraction=heldout, force=force, on_conflict=on_conflict,
                      unanswered_file=unanswered)
    typer.echo(json.dumps({"out": str(out), **card}, indent=2))


@app.command("pipeline")
def pipeline(
    ctx: typer.Context,
    faq: Annotated[Path, typer.Option("--faq", help="FAQ export: CSV or JSONL with question, answer, optional doc_id.")],
    style: Annotated[Path, typer.Option("--style", help="Style YAML: company, greeting, sign_off, word_limit, refusal.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the data, artifacts, report and pipeline.json.")],
    docs: Annotated[Path | None, typer.Option("--docs", help="The help center: a folder of Markdown/HTML/PDF/text.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    unanswered: Annotated[Path | None, typer.Option("--unanswered", help="Questions the documents do not answer "
                                                    "(.txt, one per line, or .jsonl): refusal chats and unanswerable "
                                                    "held-out questions.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Cap embedder/generator/verifier steps.")] = None,
    eval_limit: Annotated[int, typer.Option("--eval-limit", help="Evaluate the first N held-out questions (0: all).")] = 100,
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="Fit the generator's and verifier's "
                                                  "training into this wall time on this machine (0: no budget, "
                                                  "the recipes' epochs decide).")] = 30.0,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore the finished stages in OUT and start over.")] = False,
    on_conflict: Annotated[str, typer.Option("--on-conflict", help="The same question with another answer: error "
                                                                    "(default) or keep-first.")] = "error",
) -> None:
    """Build data, index, train embedder, generator and verifier, evaluate; resumes after an interruption."""
    from service.pipeline import PipelineInputs, run_pipeline

    models = _settings(ctx).models.model_dump(mode="json")
    with _library_output_to_stderr():
        if on_conflict not in ("error", "keep-first"):
            raise TuneragError(f"--on-conflict must be error or keep-first, got {on_conflict!r}")
        if eval_limit < 0 or budget_minutes < 0:
            raise TuneragError("--eval-limit and --budget-minutes must be >= 0 (0: no limit)")
        spec = PipelineInputs(docs, faq, style, seed=seed, max_steps=max_steps, eval_limit=eval_limit or None,
                              on_conflict=on_conflict, budget_minutes=budget_minutes or None, unanswered=unanswered)
        state = run_pipeline(spec, out,
                             overrides={"models": models}, restart=restart, say=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(state, indent=2, default=str))
    typer.echo(f"serve it: {state['next']}", err=True)


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="Folder (default: data_dir/feedback/latest).")] = None,
) -> None:
    """Rated answers into chat examples (up-rated, corrected) and DPO pairs (correction over the original)."""
    from service.feedback_export import export_feedback

    settings = _settings(ctx)
    target = out or settings.paths.data_dir / "feedback" / "latest"
    card = export_feedback(settings, target)
    typer.echo(json.dumps({"out": str(target), **card}, indent=2, default=str))


@app.command("monitor")
def monitor(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="The running API (default: server.host:server.port).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="TUNERAG_API_KEY", help="An admin key.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="HTML page (default: data_dir/reports/monitoring.html).")] = None,
) -> None:
    """Drift of the running server's traffic against its artifacts: print the tests, write a page with plots."""
    import httpx

    from monitoring.page import render_page

    settings = _settings(ctx)
    base = (url or f"http://{settings.server.host}:{settings.server.port}").rstrip("/")
    try:
        response = httpx.get(f"{base}/v1/monitoring", headers={"X-API-Key": api_key} if api_key else {}, timeout=30)
    except httpx.HTTPError as exc:
        raise TuneragError(f"cannot reach {base}: {exc}") from exc
    if response.status_code != 200:
        raise TuneragError(f"{base}/v1/monitoring answered {response.status_code}: {response.text[:300]}")
    status = response.json()
    target = out or settings.paths.reports_dir / "monitoring.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(render_page(status))
    tmp.replace(target)
    last = status.get("last_check") or {}
    typer.echo(json.dumps({"drift_detected": status.get("drift_detected"), "window": status.get("window"),
                           "tests": last.get("tests"), "page": str(target)}, indent=2))


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.", min=1)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: data_dir/reports/<run>).")] = None,
    systems: Annotated[str | None, typer.Option(help="Comma-separated subset of prompt,rag,ft,combined,rag+verifier,"
                                                      "combined+verifier.")] = None,
    eval_file: Annotated[Path | None, typer.Option("--eval-file", help="Held-out set (default: eval.eval_file).")] = None,
) -> None:
    """Compare prompt-only, RAG-only, FT-only and combined on the held-out set."""
    from eval.runner import EvalOptions, run_evaluation

    chosen = tuple(s.strip() for s in systems.split(",") if s.strip()) if systems else None
    with _library_output_to_stderr():
        report = run_evaluation(_settings(ctx), EvalOptions(limit=limit, systems=chosen, out_dir=out, eval_file=eval_file))
    for name, system in report["systems"].items():
        if system["status"] != "ok":
            typer.echo(f"warning: system {name} not evaluated: {system['reason']}", err=True)
    from eval.report import markdown

    typer.echo(markdown(report))
    typer.echo(f"report: {report['files']['html']}  (also report.json, report.md)")


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit status 1."""
    try:
        app(standalone_mode=False)
    except TuneragError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    main()
