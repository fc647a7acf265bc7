"""`tunerag pipeline` on the tiny models: every stage from a FAQ to a report, resumed after an interruption
without redoing finished stages, and refusing to mix changed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_build import inputs  # noqa: F401  (the fixture: documents, FAQ, style)

from core.errors import TuneragError
from service.pipeline import STAGES, PipelineInputs, run_pipeline

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_stage_and_resumes_after_an_interruption(inputs, tmp_path: Path,  # noqa: F811
                                                                     tiny_generator_dir: Path, tiny_embedder_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import training.generator_recipe as recipe

    docs, faq, style = inputs
    out = tmp_path / "run"
    spec = PipelineInputs(docs, faq, style, max_steps=2, eval_limit=3)
    overrides = {"models": {"generator": str(tiny_generator_dir), "embedder": str(tiny_embedder_dir)}}
    real = recipe.train_generator

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the generator stage

    monkeypatch.setattr(recipe, "train_generator", interrupted)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, out, overrides=overrides, say=said.append)
    state = json.loads((out / "pipeline.json").read_text())
    assert list(state["stages"]) == ["data", "index", "embedder", "reindex"]
    assert any("ETA of the rest" in line for line in said)

    monkeypatch.setattr(recipe, "train_generator", real)
    said.clear()
    state = run_pipeline(spec, out, overrides=overrides, say=said.append)
    assert list(state["stages"]) == list(STAGES)
    assert sum("skipped" in line for line in said) == 4  # the finished stages were not run again
    assert (out / "report" / "report.html").is_file() and (out / "report" / "report.json").is_file()
    assert state["stages"]["generator"]["result"]["artifact"].startswith("adapter-")
    # The default 30-minute budget reached the generator's training loop (2 steps fit it: not stopped early).
    budget = state["stages"]["generator"]["result"]["time_budget"]
    assert 300 <= budget["budget_s"] <= 1800 and budget["planned_steps"] == 2 and budget["stopped_early"] is False
    # 8 training chats are too few for a verifier: skipped for that reason (the data build gave it its refusal).
    assert "at least 20 positive" in state["stages"]["verifier"]["result"]["skipped"]
    # Peak memory per stage, not per process (what the reset measures is tested below).
    assert all(s["peak_rss_scope"] == "stage" and s["peak_rss_mb"] > 0 for s in state["stages"].values())
    assert any("peak memory" in line for line in said)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["models"]["adapter"]["id"] == state["stages"]["generator"]["result"]["artifact"]

    faq.write_text(faq.read_text() + '"A new question?","A new answer.",\n')
    with pytest.raises(TuneragError, match="other inputs"):
        run_pipeline(spec, out, overrides=overrides, say=said.append)


def test_peak_memory_is_measured_per_stage_not_over_the_process_life() -> None:
    """A 400 MB allocation freed before the next stage shows in its stage's peak and not in the next one's."""
    from service.pipeline import _peak_rss_mb, _reset_peak_rss

    assert _reset_peak_rss()
    block = bytearray(400 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not only reserved
    first = _peak_rss_mb(True)
    del block
    assert _reset_peak_rss()
    second = _peak_rss_mb(True)
    assert first - second > 300, (first, second)
