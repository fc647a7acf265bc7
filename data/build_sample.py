"""Render the sample domain (data/sample/) from the hand-written facts in sample_facts.py.

Run from the repository root:  python data/build_sample.py
Output is deterministic; the generated files are committed so nobody needs to run this.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
from pathlib import Path

from sample_facts import DOCS, UNANSWERABLE_EVAL, UNANSWERABLE_TRAIN, Doc, Fact

OUT = Path(__file__).resolve().parent / "sample"
PRODUCT = "Parcelly"
GREETING = "Hi there!"
SIGN_OFF = "— Parcelly Support"
REFUSAL = (
    "I couldn't find that in our help center, so I don't want to guess. "
    "Reply to this message and a specialist will follow up."
)
CLOSINGS = ("", "", "Anything else? Just reply here.", "Happy shipping!")
PREAMBLES = ("Hi, ", "Hello! Quick question: ", "Hey there, ", "Good morning. ", "Hi team, ")

SYSTEM_PROMPT = f"""You are the customer support assistant of {PRODUCT}, shipping software for online stores.
Answer in the house style:
- Start with "{GREETING}" on its own line, then answer the question directly in the first sentence.
- Use a numbered list for step-by-step instructions.
- Cite the help-center documents you used as [doc-id], using only ids from the context documents.
- Keep answers under 120 words, friendly and plain.
- If the context documents do not contain the answer, say "I couldn't find that in our help center" and offer that a specialist will follow up. Never guess.
- End with the line "{SIGN_OFF}".
"""

STYLE_GUIDE = f"""# {PRODUCT} support house style

Every answer our team (and our assistant) sends follows these rules. The checker in `eval/style.py`
tests rules 1-6 automatically.

1. **Greeting.** The first line is exactly `{GREETING}`.
2. **Answer first.** The first sentence after the greeting answers the question. Background comes after.
3. **Steps as a numbered list.** Anything the customer has to do in more than one step is a list
   `1.`, `2.`, ... one action per line, naming the screen path as `Settings > Billing`.
4. **Cite the help center.** Every answer that uses a help-center article cites it as `[doc-id]`
   (for example `[billing-plans]`) right after the sentence it supports. Cite only articles you were given.
5. **Short.** At most 120 words, not counting the sign-off.
6. **Sign-off.** The last line is exactly `{SIGN_OFF}`.
7. **Never guess.** When the help center does not answer the question, say
   "I couldn't find that in our help center" and offer that a specialist will follow up. Do not cite anything.
8. **Tone.** Friendly, plain and specific: prices with currency, limits with numbers, no jargon, no blame,
   never "As an AI". At most one closing line such as "Anything else? Just reply here."

## Example

> How do I add a team member?

```
{GREETING}

Go to Settings > Team and click Invite. Enter the person's email and choose a role; the invitation is valid for 7 days. [setup-team-members]

{SIGN_OFF}
```
"""


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def answer(fact: Fact, doc_id: str, key: str) -> str:
    closing = _pick(CLOSINGS, key)
    body = f"{fact.text} [{doc_id}]"
    parts = [GREETING, body] + ([closing] if closing else []) + [SIGN_OFF]
    return "\n\n".join(parts)


def refusal() -> str:
    return "\n\n".join([GREETING, REFUSAL, SIGN_OFF])


def render_markdown(doc: Doc, updated: str) -> str:
    lines = ["---", f"id: {doc.doc_id}", f"title: {doc.title}", f"category: {doc.category}", f"updated: {updated}",
             "---", "", f"# {doc.title}", "", doc.intro, ""]
    for fact in doc.facts:
        lines += [f"## {fact.heading}", "", fact.text, ""]
    if doc.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in doc.notes] + [""]
    return "\n".join(lines)


def _html_text(text: str) -> str:
    out, in_list = [], False
    for line in text.splitlines():
        number, _, rest = line.partition(". ")
        if number.isdigit() and rest:
            out.append(("" if in_list else "<ol>\n") + f"<li>{html.escape(rest)}</li>")
            in_list = True
            continue
        if in_list:
            out.append("</ol>")
            in_list = False
        out.append(f"<p>{html.escape(line)}</p>")
    if in_list:
        out.append("</ol>")
    return "\n".join(out)


def render_html(doc: Doc, updated: str) -> str:
    sections = "\n".join(
        f"<section>\n<h2>{html.escape(f.heading)}</h2>\n{_html_text(f.text)}\n</section>" for f in doc.facts
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(doc.title)} | {PRODUCT} Help Center</title>
<meta name="doc-id" content="{doc.doc_id}">
<meta name="category" content="{doc.category}">
<meta name="updated" content="{updated}">
<style>body{{font-family:sans-serif}}</style>
<script>window.analytics = window.analytics || [];</script>
</head>
<body>
<header class="site-header"><a href="/">{PRODUCT} Help Center</a> <input placeholder="Search the help center"></header>
<nav class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/c/{doc.category}">{doc.category.title()}</a></nav>
<nav class="sidebar"><ul><li><a href="/c/setup">Setup</a></li><li><a href="/c/billing">Billing</a></li>
<li><a href="/c/troubleshooting">Troubleshooting</a></li><li><a href="/c/api">API</a></li></ul></nav>
<main>
<article>
<h1>{html.escape(doc.title)}</h1>
<p>{html.escape(doc.intro)}</p>
{sections}
</article>
</main>
<aside class="related">Was this article helpful? <button>Yes</button> <button>No</button></aside>
<footer>&copy; 2026 {PRODUCT} Inc. &middot; <a href="/privacy">Privacy</a> &middot; <a href="/terms">Terms</a></footer>
<div class="cookie-banner">We use cookies to improve the help center. <button>Accept</button></div>
</body>
</html>
"""


