"""Two-sample drift tests between a reference and a window of served traffic, from maintained libraries.

- **Embeddings, novelty**: a split-conformal novelty test. scikit-learn's ``NearestNeighbors`` (cosine) gives
  each query's similarity to its nearest reference question; 5-fold cross-validation on the reference sets the
  similarity below which only ``novelty_quantile`` (5%) of unseen reference-like questions fall, and SciPy's
  exact binomial test says whether the window has more such novel queries than that. This asks the product's question (are users asking about things the
  artifacts never saw?) and does not alarm when the window is a narrower part of the reference.
- **Embeddings, separability** (reported, never an alarm by itself): a domain classifier (the model-based method
  evidently uses for embeddings), a logistic regression's cross-validated ROC AUC. Training questions and real
  users' questions differ in wording, so separability alone is not drift.
- **Top retrieval score**: SciPy's one-sided two-sample Kolmogorov-Smirnov test (the window's scores lower).
- **Refusal rate**: SciPy's exact binomial test of the window's refusals against the reference rate.

Drift is declared when the novelty, score or refusal test's p-value is at most ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DriftTests:
    alpha: float = 0.01
    auc_threshold: float = 0.6
    novelty_quantile: float = 0.05
    folds: int = 5
    seed: int = 0


def embedding_drift(reference: np.ndarray, window: np.ndarray, tests: DriftTests) -> dict[str, Any]:
    """Separability of window and reference queries: a logistic regression's cross-validated ROC AUC
    (scikit-learn). Reported, never an alarm by itself: 0.5 means indistinguishable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    rng = np.random.default_rng(tests.seed)
    # As many reference rows as window rows (at least): balanced classes, a bounded cost.
    take = min(len(reference), max(len(window), 50))
    ref = reference[rng.choice(len(reference), take, replace=False)]
    x = np.vstack([ref, window]).astype(np.float32)
    y = np.r_[np.zeros(len(ref)), np.ones(len(window))]
    folds = min(tests.folds, len(window), len(ref))
    auc = float(np.mean(cross_val_score(LogisticRegression(max_iter=200), x, y, scoring="roc_auc",
                                        cv=StratifiedKFold(folds, shuffle=True, random_state=tests.seed))))
    return {"method": "domain classifier: logistic regression, cross-validated ROC AUC (scikit-learn); reported only",
            "statistic": round(auc, 4), "p_value": None, "threshold": {"auc": tests.auc_threshold},
            "separable": bool(auc >= tests.auc_threshold), "drift": False}


def novelty_drift(reference: np.ndarray, window: np.ndarray, tests: DriftTests) -> dict[str, Any]:
    """Share of window queries whose nearest reference query is farther than all but ``novelty_quantile`` of the
    reference's own held-out queries are (a split-conformal threshold), against that share."""
    from scipy.stats import binomtest
    from sklearn.model_selection import KFold
    from sklearn.neighbors import NearestNeighbors

    def nearest(fit: np.ndarray, queries: np.ndarray) -> np.ndarray:
        distances, _ = NearestNeighbors(n_neighbors=1, metric="cosine").fit(fit).kneighbors(queries)
        return 1.0 - distances[:, 0]

    folds = KFold(min(5, len(reference)), shuffle=True, random_state=tests.seed)
    held_out = np.concatenate([nearest(reference[fit], reference[held]) for fit, held in folds.split(reference)])
    threshold = float(np.quantile(held_out, tests.novelty_quantile))
    novel = int((nearest(reference, window) < threshold).sum())
    result = binomtest(novel, len(window), tests.novelty_quantile, alternative="greater")
    return {"method": "nearest-reference cosine similarity below a conformal threshold (scikit-learn), binomial "
                      "test (SciPy)",
            "statistic": round(novel / len(window), 4), "expected_rate": tests.novelty_quantile,
            "similarity_threshold": round(threshold, 4), "p_value": round(float(result.pvalue), 6),
            "threshold": {"p_value": tests.alpha}, "drift": bool(result.pvalue <= tests.alpha)}


def score_drift(reference: np.ndarray, window: np.ndarray, tests: DriftTests) -> dict[str, Any]:
    """One-sided two-sample KS test: are the window's top dense retrieval scores lower than the reference's?"""
    from scipy.stats import ks_2samp

    # alternative="less": the reference's CDF lies below the window's somewhere, i.e. the window scores lower.
    result = ks_2samp(reference, window, alternative="less")
    return {"method": "two-sample Kolmogorov-Smirnov, one-sided: window scores lower (SciPy)", "statistic": round(float(result.statistic), 4),
            "p_value": round(float(result.pvalue), 6), "threshold": {"p_value": tests.alpha},
            "reference_median": round(float(np.median(reference)), 4), "window_median": round(float(np.median(window)), 4),
            "drift": bool(result.pvalue <= tests.alpha)}


def refusal_drift(reference_rate: float | None, refused: int, total: int, tests: DriftTests) -> dict[str, Any] | None:
    """Exact binomial test of the window's refusal count against the reference rate (None: no reference rate)."""
    if reference_rate is None or total == 0:
        return None
    from scipy.stats import binomtest

    rate = min(max(reference_rate, 1e-3), 1 - 1e-3)
    result = binomtest(refused, total, rate, alternative="greater")
    return {"method": "exact binomial test, refusals above the reference rate (SciPy)",
            "statistic": round(refused / total, 4), "reference_rate": round(reference_rate, 4),
            "p_value": round(float(result.pvalue), 6), "threshold": {"p_value": tests.alpha},
            "drift": bool(result.pvalue <= tests.alpha)}
