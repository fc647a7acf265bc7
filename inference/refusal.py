"""The refusal gate: an adapter's trained refusal is produced only when the model is sure of it.

Greedy decoding picks the single most likely token. After the greeting, an adapter's refusal is one token
("I" of "I couldn't find that ...") while its answers spread their probability over many first words, so
greedy starts the refusal whenever that one token outweighs each answer word alone, even when answering is
more likely than refusing overall. The gate decides between the two as classes: while the answer so far is
a prefix of the adapter's refusal, the refusal's next token is allowed only with probability of at least
``generation.refusal_min_prob`` (0.5: the refusal must be more likely than everything else together);
otherwise that token is masked and the model answers. The opening the refusal shares with the adapter's
grounded answers (the greeting) is never gated. Off by default (0): a masked refusal becomes an answer the
model was unsure of, so the gate trades missed refusals for fewer false ones (bench/RESULTS.md).

Training writes the refusal it taught and that opening into the adapter folder (:data:`REFUSAL_FILE`);
both generation engines read it when they load the adapter. The base model and adapters without the file
are never gated.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

REFUSAL_FILE = "tunerag-refusal.json"


@dataclass(frozen=True)
class RefusalGate:
    """The refusal's tokens (as the answer starts), how many of them it shares with the adapter's grounded
    answers (the greeting: ``opening``, never gated), and the probability each later one needs."""

    tokens: tuple[int, ...]
    min_prob: float
    opening: int = 0

    def blocked(self, generated: Sequence[int], logits: np.ndarray) -> int | None:
        """The token to mask at this step, or None: the answer so far is the refusal's first ``n`` tokens
        (``n`` at least ``opening``) and the refusal's next token has probability below ``min_prob`` under
        ``logits`` (one vocabulary row)."""
        n = len(generated)
        if n < self.opening or n >= len(self.tokens) or tuple(generated) != self.tokens[:n]:
            return None
        token = self.tokens[n]
        x = np.asarray(logits, dtype=np.float64)
        top = float(x.max())
        log_p = float(x[token]) - top - math.log(float(np.exp(x - top).sum()))
        return token if log_p < math.log(self.min_prob) else None


def shared_prefix(refusal: Sequence[int], answers: Iterable[Sequence[int]]) -> int:
    """How many leading tokens the refusal shares with the grounded answer that shares the most."""
    best = 0
    for answer in answers:
        n = 0
        while n < min(len(refusal), len(answer)) and refusal[n] == answer[n]:
            n += 1
        best = max(best, n)
    return best


def write_refusal(adapter_dir: Path, refusal: str | None, tokenizer: PreTrainedTokenizerBase,
                  answers: Iterable[str] = ()) -> None:
    """Record the refusal an adapter was trained to give and its opening (the part shared with the grounded
    ``answers``, e.g. the greeting), so serving gates only the tokens where refusing is decided. No file when
    the data had no refusal."""
    if not refusal:
        return
    tokens = _encode(tokenizer, refusal)
    shared = shared_prefix(tokens, (_encode(tokenizer, a) for a in answers))
    opening = tokenizer.decode(tokens[:shared]) if shared < len(tokens) else ""
    (adapter_dir / REFUSAL_FILE).write_text(json.dumps({"refusal_answer": refusal, "opening": opening},
                                                       ensure_ascii=False), encoding="utf-8")


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text.strip(), add_special_tokens=False).input_ids


def load_gate(adapter_dir: Path | str, tokenizer: PreTrainedTokenizerBase, min_prob: float) -> RefusalGate | None:
    """The gate for an adapter folder, or None (gate off, or no refusal recorded, or an unreadable file)."""
    path = Path(adapter_dir) / REFUSAL_FILE
    if min_prob <= 0 or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        refusal, opening = record["refusal_answer"], record.get("opening") or ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        refusal, opening = None, ""
    if not isinstance(refusal, str) or not refusal.strip() or not isinstance(opening, str):
        logger.warning("%s holds no refusal_answer string: the adapter's refusals are not gated", path)
        return None
    tokens = tuple(_encode(tokenizer, refusal))
    opening_ids = tuple(tokenizer(opening, add_special_tokens=False).input_ids) if opening else ()
    # An opening that does not tokenize as the refusal's start (another tokenizer): gate every token.
    return RefusalGate(tokens, min_prob, len(opening_ids) if tokens[: len(opening_ids)] == opening_ids else 0)
