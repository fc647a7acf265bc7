"""The answerability verifier: do the retrieved passages answer the question?

A sentence-transformers ``CrossEncoder`` (one logit, sigmoid) scores each (question, passage) pair; the
context answers the question when its best passage does, so the context's score is the highest pair
score. Below the verifier's threshold the service refuses with the house-style refusal, before any
generation. The model, threshold and refusal come from a verifier artifact (``tunerag train verifier``);
training and serving format a pair with the same :func:`pair_text`.

Loading checks that the model folder's tokenizer is the one the artifact was trained with (a folder
swapped under an artifact would score with another vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

logger = logging.getLogger(__name__)

MODEL_DIR = "model"


def pair_text(title: str, text: str) -> str:
    """A passage as the verifier reads it (training and serving alike)."""
    return f"{title}\n{text}".strip()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id): what makes two tokenizers read text alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Answerability:
    """The verifier's judgement of one context: ``score`` against ``threshold``, by verifier ``verifier``."""

    score: float
    threshold: float
    verifier: str

    @property
    def answerable(self) -> bool:
        return self.score >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "threshold": round(self.threshold, 4), "verifier": self.verifier}


class Verifier:
    """A loaded verifier artifact. Build it with :meth:`load`; :meth:`judge` is thread-safe (inference only).

    Args:
        verifier_id: the artifact id (reported with every judgement).
        model: the ``CrossEncoder``.
        threshold: contexts scoring below it are refused.
        refusal: the reply when refusing.
    """

    def __init__(self, verifier_id: str, model: Any, threshold: float, refusal: str) -> None:
        self.id, self.model, self.threshold, self.refusal = verifier_id, model, threshold, refusal

    @classmethod
    def load(cls, path: Path, manifest: dict[str, Any], device: str = "cpu") -> Verifier:
        """Load the verifier artifact at ``path`` (its ``manifest.json`` already read into ``manifest``).

        Raises:
            ConfigError: the model folder is missing, or its tokenizer is not the one the artifact was trained
                with, or the manifest lacks the threshold or refusal.
        """
        from sentence_transformers.cross_encoder import CrossEncoder

        folder = path / MODEL_DIR
        if not folder.is_dir():
            raise ConfigError(f"verifier artifact {path.name} has no {MODEL_DIR}/ folder")
        for key in ("threshold", "refusal_answer", "tokenizer_fingerprint", "max_length"):
            if manifest.get(key) is None:
                raise ConfigError(f"verifier artifact {path.name}: manifest.json lacks {key!r}")
        model = CrossEncoder(str(folder), device=device, max_length=int(manifest["max_length"]))
        found = tokenizer_fingerprint(model.tokenizer)
        if found != manifest["tokenizer_fingerprint"]:
            raise ConfigError(f"verifier artifact {path.name}: its model's tokenizer ({found[:12]}) is not the one it "
                              f"was trained with ({str(manifest['tokenizer_fingerprint'])[:12]}); retrain it")
        return cls(path.name, model, float(manifest["threshold"]), str(manifest["refusal_answer"]))

    def pair_scores(self, question: str, passages: Sequence[str]) -> list[float]:
        """Probability that each passage answers ``question`` (passages already formatted by :func:`pair_text`)."""
        if not passages:
            return []
        scores = self.model.predict([(question, p) for p in passages], batch_size=max(1, len(passages)),
                                    show_progress_bar=False, convert_to_numpy=True)
        return [float(s) for s in scores]

    def score(self, question: str, passages: Sequence[str]) -> float:
        """The context's score: its best passage's (0.0 for no passages: nothing can answer)."""
        return max(self.pair_scores(question, passages), default=0.0)

    def judge(self, question: str, passages: Sequence[str]) -> Answerability:
        return Answerability(self.score(question, passages), self.threshold, self.id)
