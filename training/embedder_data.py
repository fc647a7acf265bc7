"""Training data for the embedder: (query, doc id) pairs from three sources, filtered, with hard negatives.

Sources (combinable, in this order of precedence on duplicates):
  * labelled pairs: JSONL with ``{"question", "doc_id"}`` per line, or an FAQ JSONL (``{"id", "question",
    "answer"}``), whose questions are labelled with their own entry;
  * chat training examples: every user turn of a chat that cites documents (``doc_ids``);
  * synthetic queries written for each chunk by the local generator (the idea of LlamaIndex's
    ``generate_qa_embedding_pairs``), cached per chunk so reruns cost nothing;
  * inverse-cloze pairs from the corpus itself: a sentence of a chunk is the query, the rest of the chunk
    its positive (Lee et al. 2019); no generator needed.

Filtering drops duplicate queries and queries that leak their passage verbatim (a long run of the
passage's words), which would teach the model string matching instead of meaning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core.errors import InvalidInputError
from core.jsonl import read_jsonl
from core.prompt import render_prompt
from core.settings import GenerationSettings
from inference.generation import generate
from retrieval.documents import Chunk, content_hash

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PairSource = Literal["labelled", "chat", "synthetic", "corpus"]
_WORD = re.compile(r"\w+")

SYNTHETIC_INSTRUCTION = (
    "Write one short question that a customer of this company could ask and that the help-center passage "
    "below answers. Use your own words; do not copy sentences from the passage. Reply with the question only."
)


@dataclass(frozen=True)
class QueryPair:
    query: str
    doc_id: str
    source: PairSource
    positive: str | None = None  # the positive text; None: the gold document's best-matching chunk


def pairs_from_labelled(path: Path) -> list[QueryPair]:
    """``{"question"|"query", "doc_id"}`` lines, or FAQ lines ``{"id", "question"}`` (the entry is its doc)."""
    pairs = []
    for n, row in read_jsonl(path):
        query = str(row.get("question") or row.get("query") or "").strip()
        doc_id = str(row.get("doc_id") or row.get("id") or "").strip()
        if not query or not doc_id:
            raise InvalidInputError(f"{path}:{n}: a labelled pair needs 'question' and 'doc_id' (or FAQ 'id')")
        pairs.append(QueryPair(query, doc_id, "labelled"))
    return pairs


def pairs_from_chats(path: Path) -> list[QueryPair]:
    """Each user turn of a chat with exactly one cited document, paired with that document."""
    pairs = []
    for n, row in read_jsonl(path):
        doc_ids = row.get("doc_ids") or []
        if not isinstance(row.get("messages"), list):
            raise InvalidInputError(f"{path}:{n}: a chat needs a 'messages' list")
        if len(doc_ids) != 1:
            continue  # refusals cite nothing; multi-document answers have no single positive
        for message in row["messages"]:
            if message.get("role") == "user" and str(message.get("content", "")).strip():
                pairs.append(QueryPair(message["content"].strip(), str(doc_ids[0]), "chat"))
    return pairs


def _clean_question(text: str) -> str | None:
    """The first question in a generation, without labels, quotes or a lead-in such as 'A user might ask:'."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    if "?" not in line:
        return None
    line = line[: line.index("?") + 1]
    if '"' in line:  # 'The answer would be: "How do I ...?' -> the quoted question
        line = line[line.rindex('"', 0, len(line) - 1) + 1 :] if line.count('"') else line
    line = re.sub(r"^(question|q)\s*[:\-]\s*", "", line.strip(), flags=re.IGNORECASE).strip().strip('"').strip()
    return line if len(_WORD.findall(line)) >= 3 else None


