"""The monitoring page ``tunerag monitor`` writes: top-score distributions (reference vs window, and per check) and
each drift test's p-value per check, as inline PNGs in one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def charts(status: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bins = np.asarray(status["histogram_bins"])
    centers, width = (bins[:-1] + bins[1:]) / 2, (bins[1] - bins[0]) * 0.9
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    for label, counts, color in (("reference", status["reference"]["top_score_histogram"], "#888"),
                                 ("current window", status["window"]["top_score_histogram"], "#1f77b4")):
        counts = np.asarray(counts, dtype=float)
        ax.bar(centers, counts / max(counts.sum(), 1), width, alpha=0.55, label=label, color=color)
    ax.set_xlabel("top dense retrieval score")
    ax.set_ylabel("share of queries")
    ax.legend(frameon=False)
    images = [_png(fig)]

    history = status.get("history") or []
    if history:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), dpi=100, sharex=True)
        observed = [h["observed"] for h in history]
        for name in sorted({n for h in history for n in h["tests"]}):
            values = [h["tests"].get(name, {}).get("p_value") for h in history]
            top.plot(observed, [v if v is not None else np.nan for v in values], marker="o", label=name)
        alpha = next(iter(history[-1]["tests"].values()), {}).get("threshold", {}).get("p_value")
        if alpha:
            top.axhline(alpha, color="red", linestyle="--", linewidth=1, label=f"alpha {alpha}")
        top.set_yscale("log")
        top.set_ylabel("p-value per check")
        top.legend(frameon=False, fontsize=8)
        grid = np.asarray([h["top_score_histogram"] for h in history], dtype=float)
        grid = grid / np.maximum(grid.sum(axis=1, keepdims=True), 1)
        bottom.imshow(grid.T, aspect="auto", origin="lower", cmap="Blues",
                      extent=(observed[0], observed[-1] if len(observed) > 1 else observed[0] + 1, bins[0], bins[-1]))
        bottom.set_ylabel("top score (window)")
        bottom.set_xlabel("queries served")
        images.append(_png(fig))
    return images


def render_page(status: dict[str, Any]) -> str:
    last = status.get("last_check") or {}
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(t['method'])}</td><td>{t['statistic']}</td>"
        f"<td>{t['p_value']}</td><td>{'DRIFT' if t['drift'] else 'ok'}</td></tr>"
        for name, t in (last.get("tests") or {}).items())
    images = "".join(f'<img alt="drift chart" src="{src}">' for src in charts(status)) if "histogram_bins" in status else ""
    verdict = "drift detected" if status.get("drift_detected") else "no drift detected"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tunerag monitoring</title><link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1000px}}td,th{{padding:.2rem .6rem;
text-align:left}}img{{max-width:100%;display:block;margin:1rem 0}}</style></head><body>
<h1>tunerag monitoring: {verdict}</h1>
<p>window: {status.get('window', {}).get('size', 0)} of {status.get('window', {}).get('capacity', 0)} queries;
reference: {status.get('reference', {}).get('queries', 0)} questions.</p>
<table><tr><th>test</th><th>method</th><th>statistic</th><th>p-value</th><th></th></tr>{rows}</table>
{images}
<details><summary>raw status (numbers only)</summary><pre>{html.escape(json.dumps(status, indent=1)[:200_000])}</pre></details>
</body></html>"""
