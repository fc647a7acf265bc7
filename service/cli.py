"""The ``tunerag`` command line: serve, index, search, ask, train, eval and model provisioning.

Every command reads the same :class:`core.settings.Settings` (``--config FILE``, ``TUNERAG_*`` env vars).
User errors (:class:`core.errors.TuneragError`) print one ``error: ...`` line and exit with status 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

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
train_app = typer.Typer(help="Fine-tune the embedder or the generator.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")

Mode = Literal["combined", "rag", "ft", "prompt"]


def _settings(ctx: typer.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]


def _training_config(base: BaseModel, cls: type[BaseModel], config: Path | None, max_steps: int | None) -> BaseModel:
    """The settings' training section, overridden by a YAML file and then by --max-steps."""
    import yaml
    from pydantic import ValidationError

    values = base.model_dump()
    if config is not None:
        if not config.is_file():
            raise TuneragError(f"training config not found: {config}")
        loaded = yaml.safe_load(config.read_text()) or {}
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
    import uvicorn

    from service.app import create_app

    settings = _settings(ctx)
    uvicorn.run(
        create_app(settings),
        host=host or settings.server.host,
        port=port or settings.server.port,
        log_level=settings.log_level.lower(),
    )


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
    typer.echo(json.dumps(report, indent=2))


@app.command()
def index(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders (default: retrieval.sources).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-embed everything into a new index.")] = False,
) -> None:
    """Index documents: incremental by default (only new or changed documents are embedded)."""
    from dataclasses import asdict

    from retrieval.indexer import update_index

    report = update_index(_settings(ctx), paths or None, rebuild=rebuild, progress=True)
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
    from core.models import load_embedder
    from retrieval.index_store import open_version
    from retrieval.search import Retriever

    if mode is not None and mode not in ("dense", "bm25", "hybrid"):
        raise TuneragError(f"--mode must be one of dense, bm25, hybrid; got {mode!r}")
    settings = _settings(ctx)
    version = open_version(settings.paths.index_dir)
    retriever = Retriever(version, load_embedder(settings, version.manifest.embedder_location), settings.retrieval)
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
) -> None:
    """Answer one question the way the API would."""
    from core.generation import generate
    from core.models import load_generator
    from core.prompt import load_template, render_prompt

    if mode not in ("combined", "rag", "ft", "prompt"):
        raise TuneragError(f"--mode must be one of combined, rag, ft, prompt; got {mode!r}")
    if mode != "prompt":
        raise TuneragError(f"--mode {mode} is not available yet; use --mode prompt")
    settings = _settings(ctx)
    model, tokenizer = load_generator(settings)
    template = load_template(settings)
    prompt = render_prompt(tokenizer, template.build_messages(question, None, with_examples=True))
    result = generate(model, tokenizer, [prompt], settings.generation, max_new_tokens=max_new_tokens)[0]
    typer.echo(result.text)


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
    artifact = run(settings, cfg)
    summary = {k: artifact.manifest[k] for k in ("pairs", "metrics_before", "metrics_after", "wall_time_s")}
    typer.echo(json.dumps({"artifact": artifact.id, "path": str(artifact.path), **summary}, indent=2))


@train_app.command("generator")
def train_generator(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with training overrides.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")] = None,
) -> None:
    """Fine-tune the generator with LoRA on grounded chat examples."""
    raise TuneragError("`tunerag train generator` is not available yet (generator training issue)")


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N questions.", min=1)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: data_dir/reports/<run>).")] = None,
    systems: Annotated[str | None, typer.Option(help="Comma-separated subset of prompt,rag,ft,combined.")] = None,
    eval_file: Annotated[Path | None, typer.Option("--eval-file", help="Held-out set (default: eval.eval_file).")] = None,
) -> None:
    """Compare prompt-only, RAG-only, FT-only and combined on the held-out set."""
    from eval.runner import EvalOptions, run_evaluation

    chosen = tuple(s.strip() for s in systems.split(",") if s.strip()) if systems else None
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