def synthetic_pairs(
    chunks: Sequence[Chunk],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generation: GenerationSettings,
    cache_file: Path,
    *,
    per_chunk: int = 1,
) -> list[QueryPair]:
    """One or more generated questions per chunk; answers are cached in ``cache_file`` by chunk text hash."""
    cache: dict[str, list[str]] = {}
    if cache_file.is_file():
        cache = json.loads(cache_file.read_text())
    todo = [c for c in chunks if len(cache.get(content_hash(c.embedding_text()), [])) < per_chunk]
    if todo:
        logger.info("generating synthetic queries for %d chunks (%d cached)", len(todo), len(chunks) - len(todo))
        prompts, keys = [], []
        for chunk in todo:
            messages = [{"role": "system", "content": SYNTHETIC_INSTRUCTION},
                        {"role": "user", "content": f"Passage ({chunk.title}):\n{chunk.text}"}]
            for _ in range(per_chunk):
                prompts.append(render_prompt(tokenizer, messages))
                keys.append(content_hash(chunk.embedding_text()))
        # Several questions per chunk need sampling; one question is greedy (deterministic).
        temperature = 0.7 if per_chunk > 1 else 0.0
        from tqdm.auto import tqdm

        outputs = []
        step = generation.batch_size
        for start in tqdm(range(0, len(prompts), step), desc="synthetic queries", unit="batch"):
            outputs += generate(model, tokenizer, prompts[start : start + step], generation,
                                max_new_tokens=40, temperature=temperature)
        for key, out in zip(keys, outputs, strict=True):
            cache.setdefault(key, []).append(out.text)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    pairs = []
    for chunk in chunks:
        for raw in cache.get(content_hash(chunk.embedding_text()), [])[:per_chunk]:
            question = _clean_question(raw)
            if question:
                pairs.append(QueryPair(question, chunk.doc_id, "synthetic"))
    return pairs


_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def corpus_pairs(chunks: Sequence[Chunk], *, per_chunk: int, seed: int, min_words: int = 5) -> list[QueryPair]:
    """Inverse-cloze pairs: up to ``per_chunk`` sentences of each chunk (of at least ``min_words`` words, and
    never a chunk's only sentence) as queries; the positive is the chunk (title included) without that sentence."""
    import random

    rng = random.Random(seed)
    pairs = []
    for chunk in chunks:
        sentences = [s.strip() for s in _SENTENCE.split(chunk.text) if s.strip()]
        usable = [s for s in sentences if len(_WORD.findall(s)) >= min_words or (len(s) >= 12 and not s.isascii())]
        if len(sentences) < 2 or not usable:
            continue
        for sentence in rng.sample(usable, min(per_chunk, len(usable))):
            rest = replace(chunk, text=chunk.text.replace(sentence, " ").strip())
            pairs.append(QueryPair(sentence, chunk.doc_id, "corpus", positive=rest.embedding_text()))
    return pairs


def _longest_common_run(a: list[str], b: list[str]) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def leaks_passage(query: str, passage: str, *, min_run: int = 6, max_share: float = 0.6) -> bool:
    """True when the query repeats a long run of the passage's words verbatim.

    A run of ``min_run`` words, or of ``max_share`` of the query's words (for short queries), counts.
    """
    q = [w.lower() for w in _WORD.findall(query)]
    p = [w.lower() for w in _WORD.findall(passage)]
    if not q:
        return True
    run = _longest_common_run(q, p)
    return run >= min_run or (len(q) >= 4 and run / len(q) >= max_share and run >= 4)


def normalize_query(query: str) -> str:
    return " ".join(w.lower() for w in _WORD.findall(query))


_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "if", "in", "is", "it", "my", "of", "on", "or", "our", "the", "this", "to", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your", "we", "us", "me"]
)


def on_topic(query: str, passages: Sequence[str]) -> bool:
    """A generated question must share at least one content word with its document."""
    words = {w for w in normalize_query(query).split() if w not in _STOPWORDS and len(w) > 2}
    text = set(normalize_query(" ".join(passages)).split())
    return bool(words & text)


@dataclass
class FilterReport:
    kept: int = 0
    duplicates: int = 0
    leaks: int = 0
    off_topic: int = 0
    unknown_doc: int = 0


