"""Writing an evaluation report three ways: JSON (machine-diffable), Markdown (pull requests) and one
self-contained HTML page (tables, bar charts with 95% intervals, a per-question browser). The HTML has
no external resources: charts are inline PNGs, data and script are embedded."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment

TABLE_METRICS = (
    ("rouge_l", "ROUGE-L"), ("token_f1", "Token F1"), ("embedding_similarity", "Emb. sim."), ("judge_score", "LLM judge"),
    ("style_adherence", "Style"), ("groundedness", "Grounded"), ("citation_validity", "Cit. valid"),
    ("citation_hit", "Cit. hit"), ("refusal_correct", "Refusal ok"), ("false_refusal", "False refusal"),
    ("ndcg@10", "nDCG@10"), ("recall@5", "Recall@5"), ("completion_tokens", "Tokens"),
    ("seconds_per_answer", "s/answer"),
)
STYLE_RULES = (("style_greeting", "Greeting"), ("style_sign_off", "Sign-off"), ("style_length", "Length"),
               ("style_citation", "Citation"), ("style_steps", "Steps"), ("style_no_ai", "No 'as an AI'"),
               ("style_adherence", "All rules"))
CHART_METRICS = ("rouge_l", "token_f1", "embedding_similarity", "style_adherence", "citation_hit", "refusal_correct")
COLORS = {"prompt": "#9aa5b1", "rag": "#4c78a8", "ft": "#f58518", "combined": "#54a24b", "rag+verifier": "#72b7b2",
          "combined+verifier": "#2f6b2a"}


def _fmt(value: dict[str, float] | None, ci: bool = True) -> str:
    if not value or value.get("mean") is None:
        return "–"
    text = f"{value['mean']:.3f}"
    if ci and value.get("low") is not None:
        text += f" [{value['low']:.3f}, {value['high']:.3f}]"
    return text


REFUSAL_CELLS = (("refused_unanswerable", "unanswerable, refused (correct)"),
                 ("answered_unanswerable", "unanswerable, answered (a guess)"),
                 ("refused_answerable", "answerable, refused (false refusal)"),
                 ("answered_answerable", "answerable, answered"))


def markdown(report: dict[str, Any]) -> str:
    systems = report["systems"]
    ok = [n for n, s in systems.items() if s["status"] == "ok"]
    lines = [f"# tunerag evaluation — {report['data']['questions']} questions "
             f"({report['data']['answerable']} answerable)", "",
             "Means with 95% bootstrap intervals.", "",
             "| metric | " + " | ".join(ok) + " |", "|---|" + "---|" * len(ok)]
    for key, label in TABLE_METRICS:
        if any(key in systems[n]["metrics"] for n in ok):
            lines.append(f"| {label} | " + " | ".join(_fmt(systems[n]["metrics"].get(key)) for n in ok) + " |")
    if any("style_greeting" in systems[n]["metrics"] for n in ok):
        lines += ["", "## House style by rule (share of answers passing)", "",
                  "| rule | " + " | ".join(ok) + " |", "|---|" + "---|" * len(ok)]
        for key, label in STYLE_RULES:
            lines.append(f"| {label} | " + " | ".join(_fmt(systems[n]["metrics"].get(key), ci=False) for n in ok) + " |")
    if any("refusals" in systems[n] for n in ok):
        lines += ["", "## Refusal decisions (counts)", "",
                  "| | " + " | ".join(ok) + " |", "|---|" + "---|" * len(ok)]
        for key, label in REFUSAL_CELLS:
            lines.append(f"| {label} | " + " | ".join(str(systems[n].get("refusals", {}).get(key, "")) for n in ok) + " |")
    missing = [(n, s["reason"]) for n, s in systems.items() if s["status"] != "ok"]
    if missing:
        lines += ["", "**Not evaluated:** " + "; ".join(f"{n} ({r})" for n, r in missing)]
    significant = [c for c in report["comparisons"] if c.get("significant_holm")]
    lines += ["", "## Significant differences (paired sign-flip test, Holm-corrected p < 0.05)", ""]
    if significant:
        lines += ["| metric | comparison | mean difference [95% CI] | p (Holm) |", "|---|---|---|---|"]
        for c in significant:
            lines.append(f"| {c['metric']} | {c['a']} − {c['b']} | {c['mean_difference']:+.3f} "
                         f"[{c['low']:+.3f}, {c['high']:+.3f}] | {c['p_holm']:.4f} |")
    else:
        lines.append("None.")
    for name in ok:
        worst = systems[name].get("worst_answers") or []
        if worst:
            lines += ["", f"## Worst {len(worst)} answers: {name}", ""]
            for w in worst:
                context = ", ".join(c["doc_id"] for c in w["context"]) or "no retrieval"
                judged = w.get("answerability")
                verdict = (f"; verifier {judged['score']:.3f} vs {judged['threshold']:.3f}: "
                           f"{'refused' if judged['refused'] else 'answered'}") if judged else ""
                lines += [f"- **{w['id']}** {w['question']} (gold: {', '.join(w['gold_doc_ids']) or 'not answerable'}; "
                          f"context: {context}{verdict}) failed: {', '.join(w['failed']) or 'nothing'}; F1 {w['token_f1']}",
                          "", "  > " + w["answer"].strip().replace("\n", "\n  > "), ""]
    lines += ["", f"Generator `{report['models']['generator']}`; adapter "
              f"`{(report['models']['adapter'] or {}).get('id')}`; fine-tuned embedder "
              f"`{(report['models']['finetuned_embedder'] or {}).get('id')}`; eval set sha256 "
              f"`{report['data']['eval_file_sha256'][:12]}`; wall time {report['wall_time_s']} s."]
    forgot = (report["models"]["adapter"] or {}).get("forgetting")
    if forgot:
        lines += ["", f"Forgetting check of the adapter: general-text perplexity {forgot['perplexity']['base']} -> "
                      f"{forgot['perplexity']['adapter']} ({forgot['perplexity']['change']:+.1%}); general answers' "
                      f"ROUGE-L agreement with the base model {forgot['instruction_agreement_rouge_l']['mean']}; "
                      + ("; ".join(forgot["warnings"]) if forgot["warnings"] else "within thresholds") + "."]
    return "\n".join(lines) + "\n"


def chart_png(report: dict[str, Any]) -> str:
    """Grouped bars (one group per metric, one bar per system) with 95% intervals, as a data: URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [n for n, s in report["systems"].items() if s["status"] == "ok"]
    metrics = [m for m in CHART_METRICS if any(m in report["systems"][n]["metrics"] for n in systems)]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    width = 0.8 / max(1, len(systems))
    for i, name in enumerate(systems):
        values = [report["systems"][name]["metrics"].get(m) for m in metrics]
        means = [v["mean"] if v else 0 for v in values]
        errs = [[max(0, v["mean"] - v["low"]) if v else 0 for v in values],
                [max(0, v["high"] - v["mean"]) if v else 0 for v in values]]
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=name, color=COLORS.get(name))
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean (95% CI)")
    ax.legend(ncols=len(systems), loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tunerag evaluation</title>
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:14px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.sig{font-weight:bold;color:#0a6}
.missing{color:#b00}.grid{display:grid;grid-template-columns:repeat({{ ok|length }},1fr);gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;font-size:13px}.card h4{margin:0 0 6px}
pre{white-space:pre-wrap;background:#fafafa;padding:6px;margin:4px 0}.src{color:#555;font-size:12px}
select{font-size:14px;max-width:100%}.ok{color:#0a6}.bad{color:#b00}
</style></head><body>
<h1>tunerag evaluation</h1>
<p>{{ data.questions }} questions ({{ data.answerable }} answerable) from <code>{{ data.eval_file }}</code>;
generator <code>{{ models.generator }}</code>, adapter <code>{{ (models.adapter or {}).get('id') }}</code>,
fine-tuned embedder <code>{{ (models.finetuned_embedder or {}).get('id') }}</code>. Wall time {{ wall_time_s }} s.</p>
{% set forgot = (models.adapter or {}).get('forgetting') %}{% if forgot %}
<p id="forgetting">Forgetting check of the adapter (general text, {{ forgot.source }}): perplexity
{{ forgot.perplexity.base }} &rarr; {{ forgot.perplexity.adapter }} ({{ '%+.1f' % (100 * forgot.perplexity.change) }}%),
general answers' agreement with the base model ROUGE-L {{ forgot.instruction_agreement_rouge_l.mean }}
{% if forgot.warnings %}<span class="bad">{{ forgot.warnings | join('; ') }}</span>{% else %}<span class="ok">within thresholds</span>{% endif %}.</p>{% endif %}
<h2>Systems</h2>
<table><tr><th>system</th><th>what it is</th><th>status</th></tr>
{% for name, s in systems.items() %}<tr><td id="system-{{ name }}">{{ name }}</td><td>{{ s.description }}</td>
<td class="{{ 'ok' if s.status == 'ok' else 'missing' }}">{{ s.status }}{% if s.reason %}: {{ s.reason }}{% endif %}</td></tr>{% endfor %}
</table>
<h2>Headline (means, 95% bootstrap intervals)</h2>
<table><tr><th>metric</th>{% for n in ok %}<th>{{ n }}</th>{% endfor %}</tr>
{% for key, label in metrics %}<tr><td>{{ label }}</td>{% for n in ok %}<td>{{ fmt(systems[n].metrics.get(key)) }}</td>{% endfor %}</tr>{% endfor %}
</table>
<img alt="metrics by system with 95% intervals" src="{{ chart }}" style="max-width:100%">
{% if style_rows %}<h2>House style by rule</h2>
<p>Share of answers passing each rule; "All rules" is the style adherence above.</p>
<table><tr><th>rule</th>{% for n in ok %}<th>{{ n }}</th>{% endfor %}</tr>
{% for key, label in style_rows %}<tr><td>{{ label }}</td>{% for n in ok %}<td>{{ fmt(systems[n].metrics.get(key), False) }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}
{% if ok and systems[ok[0]].refusals %}<h2>Refusal decisions</h2>
<table><tr><th></th>{% for n in ok %}<th>{{ n }}</th>{% endfor %}</tr>
{% for key, label in refusal_cells %}<tr><td>{{ label }}</td>{% for n in ok %}<td>{{ systems[n].refusals.get(key, "") }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}
<h2>Worst answers</h2>
<p>Per system, the answers that failed the most checks (ties: lowest token F1), with the context they were given.</p>
{% for n in ok %}{% if systems[n].worst_answers %}<h3 id="worst-{{ n }}">{{ n }}</h3>
{% for w in systems[n].worst_answers %}<div class="card"><h4>{{ w.id }}: {{ w.question }}</h4>
<div>gold: {{ w.gold_doc_ids|join(", ") or "not answerable" }} · failed: <span class="bad">{{ w.failed|join(", ") or "nothing" }}</span> · F1 {{ w.token_f1 }}{% if w.answerability %} · verifier {{ '%.3f'|format(w.answerability.score) }} vs {{ '%.3f'|format(w.answerability.threshold) }}: {{ 'refused' if w.answerability.refused else 'answered' }}{% endif %}</div>
<pre>{{ w.answer }}</pre>
<div class="src">{% for c in w.context %}[{{ c.doc_id }}] {{ c.title }}: {{ c.text|truncate(240) }}<br>{% else %}no retrieval{% endfor %}</div></div>
{% endfor %}{% endif %}{% endfor %}
<h2>Which differences are real</h2>
<p>Paired sign-flip permutation test per metric, Holm-corrected across all {{ comparisons|length }} comparisons.</p>
<table><tr><th>metric</th><th>comparison</th><th>mean difference [95% CI]</th><th>p</th><th>p (Holm)</th></tr>
{% for c in comparisons %}<tr class="{{ 'sig' if c.significant_holm else '' }}"><td>{{ c.metric }}</td><td>{{ c.a }} − {{ c.b }}</td>
<td>{{ '%+.3f'|format(c.mean_difference) if c.n else '–' }} [{{ '%+.3f'|format(c.low) if c.n else '' }}, {{ '%+.3f'|format(c.high) if c.n else '' }}]</td>
<td>{{ '%.4f'|format(c.p_value) if c.n else '–' }}</td><td>{{ '%.4f'|format(c.p_holm) if c.n else '–' }}</td></tr>{% endfor %}
</table>
<h2>Questions</h2>
<p><label for="q">Question: </label><select id="q"></select></p>
<div id="question"></div>
<div class="grid" id="answers"></div>
<script id="data" type="application/json">{{ questions | tojson }}</script>
<script>
(function () {
  var questions = JSON.parse(document.getElementById("data").textContent);
  var systems = {{ ok | tojson }};
  var select = document.getElementById("q");
  function esc(s) { var d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; }
  function num(v) { return v == null ? "–" : (Math.round(v * 1000) / 1000).toString(); }
  questions.forEach(function (q, i) {
    var o = document.createElement("option"); o.value = i; o.textContent = q.id + ": " + q.question; select.appendChild(o);
  });
  function show(i) {
    var q = questions[i];
    document.getElementById("question").innerHTML = "<p><b>" + esc(q.question) + "</b> — gold: " +
      esc(q.gold_doc_ids.join(", ") || "(not answerable)") + "</p><pre>" + esc(q.reference_answer) + "</pre>";
    document.getElementById("answers").innerHTML = systems.map(function (name) {
      var s = q.systems[name]; var m = s.metrics;
      var sources = s.context.map(function (c) { return "[" + esc(c.doc_id) + "] " + esc(c.title); }).join("<br>");
      return "<div class='card' data-system='" + name + "'><h4>" + name + "</h4><pre>" + esc(s.answer) + "</pre>" +
        "<div>ROUGE-L " + num(m.rouge_l) + " · F1 " + num(m.token_f1) + " · style " +
        (s.style.adheres ? "<span class='ok'>yes</span>" : "<span class='bad'>no</span>") + "</div>" +
        "<div class='src'>" + (sources || "no retrieval") + "</div></div>";
    }).join("");
  }
  select.addEventListener("change", function () { show(parseInt(select.value, 10)); });
  if (questions.length) { show(0); }
})();
</script>
</body></html>
"""


def html_report(report: dict[str, Any]) -> str:
    ok = [n for n, s in report["systems"].items() if s["status"] == "ok"]
    env = Environment(autoescape=True)
    template = env.from_string(_HTML)
    # Jinja's ``tojson`` escapes <, >, & and ' so embedded answers can never close the script element.
    has_rules = any("style_greeting" in report["systems"][n]["metrics"] for n in ok)
    return template.render(**report, ok=ok, metrics=TABLE_METRICS, fmt=_fmt, chart=chart_png(report),
                           style_rows=STYLE_RULES if has_rules else (), refusal_cells=REFUSAL_CELLS)


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str, allow_nan=False))
    paths["markdown"].write_text(markdown(report))
    paths["html"].write_text(html_report(report))
    return paths

