"""`tunerag data build`: a team's documents, FAQ export and style file into the recipes' files; bad input is a
line-numbered report, a non-zero exit, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import run_cli

from core.errors import InvalidInputError
from core.jsonl import read_jsonl
from core.settings import SAMPLE_DIR, load_settings
from onboarding.build import build_data, faq_doc_id
from retrieval.indexer import update_index
from retrieval.search import open_retriever

STYLE = """company: Acme Bikes, a bicycle shop
greeting: Hello!
sign_off: "— Acme Support"
word_limit: 90
refusal: I could not find that in our guides. A mechanic will reply by email.
"""


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    docs = tmp_path / "docs"
    docs.mkdir()
    team = sorted((SAMPLE_DIR / "kb").glob("*.md"))[:3]
    for f in team:
        shutil.copy(f, docs / f.name)
    rows = [("How do I pump a tubeless tyre?", "Use a floor pump with a booster chamber; seat the bead first.", ""),
            ("What chain lube do you recommend?", "A dry lube in summer and a wet lube in winter.", ""),
            ("Do you service e-bikes?", "Yes, every model we sell, in two working days.", ""),
            ("How often should I replace brake pads?", "When the pad is thinner than 1.5 mm.", ""),
            ("Can I return a helmet?", "Unworn helmets within 30 days with the receipt.", ""),
            ("Do you ship abroad?", "Within the EU, in 3-5 working days.", ""),
            ("What tyre pressure for gravel?", "Between 30 and 45 psi, depending on your weight.", ""),
            ("Is assembly included?", "Yes, and a free check-up after 100 km.", ""),
            ("How do I book a repair?", "Online, or call the shop.", ""),
            ("Do you sell kids' bikes?", "From 12 inch wheels upward.", ""),
            (f"What does {team[0].stem} say?", "See the guide.", team[0].stem),
            ("Where is the help for the first guide?", "In the guide.", team[0].stem)]
    faq = tmp_path / "faq.csv"
    faq.write_text("question,answer,doc_id\n" + "".join(f'"{q}","{a}",{d}\n' for q, a, d in rows), encoding="utf-8")
    style = tmp_path / "style.yaml"
    style.write_text(STYLE)
    return docs, faq, style


def test_build_writes_styled_chats_pairs_a_heldout_set_and_a_config(inputs, tmp_path: Path,
                                                                     tiny_embedder_dir: Path) -> None:
    docs, faq, style = inputs
    out = tmp_path / "acme"
    card = build_data(docs, faq, style, out, seed=3)
    c = card["counts"]
    assert c["faq_entries"] == 12 and c["train"] + c["heldout_answerable"] + c["heldout_unanswerable"] == 12
    assert c["heldout_unanswerable"] >= 1 and c["team_documents"] == 3
    chats = [row for _, row in read_jsonl(out / "chat_train.jsonl")]
    for chat in chats:
        answer = chat["messages"][-1]["content"].splitlines()
        assert answer[0] == "Hello!" and answer[-1] == "— Acme Support"
        assert f"[{chat['doc_ids'][0]}]" in chat["messages"][-1]["content"]
    assert "Acme Bikes" in (out / "system_prompt.txt").read_text()
    heldout = [row for _, row in read_jsonl(out / "eval.jsonl")]
    unanswerable = [h for h in heldout if not h["answerable"]]
    assert unanswerable and all("could not find" in h["reference_answer"] for h in unanswerable)
    assert faq_doc_id("Do you ship abroad?") == faq_doc_id("Do you ship abroad?")  # stable ids

    # The written config drives the index: every gold id exists in it, the unanswerable ones do not.
    settings = load_settings(out / "tunerag.yaml", models={"embedder": str(tiny_embedder_dir)})
    assert settings.paths.data_dir == (out / "var").resolve()
    assert settings.eval.style_sign_off == "— Acme Support" and settings.eval.refusal_phrase == "i could not find that in our guides"
    update_index(settings)
    indexed = set(open_retriever(settings).version.manifest.documents)
    gold = {d for h in heldout for d in h["gold_doc_ids"]} | {d for chat in chats for d in chat["doc_ids"]}
    assert gold <= indexed
    assert all(faq_doc_id(h["question"]) not in indexed for h in unanswerable)  # left out: honestly unanswerable
    pairs = [row for _, row in read_jsonl(out / "train_pairs.jsonl")]
    assert len(pairs) == c["train"] and all(p["doc_id"] in indexed for p in pairs)


@pytest.mark.parametrize("content, message", [
    ("question,text\nq,a\n", "faq.csv:1: missing column(s) ['answer']"),
    ('question,answer\n"q1","a1"\n"q2",""\n"q3","a3"\n', "faq.csv:3: empty answer"),
    ('question,answer\n"Same?","one"\n"same? ","two"\n"q3","a"\n"q4","b"\n', "faq.csv:3: the question of line 2 again"),
    (b'question,answer\n"q1","caf\xe9"\n', "faq.csv:2: not UTF-8"),
])
def test_bad_faq_files_get_a_line_numbered_report_and_nothing_is_written(inputs, tmp_path: Path, content, message) -> None:
    docs, _, style = inputs
    faq = tmp_path / "faq.csv"
    faq.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    result = run_cli("data", "build", "--docs", str(docs), "--faq", str(faq), "--style", str(style), "--out", str(out))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]  # no staging left behind


def test_conflicting_questions_can_keep_the_first_and_are_listed(inputs, tmp_path: Path) -> None:
    docs, faq, style = inputs
    faq.write_text(faq.read_text(encoding="utf-8") + '"Do you ship abroad?","Only to Norway.",\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="faq.csv:14: the question of line 7 again"):
        build_data(docs, faq, style, tmp_path / "strict")
    card = build_data(docs, faq, style, tmp_path / "kept", on_conflict="keep-first")
    assert card["counts"]["conflicts_dropped"] == 1 and "faq.csv:14" in card["conflicts_dropped"][0]


def test_size_limit_style_errors_and_an_existing_folder(inputs, tmp_path: Path) -> None:
    docs, faq, style = inputs
    with pytest.raises(InvalidInputError, match="over the 100-byte limit"):
        build_data(docs, faq, style, tmp_path / "a", max_faq_bytes=100)
    bad_style = tmp_path / "bad.yaml"
    bad_style.write_text("company: X\nword_limit: 3\n")
    with pytest.raises(InvalidInputError, match="sign_off"):
        build_data(docs, faq, bad_style, tmp_path / "b")
    out = tmp_path / "c"
    build_data(docs, faq, style, out)
    with pytest.raises(InvalidInputError, match="not empty"):
        build_data(docs, faq, style, out)
    before = json.loads((out / "card.json").read_text())
    assert build_data(docs, faq, style, out, force=True) == before  # deterministic for one seed



def test_the_sample_domain_builds_from_its_articles_faq_style_and_unanswered_questions(tmp_path: Path) -> None:
    """The demo's path: the sample's help center, FAQ export, style file and escalated questions, no facts table.
    Every training answer passes the evaluation's own style check, every gold id is an article, no phrasing
    of a held-out answer is trained, and refusals are both trained and held out."""
    from eval.style import StyleRules, check_style, is_refusal

    given = SAMPLE_DIR / "onboarding"
    out = tmp_path / "sample"
    result = run_cli("data", "build", "--docs", str(SAMPLE_DIR / "kb"), "--faq", str(given / "faq.jsonl"),
                     "--style", str(given / "style.yaml"), "--unanswered", str(given / "unanswered.txt"),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    c = json.loads((out / "card.json").read_text())["counts"]
    assert c["team_documents"] == 46 and c["faq_documents"] == 0  # every FAQ answer names its article
    assert c["train_refusals"] >= 20 and c["heldout_unanswerable"] >= 10 and c["heldout_answerable"] >= 50
    settings = load_settings(out / "tunerag.yaml")
    rules = StyleRules.from_settings(settings.eval)
    chats = [row for _, row in read_jsonl(out / "chat_train.jsonl")]
    heldout = [row for _, row in read_jsonl(out / "eval.jsonl")]
    articles = {p.stem for p in (SAMPLE_DIR / "kb").iterdir()}
    assert {d for h in heldout for d in h["gold_doc_ids"]} | {d for ch in chats for d in ch["doc_ids"]} <= articles
    for chat in chats:
        answer = chat["messages"][-1]["content"]
        assert check_style(answer, rules)["adheres"], answer
        assert is_refusal(answer, rules) == (not chat["doc_ids"])
    trained = {chat["messages"][-1]["content"] for chat in chats}
    assert not [h for h in heldout if h["answerable"] and h["reference_answer"] in trained]
    assert sum(not h["answerable"] for h in heldout) == c["heldout_unanswerable"]
    asked = {chat["messages"][1]["content"].lower() for chat in chats}
    assert not [h for h in heldout if h["question"].lower() in asked]


def test_an_unanswered_question_the_faq_answers_is_refused_with_its_line(inputs, tmp_path: Path) -> None:
    docs, faq, style = inputs
    unanswered = tmp_path / "unanswered.txt"
    unanswered.write_text("# escalated\nCan I pay in bitcoin?\n\ndo you ship ABROAD?\n")
    out = tmp_path / "out"
    result = run_cli("data", "build", "--docs", str(docs), "--faq", str(faq), "--style", str(style),
                     "--unanswered", str(unanswered), "--out", str(out))
    assert result.returncode == 1 and "unanswered.txt:4: the FAQ answers this question (FAQ line 7)" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    unanswered.write_text("Can I pay in bitcoin?\nCan I pay in bitcoin?\nDo you rent bikes?\nIs there parking?\n")
    card = build_data(docs, faq, style, out, unanswered_file=unanswered)
    assert card["counts"]["train_refusals"] + card["counts"]["heldout_unanswerable"] >= 3  # the repeat counts once
    refusals = [row for _, row in read_jsonl(out / "chat_train.jsonl") if not row["doc_ids"]]
    assert refusals and all(r["messages"][-1]["content"].splitlines()[2].startswith("I could not find") for r in refusals)