def filter_pairs(pairs: Sequence[QueryPair], chunks_by_doc: dict[str, list[Chunk]]) -> tuple[list[QueryPair], FilterReport]:
    """Drop pairs whose doc is unknown, exact/normalised duplicates, and synthetic queries that leak their
    passage verbatim or share no content word with their document.

    Labelled and chat pairs come first in ``pairs`` by convention, so a synthetic duplicate of a human
    question is the one dropped. Leak filtering applies to synthetic queries only: a customer's own
    words are never discarded.
    """
    report = FilterReport()
    seen: set[str] = set()
    kept = []
    for pair in pairs:
        if pair.doc_id not in chunks_by_doc:
            report.unknown_doc += 1
            continue
        key = normalize_query(pair.query)
        if key in seen:
            report.duplicates += 1
            continue
        if pair.source == "synthetic":
            passages = [c.text for c in chunks_by_doc[pair.doc_id]]
            if any(leaks_passage(pair.query, p) for p in passages):
                report.leaks += 1
                continue
            if not on_topic(pair.query, passages):
                report.off_topic += 1
                continue
        seen.add(key)
        kept.append(pair)
    report.kept = len(kept)
    return kept, report


def best_chunk(query: str, chunks: Sequence[Chunk]) -> Chunk:
    """The chunk of the gold document sharing the most words with the query (lexical, model-free)."""
    q = set(normalize_query(query).split())
    return max(chunks, key=lambda c: (len(q & set(normalize_query(c.embedding_text()).split())), -c.position))


def to_dataset(pairs: Sequence[QueryPair], chunks_by_doc: dict[str, list[Chunk]], *,
               doc_texts: Mapping[str, str] | None = None, positive: str = "chunk") -> Dataset:
    """(anchor, positive, doc_id) rows. The positive is the pair's own text when it has one, else:
    ``chunk``: the best-matching chunk of the gold document; ``document``: the document's own embedded text
    (what its document vector holds); ``both``: one row of each (one row when the document is one chunk)."""
    from datasets import Dataset

    if positive != "chunk" and doc_texts is None:
        raise ValueError(f"positive={positive!r} needs the documents' texts")
    rows = []
    for p in pairs:
        if p.positive:
            rows.append({"anchor": p.query, "doc_id": p.doc_id, "positive": p.positive})
            continue
        texts = []
        if positive in ("chunk", "both"):
            texts.append(best_chunk(p.query, chunks_by_doc[p.doc_id]).embedding_text())
        if positive == "document" or (positive == "both" and len(chunks_by_doc[p.doc_id]) > 1):
            texts.append(doc_texts[p.doc_id])
        rows += [{"anchor": p.query, "doc_id": p.doc_id, "positive": t} for t in texts]
    return Dataset.from_list(rows)


def add_hard_negatives(
    dataset: Dataset,
    model: SentenceTransformer,
    chunks: Sequence[Chunk],
    *,
    num_negatives: int,
    margin: float,
) -> Dataset:
    """Mine negatives with sentence-transformers' ``mine_hard_negatives`` and drop any from the gold document.

    ``absolute_margin`` keeps only candidates scoring at least ``margin`` below the positive, so
    near-duplicates of the positive are not used as negatives. Rows left with fewer than
    ``num_negatives`` valid negatives are dropped. Output columns: anchor, positive, negative_1..N.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    corpus = [c.embedding_text() for c in chunks]
    doc_of = {c.embedding_text(): c.doc_id for c in chunks}
    mined = mine_hard_negatives(
        dataset.select_columns(["anchor", "positive"]), model, corpus=corpus,
        num_negatives=num_negatives + 8, absolute_margin=margin, sampling_strategy="top",
        output_format="n-tuple", batch_size=64, verbose=False,
    )
    # Sibling chunks of the gold document rank high, hence the 8 spare candidates that are filtered out below.
    # mine_hard_negatives drops rows it found no candidates for; match rows back by (anchor, positive).
    gold = {(r["anchor"], r["positive"]): r["doc_id"] for r in dataset}
    rows = []
    for row in mined:
        doc_id = gold[(row["anchor"], row["positive"])]
        negatives = [row[k] for k in row if k.startswith("negative")]
        negatives = [n for n in negatives if doc_of.get(n) != doc_id and n != row["positive"]][:num_negatives]
        if len(negatives) == num_negatives:
            rows.append({"anchor": row["anchor"], "positive": row["positive"],
                         **{f"negative_{i + 1}": n for i, n in enumerate(negatives)}})
    logger.info("hard negatives: %d of %d rows kept with %d negatives each", len(rows), len(dataset), num_negatives)
    return Dataset.from_list(rows)


def pairs_to_json(pairs: Sequence[QueryPair]) -> list[dict]:
    return [asdict(p) for p in pairs]
