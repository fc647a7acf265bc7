"""Non-English retrieval: CJK BM25 analysis, a multilingual embedder folder, and embedders never mixed.

The Japanese corpus under tests/data/ja_kb was written for these tests (six support articles).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import build_tiny_sentence_transformer

from core.errors import ConflictError
from core.settings import Settings
from retrieval import bm25, index_store
from retrieval.indexer import update_index
from retrieval.search import doc_ranking, open_retriever

JA_KB = Path(__file__).parent / "data" / "ja_kb"
# Paraphrased questions: none is a substring of its article.
JA_QUESTIONS = [
    ("返品用のラベルはどうやって作りますか？", "henpin-label"),
    ("領収書が欲しいのですが", "seikyusho"),
    ("パスワードを忘れてしまいました", "password-reset"),
    ("集荷をキャンセルできますか", "shuka-pickup"),
    ("解約したらデータは消えますか", "kaiyaku"),
    ("関税は誰が払うのですか", "kokusai-kanzei"),
]


def with_retrieval(settings: Settings, **update) -> Settings:
    return settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update=update)})


def bm25_top1(settings: Settings) -> list[str | None]:
    retriever = open_retriever(settings)
    return [next(iter(doc_ranking(r)), None)
            for r in retriever.search_many([q for q, _ in JA_QUESTIONS], k=3, mode="bm25")]


def test_analyzer_detection() -> None:
    assert bm25.detect_analyzer(["How do I void a label?", "Settings > Billing"]) == "words"
    assert bm25.detect_analyzer([p.read_text(encoding="utf-8") for p in JA_KB.iterdir()]) == "cjk_bigrams"
    assert bm25.detect_analyzer(["退货标签怎么打印？"]) == "cjk_bigrams"
    assert bm25.detect_analyzer(["", "1234"]) == "words"


def test_cjk_bigrams_keep_latin_words_and_split_cjk_runs() -> None:
    assert bm25.tokenize(["API キーを変更", "解"], "cjk_bigrams") == [["api", "キー", "ーを", "を変", "変更"], ["解"]]
    # The word analyzer sees a Japanese sentence as one token: what makes BM25 useless without bigrams.
    assert bm25.tokenize(["返品ラベルの作成"], "words") == [["返品ラベルの作成"]]


def test_japanese_corpus_is_searchable_with_bm25(settings: Settings) -> None:
    update_index(settings, [JA_KB])
    assert index_store.read_manifest(settings.paths.index_dir).bm25_analyzer == "cjk_bigrams"
    assert bm25_top1(settings) == [gold for _, gold in JA_QUESTIONS]

    # Forcing word tokens on the same corpus loses every question: the contrast the analyzer exists for.
    words = with_retrieval(settings, bm25_analyzer="words")
    update_index(words, [JA_KB], rebuild=True)
    assert index_store.read_manifest(settings.paths.index_dir).bm25_analyzer == "words"
    assert bm25_top1(words) == [None] * len(JA_QUESTIONS)


def test_queries_use_the_analyzer_the_index_was_built_with(settings: Settings) -> None:
    update_index(settings, [JA_KB])
    # The setting changed after the build; the stored analyzer still decides how queries are cut.
    assert bm25_top1(with_retrieval(settings, bm25_analyzer="words")) == [gold for _, gold in JA_QUESTIONS]


def test_a_multilingual_embedder_folder_indexes_japanese_and_is_never_mixed(settings: Settings, tmp_path: Path) -> None:
    """Any sentence-transformers folder (or hub id) is an embedder; here a tiny one whose vocabulary covers
    the Japanese corpus stands in for e.g. paraphrase-multilingual-MiniLM-L12-v2."""
    texts = [p.read_text(encoding="utf-8") for p in JA_KB.iterdir()]
    multilingual = build_tiny_sentence_transformer(tmp_path / "multilingual", seed=3, extra_texts=texts)
    ja = settings.model_copy(update={"models": settings.models.model_copy(update={"embedder": str(multilingual)})})
    update_index(ja, [JA_KB])
    retriever = open_retriever(ja)
    assert retriever.version.manifest.embedder_location == str(multilingual)
    # Its tokenizer knows the characters: distinct Japanese queries get distinct vectors (an English-only
    # vocabulary maps them all to [UNK]).
    vectors = retriever.embedder.encode([q for q, _ in JA_QUESTIONS[:2]])
    assert abs(vectors[0] - vectors[1]).sum() > 1e-3
    questions = [q for q, _ in JA_QUESTIONS]
    hybrid = retriever.search_many(questions, k=3, mode="hybrid")
    assert all(gold in doc_ranking(r) for r, (_, gold) in zip(hybrid, JA_QUESTIONS, strict=True))  # BM25 carries it

    # The English default embedder cannot add vectors to this index; a rebuild switches cleanly.
    with pytest.raises(ConflictError, match="cannot be mixed"):
        update_index(settings, [JA_KB])
    assert index_store.read_manifest(settings.paths.index_dir).embedder_location == str(multilingual)
    update_index(settings, [JA_KB], rebuild=True)
    assert index_store.read_manifest(settings.paths.index_dir).embedder_location == settings.models.embedder
