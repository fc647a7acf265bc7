"""The drift monitor a server keeps: a reference from the artifacts' questions, a bounded window of served traffic,
and the tests of :mod:`monitoring.drift` run every ``check_every`` observations.

Only numbers are kept: each observation is a query embedding, its top retrieval score, whether the answer was a
refusal; feedback is counted. The window holds at most ``window_size`` observations and the history at most
``history_size`` check summaries; no query text is stored anywhere.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.jsonl import read_jsonl
from core.settings import MonitoringSettings, Settings
from monitoring.drift import DriftTests, embedding_drift, novelty_drift, refusal_drift, score_drift

HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class Reference:
    """What the artifacts were built on: query embeddings, their top scores, the expected refusal rate."""

    vectors: np.ndarray
    top_scores: np.ndarray
    refusal_rate: float | None
    sources: dict[str, int]
    index_version: str
    embedder_id: str

    def summary(self) -> dict[str, Any]:
        return {"queries": len(self.vectors), "sources": self.sources, "index_version": self.index_version,
                "embedder": self.embedder_id, "refusal_rate": self.refusal_rate,
                "top_score_median": round(float(np.median(self.top_scores)), 4) if len(self.top_scores) else None,
                "top_score_histogram": np.histogram(self.top_scores, HISTOGRAM_BINS)[0].tolist()}


def reference_questions(settings: Settings, chat_files: Sequence[Any]) -> tuple[list[str], float | None, dict[str, int]]:
    """The training chats' user questions and the eval set's questions, with the eval set's unanswerable share."""
    questions: list[str] = []
    sources: dict[str, int] = {}
    for path in chat_files:
        before = len(questions)
        for _, row in read_jsonl(path):
            users = [m["content"] for m in row.get("messages", []) if m.get("role") == "user"]
            questions += users[:1]
        sources[str(path)] = len(questions) - before
    refusal_rate = None
    if settings.eval.eval_file.is_file():
        items = [row for _, row in read_jsonl(settings.eval.eval_file)]
        questions += [item["question"] for item in items]
        sources[str(settings.eval.eval_file)] = len(items)
        if items:
            refusal_rate = sum(1 for item in items if not item.get("answerable", True)) / len(items)
    return [q for q in questions if q.strip()], refusal_rate, sources


def build_reference(settings: Settings, retriever: Any, chat_files: Sequence[Any], max_queries: int) -> Reference:
    questions, refusal_rate, sources = reference_questions(settings, chat_files)
    if len(questions) > max_queries:
        keep = np.random.default_rng(0).choice(len(questions), max_queries, replace=False)
        questions = [questions[i] for i in sorted(keep)]
    vectors, scores = retriever.embed_and_top_score(questions) if questions else (np.zeros((0, 1)), np.zeros(0))
    return Reference(vectors.astype(np.float32), scores, refusal_rate, sources, retriever.version.name,
                     retriever.version.manifest.embedder_id)


@dataclass
class DriftMonitor:
    reference: Reference
    config: MonitoringSettings
    _vectors: deque = field(init=False)
    _scores: deque = field(init=False)
    _refused: deque = field(init=False)
    _feedback: deque = field(init=False)
    _history: deque = field(init=False)
    _last: dict[str, Any] | None = field(init=False, default=None)
    _since_check: int = field(init=False, default=0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    observed: int = field(init=False, default=0)
    # Observations fully processed (their check included): what status reports.
    completed: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        size = self.config.window_size
        self._vectors, self._scores, self._refused = deque(maxlen=size), deque(maxlen=size), deque(maxlen=size)
        self._feedback = deque(maxlen=size)
        self._history = deque(maxlen=self.config.history_size)

    @property
    def tests(self) -> DriftTests:
        c = self.config
        return DriftTests(alpha=c.alpha, auc_threshold=c.auc_threshold,
                          novelty_quantile=c.novelty_quantile)

    def observe(self, vector: np.ndarray, top_score: float, refused: bool) -> dict[str, Any] | None:
        """Add one served query; runs the checks (in the caller's thread) when ``check_every`` are due and
        returns their summary, else None."""
        with self._lock:
            self._vectors.append(np.asarray(vector, dtype=np.float32))
            self._scores.append(float(top_score))
            self._refused.append(bool(refused))
            self.observed += 1
            self._since_check += 1
            due = self._since_check >= self.config.check_every and len(self._vectors) >= self.config.min_window
            if due:
                self._since_check = 0
        summary = self.check() if due else None
        with self._lock:
            self.completed += 1
        return summary

    def adopt_window(self, other: DriftMonitor) -> None:
        """Keep ``other``'s window and history (a new reference on the same embedder: vectors comparable)."""
        with other._lock:
            for mine, theirs in ((self._vectors, other._vectors), (self._scores, other._scores),
                                 (self._refused, other._refused), (self._feedback, other._feedback),
                                 (self._history, other._history)):
                mine.extend(theirs)
            self.observed, self.completed, self._last = other.observed, other.completed, other._last

    def feedback(self, rating: str) -> None:
        with self._lock:
            self._feedback.append(rating)

    def check(self) -> dict[str, Any]:
        """Run the tests on the current window (a copy) and record the summary in the history."""
        with self._lock:
            vectors = np.vstack(self._vectors) if self._vectors else np.zeros((0, 1), np.float32)
            scores, refused = np.asarray(self._scores), list(self._refused)
            observed = self.observed
        ref = self.reference
        tests: dict[str, Any] = {}
        if len(vectors) >= 5 and len(ref.vectors) >= 5:
            tests["embedding_novelty"] = novelty_drift(ref.vectors, vectors, self.tests)
            tests["embedding_classifier"] = embedding_drift(ref.vectors, vectors, self.tests)
            tests["top_score_ks"] = score_drift(ref.top_scores, scores, self.tests)
        refusals = refusal_drift(ref.refusal_rate, sum(refused), len(refused), self.tests)
        if refusals:
            tests["refusal_rate"] = refusals
        summary = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "observed": observed,
                   "window": len(vectors), "tests": tests, "drift": any(t["drift"] for t in tests.values()),
                   "top_score_histogram": np.histogram(scores, HISTOGRAM_BINS)[0].tolist()}
        with self._lock:
            self._history.append(summary)
            self._last = summary
        return summary

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/monitoring`` returns: numbers only."""
        with self._lock:
            scores, refused, ratings = np.asarray(self._scores), list(self._refused), list(self._feedback)
            last, history = self._last, list(self._history)
        window = {"size": len(scores), "capacity": self.config.window_size, "observed_total": self.completed,
                  "refusal_rate": round(sum(refused) / len(refused), 4) if refused else None,
                  "feedback": {"up": ratings.count("up"), "down": ratings.count("down")},
                  "top_score_median": round(float(np.median(scores)), 4) if len(scores) else None,
                  "top_score_histogram": np.histogram(scores, HISTOGRAM_BINS)[0].tolist()}
        return {"reference": self.reference.summary(), "window": window,
                "check_every": self.config.check_every, "min_window": self.config.min_window,
                "last_check": last, "drift_detected": bool(last and last["drift"]),
                "histogram_bins": HISTOGRAM_BINS.round(3).tolist(),
                "history": [{k: v for k, v in h.items()} for h in history]}
