"""BM25 text analysis and index building (bm25s), for space-separated and for CJK languages.

Two analyzers, chosen per index and stored in its manifest so queries are tokenized the way the corpus was:

* ``words``: bm25s' own tokenizer (lower-cased ``\\w\\w+`` tokens, English stop words removed);
* ``cjk_bigrams``: Chinese, Japanese and Korean text has no spaces, so a sentence would be one "word";
  every run of CJK characters becomes its overlapping character bigrams (a lone character stays a
  unigram), the analyzer Lucene/Elasticsearch ship as ``cjk``; other runs are words as above. No
  dictionary, no extra wheel.

``auto`` (the default setting) picks ``cjk_bigrams`` when CJK characters make up at least
``CJK_SHARE`` of the corpus's letters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import bm25s

Analyzer = Literal["words", "cjk_bigrams"]
CJK_SHARE = 0.2

# Hiragana, katakana, CJK ideographs (+ extension A, compatibility), Hangul syllables, half-width katakana.
_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff66-\uff9f"
_CJK_CHAR = re.compile(f"[{_CJK_CLASS}]")
_RUN = re.compile(f"[{_CJK_CLASS}]+|[^\\W{_CJK_CLASS}]{{2,}}")
_LETTER = re.compile(r"[^\W\d_]")


def detect_analyzer(texts: Iterable[str]) -> Analyzer:
    """``cjk_bigrams`` when CJK characters are at least ``CJK_SHARE`` of the letters in ``texts``."""
    letters = cjk = 0
    for text in texts:
        letters += len(_LETTER.findall(text))
        cjk += len(_CJK_CHAR.findall(text))
    return "cjk_bigrams" if letters and cjk / letters >= CJK_SHARE else "words"


def _cjk_tokens(text: str, stopwords: frozenset[str]) -> list[str]:
    tokens: list[str] = []
    for run in _RUN.findall(text.lower()):
        if _CJK_CHAR.match(run):
            tokens += [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]
        elif run not in stopwords:
            tokens.append(run)
    return tokens


def tokenize(texts: Sequence[str], analyzer: Analyzer) -> list[list[str]]:
    """Token lists for ``texts`` (corpus or queries) under ``analyzer``."""
    import bm25s
    from bm25s.stopwords import STOPWORDS_EN

    if analyzer == "cjk_bigrams":
        stopwords = frozenset(STOPWORDS_EN)
        return [_cjk_tokens(t, stopwords) for t in texts]
    return [list(tokens) for tokens in
            bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)]


def build_index(texts: Sequence[str], analyzer: Analyzer) -> bm25s.BM25:
    """A bm25s index over ``texts`` (row i is text i)."""
    import bm25s

    index = bm25s.BM25()
    index.index(tokenize(texts, analyzer), show_progress=False)
    return index