def chat(idx: int, turns: list[tuple[str, str]], doc_ids: list[str], kind: str) -> dict:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for question, reply in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return {"id": f"chat-{idx:04d}", "kind": kind, "doc_ids": doc_ids, "messages": messages}


def write_onboarding_inputs(folder: Path) -> None:
    """The sample as a support team has it, with no facts table: an FAQ export (every customer question with
    its answer and article id, held-out facts included: the split is `tunerag data build`'s), a style file,
    and the questions the help center does not answer. `make demo` builds the domain from these."""
    folder.mkdir(parents=True)
    with (folder / "faq.jsonl").open("w") as fh:
        for doc in DOCS:
            for fact in doc.facts:
                for q in fact.questions:
                    fh.write(json.dumps({"question": q, "answer": fact.text, "doc_id": doc.doc_id},
                                        ensure_ascii=False) + "\n")
    (folder / "style.yaml").write_text(
        f"company: {json.dumps(PRODUCT + ', shipping software for online stores')}\n"
        f"greeting: {json.dumps(GREETING)}\nsign_off: {json.dumps(SIGN_OFF, ensure_ascii=False)}\nword_limit: 120\n"
        f"refusal: {json.dumps(REFUSAL)}\nrefusal_phrase: \"i couldn't find that in our help center\"\n"
        "language: English\n")
    (folder / "unanswered.txt").write_text("# Questions the help center does not answer (escalated tickets).\n"
                                           + "".join(q + "\n" for q in UNANSWERABLE_TRAIN + UNANSWERABLE_EVAL))


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "kb").mkdir(parents=True)
    (OUT / "system_prompt.txt").write_text(SYSTEM_PROMPT)
    (OUT / "style_guide.md").write_text(STYLE_GUIDE)

    for n, doc in enumerate(DOCS):
        updated = f"2026-{1 + n % 10:02d}-{1 + (n * 7) % 27:02d}"
        if doc.fmt == "md":
            (OUT / "kb" / f"{doc.doc_id}.md").write_text(render_markdown(doc, updated))
        else:
            (OUT / "kb" / f"{doc.doc_id}.html").write_text(render_html(doc, updated))

    chats: list[dict] = []
    evals: list[dict] = []
    for doc in DOCS:
        trained = [f for f in doc.facts if not f.held_out]
        for fact in doc.facts:
            if fact.held_out:
                for q in fact.questions:
                    evals.append({"question": q, "gold_doc_ids": [doc.doc_id], "answerable": True,
                                  "reference_answer": answer(fact, doc.doc_id, q), "category": doc.category})
                continue
            for q in fact.questions:
                chats.append(chat(len(chats), [(q, answer(fact, doc.doc_id, q))], [doc.doc_id], "single"))
            # The same need in a customer's own voice: greetings and lower-case starts are what real chats look like.
            q = fact.questions[0]
            voiced = _pick(PREAMBLES, q) + q[0].lower() + q[1:]
            chats.append(chat(len(chats), [(voiced, answer(fact, doc.doc_id, voiced))], [doc.doc_id], "voiced"))
        # A follow-up within one conversation about the same article.
        if len(trained) >= 2:
            a, b = trained[0], trained[1]
            turns = [(a.questions[0], answer(a, doc.doc_id, a.questions[0])),
                     (b.questions[-1], answer(b, doc.doc_id, b.questions[-1] + "#2"))]
            chats.append(chat(len(chats), turns, [doc.doc_id], "multi_turn"))
    for q in UNANSWERABLE_TRAIN:
        chats.append(chat(len(chats), [(q, refusal())], [], "unanswerable"))
    for q in UNANSWERABLE_EVAL:
        evals.append({"question": q, "gold_doc_ids": [], "answerable": False,
                      "reference_answer": refusal(), "category": "unanswerable"})

    train_questions = {m["content"].lower() for c in chats for m in c["messages"] if m["role"] == "user"}
    overlap = [e["question"] for e in evals if e["question"].lower() in train_questions]
    assert not overlap, f"eval questions also in training: {overlap}"

    with (OUT / "chat_train.jsonl").open("w") as fh:
        for row in chats:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (OUT / "eval.jsonl").open("w") as fh:
        for i, row in enumerate(evals):
            fh.write(json.dumps({"id": f"eval-{i:03d}", **row}, ensure_ascii=False) + "\n")
    # Three house-style examples for prompt-only mode, taken from the training chats (never from eval).
    shots = [c for c in chats if c["kind"] == "single"][:: max(1, len(chats) // 3)][:2] + \
        [c for c in chats if c["kind"] == "unanswerable"][:1]
    with (OUT / "few_shot.jsonl").open("w") as fh:
        for c in shots:
            fh.write(json.dumps({"question": c["messages"][1]["content"], "answer": c["messages"][2]["content"]},
                                ensure_ascii=False) + "\n")
    write_onboarding_inputs(OUT / "onboarding")
    print(f"{len(DOCS)} documents, {len(chats)} training chats, {len(evals)} eval questions -> {OUT}")


if __name__ == "__main__":
    main()
