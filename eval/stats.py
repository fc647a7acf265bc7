"""Statistics for the report: bootstrap confidence intervals and paired tests between systems.

* ``bootstrap_ci``: mean with a 95% percentile-bootstrap interval (resampling questions).
* ``holm_adjust``: Holm-Bonferroni correction over all the comparisons in one report.
* ``paired_test``: for two systems scored on the same questions, the mean difference, its 95% bootstrap
  interval, and a two-sided sign-flip permutation p-value (under H0 each paired difference is as likely
  negative as positive). Both are seeded, so a report is reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def _json_number(value: object) -> object:
    """Rounded floats; NaN (no data) becomes None so reports stay valid, diffable JSON."""
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 4)
    return value


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | None]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PairedResult:
    a: str
    b: str
    metric: str
    mean_difference: float
    low: float
    high: float
    p_value: float
    n: int

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def to_json(self) -> dict[str, object]:
        out = {k: _json_number(v) for k, v in asdict(self).items()}
        out["significant"] = self.significant
        return out


def bootstrap_ci(values: Sequence[float], *, samples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean and percentile-bootstrap interval of ``values`` (NaNs dropped)."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return Interval(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), len(x))


def paired_test(a: Sequence[float | None], b: Sequence[float | None], *, name_a: str, name_b: str, metric: str,
                samples: int = 2000, seed: int = 0) -> PairedResult:
    """Compare ``a`` and ``b`` (same questions, same order); pairs with a missing value are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b, strict=True)
             if x is not None and y is not None and not np.isnan(x) and not np.isnan(y)]
    if not pairs:
        return PairedResult(name_a, name_b, metric, float("nan"), float("nan"), float("nan"), float("nan"), 0)
    d = np.asarray([x - y for x, y in pairs], dtype=float)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    observed = abs(d.mean())
    signs = rng.choice((-1.0, 1.0), size=(samples, len(d)))
    permuted = np.abs((signs * d).mean(axis=1))
    p_value = float((np.sum(permuted >= observed - 1e-12) + 1) / (samples + 1))
    return PairedResult(name_a, name_b, metric, float(d.mean()), float(np.quantile(boot, 0.025)),
                        float(np.quantile(boot, 0.975)), min(1.0, p_value), len(d))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control across all comparisons of a report)."""
    order = sorted(range(len(p_values)), key=lambda i: (np.isnan(p_values[i]), p_values[i]))
    m = sum(not np.isnan(p) for p in p_values)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        if np.isnan(p_values[i]):
            continue
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
