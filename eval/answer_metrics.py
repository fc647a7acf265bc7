"""Per-answer metrics: correctness against the reference, groundedness, citations, refusals.

Every metric is a plain function of strings, so it is tested against hand-computed values.

* ``rouge_l``: ROUGE-L F-measure (Google's ``rouge-score``, stemming on).
* ``token_f1``: SQuAD-style bag-of-tokens F1 after lower-casing and removing punctuation and articles.
* ``embedding_similarity``: cosine of the embedder's normalised vectors (computed in batches by the runner).
* ``groundedness``: the share of the answer's content sentences that the context supports. A sentence
  is *supported* when at least ``threshold`` of its content words (lower-cased word tokens of 3+
  characters that are not stop words) occur in one single passage. A refusal makes no claims; greeting
  and sign-off are skipped, as are sentences with fewer than 3 content words (closing
  lines such as "Happy shipping!"); an answer with no content sentences is fully grounded.
  Defined only for systems that were given context.
* ``citation_validity``: the share of cited ``[doc-id]``s that were in the context (None: cites nothing).
* ``citation_hit``: cites at least one gold document (answerable questions only).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from eval.style import CITATION, StyleRules, is_refusal

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9][a-z0-9'$.,-]*[a-z0-9]|[a-z0-9]")
STOPWORDS = frozenset(
    ["about", "after", "all", "also", "and", "any", "are", "because", "been", "before", "but", "can", "cannot", "could", "did", "does", "doing", "each", "few", "for", "from", "further", "had", "has", "have", "having", "her", "here", "hers", "him", "his", "how", "into", "its", "itself", "just", "more", "most", "not", "now", "off", "once", "only", "other", "our", "ours", "out", "over", "own", "same", "she", "should", "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "too", "under", "until", "very", "was", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "just", "get", "got", "use", "used", "using", "can't", "don't", "won't", "it's", "i'm", "you're", "we're"]
)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def _normalize(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _normalize(prediction), _normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def content_words(text: str) -> set[str]:
    words = {w.strip(".,'") for w in _WORD.findall(text.lower())}
    return {w for w in words if len(w) >= 3 and w not in STOPWORDS}


def content_sentences(answer: str, rules: StyleRules) -> list[str]:
    """Sentences that make claims: none in a refusal; otherwise no greeting, sign-off or closing lines."""
    if is_refusal(answer, rules):
        return []
    text = CITATION.sub("", answer)
    out = []
    for sentence in _SENTENCE.split(text):
        s = sentence.strip().lstrip("0123456789. -").strip()
        if not s or s in (rules.greeting, rules.sign_off):
            continue
        if len(content_words(s)) < 3:  # closing lines: "Happy shipping!", "Anything else? Just reply here."
            continue
        out.append(s)
    return out


def sentence_support(sentence: str, passages: Sequence[str]) -> float:
    words = content_words(sentence)
    if not words:
        return 1.0
    return max((len(words & content_words(p)) / len(words) for p in passages), default=0.0)


def groundedness(answer: str, passages: Sequence[str], rules: StyleRules, threshold: float = 0.6) -> float:
    sentences = content_sentences(answer, rules)
    if not sentences:
        return 1.0
    return sum(sentence_support(s, passages) >= threshold for s in sentences) / len(sentences)


def cited_ids(answer: str) -> list[str]:
    return [m.group(0)[1:-1] for m in CITATION.finditer(answer)]


def citation_validity(answer: str, context_ids: Sequence[str]) -> float | None:
    cited = cited_ids(answer)
    if not cited:
        return None
    allowed = set(context_ids)
    return sum(c in allowed for c in cited) / len(cited)


def citation_hit(answer: str, gold_ids: Sequence[str]) -> float:
    return float(bool(set(cited_ids(answer)) & set(gold_ids)))
