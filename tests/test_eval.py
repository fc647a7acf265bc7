"""Evaluation: metrics against hand-computed values, seeded statistics, a tiny end-to-end run, the HTML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import require_chromium

from core.errors import InvalidInputError
from core.settings import Settings, load_settings
from eval import answer_metrics as am
from eval.runner import EvalOptions, load_eval_set, run_evaluation
from eval.stats import bootstrap_ci, holm_adjust, paired_test
from eval.style import StyleRules, check_style, is_refusal

RULES = StyleRules.from_settings(load_settings().eval)
GOOD = "Hi there!\n\nGo to Settings > Team and click Invite. [setup-team-members]\n\n— Parcelly Support"
REFUSAL = ("Hi there!\n\nI couldn't find that in our help center, so I don't want to guess. Reply to this message "
           "and a specialist will follow up.\n\n— Parcelly Support")


def test_token_f1_and_rouge_l_hand_computed() -> None:
    # pred tokens: [cat, sat, on, mat] (articles dropped); ref: [cat, sat] -> P=2/4, R=1, F1=2/3
    assert am.token_f1("The cat sat on the mat.", "the cat sat") == pytest.approx(2 / 3)
    assert am.token_f1("", "") == 1.0 and am.token_f1("x", "") == 0.0 and am.token_f1("dog", "cat") == 0.0
    # LCS("a b c d", "a c d e") = 3 -> P = R = 3/4 -> F = 0.75
    assert am.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert am.rouge_l("same words here", "same words here") == pytest.approx(1.0)


def test_groundedness_counts_supported_content_sentences_only() -> None:
    passages = ["Labels can be voided within 30 days for USPS.", "Pickups before 11:00 are collected the same day."]
    answer = ("Hi there!\n\nUSPS labels can be voided within 30 days. [ts-void-label] "
              "Refunds arrive by carrier pigeon tomorrow morning.\n\nHappy shipping!\n\n— Parcelly Support")
    sentences = am.content_sentences(answer, RULES)
    assert sentences == ["USPS labels can be voided within 30 days.", "Refunds arrive by carrier pigeon tomorrow morning."]
    # sentence 1: {usps, labels, voided, within, days} all in passage 1 -> 1.0; sentence 2: none -> 0.0
    assert am.sentence_support(sentences[0], passages) == 1.0 and am.sentence_support(sentences[1], passages) == 0.0
    assert am.groundedness(answer, passages, RULES) == 0.5
    assert am.groundedness(REFUSAL, passages, RULES) == 1.0, "a refusal makes no claims"


def test_citation_validity_and_hit() -> None:
    answer = "See [billing-plans] and [made-up] and [billing-plans]."
    assert am.cited_ids(answer) == ["billing-plans", "made-up", "billing-plans"]
    assert am.citation_validity(answer, ["billing-plans", "x"]) == pytest.approx(2 / 3)
    assert am.citation_validity("No citations.", ["x"]) is None
    assert am.citation_hit(answer, ["billing-plans"]) == 1.0 and am.citation_hit(answer, ["other"]) == 0.0


@pytest.mark.parametrize(
    ("answer", "reference", "failed"),
    [
        (GOOD, None, []),
        (REFUSAL, None, []),
        ("Go to Settings. [a]\n\n— Parcelly Support", None, ["greeting"]),
        ("Hi there!\n\nGo to Settings. [a]", None, ["sign_off"]),
        ("Hi there!\n\nGo to Settings.\n\n— Parcelly Support", None, ["citation"]),
        ("Hi there!\n\n" + "word " * 121 + "[a]\n\n— Parcelly Support", None, ["length"]),
        (GOOD, "Hi there!\n\n1. Open it.\n2. Click.", ["steps"]),
        ("Hi there!\n\nAs an AI I think so. [a]\n\n— Parcelly Support", None, ["no_ai"]),
        (REFUSAL.replace("guess.", "guess. [billing-plans]"), None, ["citation"]),
    ],
)
def test_style_checker_rules(answer: str, reference: str | None, failed: list[str]) -> None:
    verdict = check_style(answer, RULES, reference)
    assert [rule for rule, ok in verdict.items() if not ok and rule != "adheres"] == failed
    assert verdict["adheres"] == (not failed)


def test_refusal_detection_ignores_case_and_curly_quotes() -> None:
    assert is_refusal("I COULDN’T FIND THAT IN OUR HELP CENTER.", RULES)
    assert not is_refusal(GOOD, RULES)


def test_bootstrap_is_deterministic_with_a_seed_and_brackets_the_mean() -> None:
    values = list(np.random.default_rng(1).random(50))
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b and a.low < a.mean < a.high and a.n == 50
    assert bootstrap_ci(values, seed=4) != a
    assert bootstrap_ci([None, float("nan"), 1.0, 1.0]).to_json() == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 2}


def test_paired_test_separates_real_from_null_differences() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(60)
    same = paired_test(base, base, name_a="x", name_b="y", metric="m")
    assert same.mean_difference == 0 and same.p_value == 1.0 and not same.significant
    better = paired_test(base + 0.2 + rng.normal(0, 0.05, 60), base, name_a="x", name_b="y", metric="m")
    assert better.significant and better.low > 0 and better.mean_difference == pytest.approx(0.2, abs=0.03)
    noise = paired_test(base + rng.normal(0, 0.2, 60), base, name_a="x", name_b="y", metric="m", seed=1)
    assert noise.low < 0 < noise.high
    pairs_with_gaps = paired_test([1.0, None, 0.0], [0.0, 1.0, None], name_a="a", name_b="b", metric="m")
    assert pairs_with_gaps.n == 1
    assert paired_test([1, 2], [1, 2], name_a="a", name_b="b", metric="m", seed=5) == \
        paired_test([1, 2], [1, 2], name_a="a", name_b="b", metric="m", seed=5)


def test_holm_adjustment() -> None:
    # sorted p: 0.01 (x3 -> 0.03), 0.02 (x2 -> 0.04), 0.04 (x1 -> 0.04)
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.5, float("nan")])[0] == 0.5


def test_eval_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"id": "a", "question": "q", "reference_answer": "r", "gold_doc_ids": []}\n{"id": "b"}\n')
    with pytest.raises(InvalidInputError, match=r"eval\.jsonl:2: needs 'id', 'question'"):
        load_eval_set(bad)
    with pytest.raises(InvalidInputError, match="not found"):
        load_eval_set(tmp_path / "nope.jsonl")


@pytest.fixture
def eval_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"eval": settings.eval.model_copy(update={
        "max_new_tokens": 6, "bootstrap_samples": 200, "batch_size": 4})})


@pytest.fixture
def with_artifacts(eval_settings: Settings) -> Settings:
    from helpers import make_tiny_adapter
    from tiny_models import build_tiny_sentence_transformer

    from core import artifacts

    make_tiny_adapter(eval_settings)
    run = artifacts.run_dir(eval_settings, "embedder", "embedder-tiny")
    build_tiny_sentence_transformer(run / "model", seed=5)
    artifacts.finalize(eval_settings, "embedder", "embedder-tiny", {"created_at": artifacts.utc_now()}, keep=["model"])
    return eval_settings


def test_tiny_end_to_end_eval_writes_json_markdown_html_and_resumes(with_artifacts: Settings, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    report = run_evaluation(with_artifacts, EvalOptions(limit=10, out_dir=out))
    def no_nan(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    data = json.loads((out / "report.json").read_text(), parse_constant=no_nan)
    assert data["data"]["questions"] == 10 and [r["system"] for r in data["headline"]] == ["prompt", "rag", "ft", "combined"]
    assert all(s["status"] == "ok" for s in data["systems"].values())
    assert data["systems"]["combined"]["embedder"].startswith("model-") and data["systems"]["ft"]["adapter"]
    assert data["systems"]["rag"]["embedder"] != data["systems"]["combined"]["embedder"]
    rag = data["systems"]["rag"]["metrics"]
    assert {"rouge_l", "token_f1", "embedding_similarity", "style_adherence", "groundedness", "ndcg@10"} <= set(rag)
    assert "groundedness" not in data["systems"]["prompt"]["metrics"], "no context, no groundedness"
    assert len(data["comparisons"]) == 6 * 6 and {"p_value", "p_holm", "significant_holm"} <= set(data["comparisons"][0])
    assert len(data["questions"][0]["systems"]) == 4
    # Per-rule style shares, consistent with the per-question verdicts; the worst answers, with their context.
    for name, system in data["systems"].items():
        rows = [q["systems"][name]["style"] for q in data["questions"]]
        for rule in ("greeting", "sign_off", "length", "citation", "steps", "no_ai"):
            assert system["metrics"][f"style_{rule}"]["mean"] == pytest.approx(sum(r[rule] for r in rows) / len(rows))
        worst = system["worst_answers"]
        assert len(worst) == 5 and all({"id", "question", "answer", "failed", "context"} <= set(w) for w in worst)
        fails = [len(w["failed"]) for w in worst]
        assert fails == sorted(fails, reverse=True)
        assert bool(worst[0]["context"]) == (name in ("rag", "combined"))
    markdown = (out / "report.md").read_text()
    assert "| ROUGE-L |" in markdown and "| Sign-off |" in markdown and "## Worst 5 answers: combined" in markdown
    page = (out / "report.html").read_text()
    assert "House style by rule" in page and 'id="worst-combined"' in page
    assert 'src="http' not in page and 'href="http' not in page, "self-contained: no external resources"
    assert page.count('src="data:image/png;base64,') == 1 and '<script id="data" type="application/json">' in page
    assert report["headline"] == data["headline"]
    # An answer cannot break out of the embedded JSON's script element.
    from eval.report import html_report

    hostile = json.loads(json.dumps(report))
    hostile["questions"][0]["systems"]["rag"]["answer"] = "</script><script>alert(1)</script>"
    assert "<script>alert(1)" not in html_report(hostile)

    # A second run answers from the cache: no generation at all, same numbers.
    from inference.engine import GenerationEngine

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached answers must be reused")

    monkeypatch.setattr(GenerationEngine, "generate", no_generation)
    again = run_evaluation(with_artifacts, EvalOptions(limit=10, out_dir=out))
    assert again["headline"] == report["headline"]


def test_missing_artifacts_are_reported_not_silently_skipped(eval_settings: Settings, tmp_path: Path) -> None:
    report = run_evaluation(eval_settings, EvalOptions(limit=3, out_dir=tmp_path / "r", systems=("prompt", "ft", "combined")))
    assert report["systems"]["prompt"]["status"] == "ok"
    assert "tunerag train generator" in report["systems"]["ft"]["reason"]
    assert "tunerag train embedder" in report["systems"]["combined"]["reason"]
    assert "Not evaluated" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(InvalidInputError, match="unknown system"):
        run_evaluation(eval_settings, EvalOptions(limit=3, systems=("oracle",)))


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium_without_console_errors(with_artifacts: Settings, tmp_path: Path) -> None:
    chromium = require_chromium("the HTML report browser test")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report"
    run_evaluation(with_artifacts, EvalOptions(limit=4, out_dir=out))
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto((out / "report.html").as_uri())
        cards = page.locator("#answers .card")
        assert cards.count() == 4
        assert [cards.nth(i).get_attribute("data-system") for i in range(4)] == ["prompt", "rag", "ft", "combined"]
        page.select_option("#q", "2")
        assert "eval-002" in page.locator("#q option:checked").inner_text()
        assert page.locator("#answers .card").count() == 4
        for name in ("prompt", "rag", "ft", "combined"):
            assert page.locator(f"#system-{name}").is_visible()
        assert page.locator("img").evaluate("img => img.naturalWidth") > 100
        browser.close()
    assert problems == []
