"""Answerability: who refuses what the knowledge base cannot answer, and only that? Measured through the API.

    python bench/bench_answerability.py --domain sample     # data dir var/bench/answerability-sample
    python bench/bench_answerability.py --domain zaragoza   # data dir var/bench/answerability-zaragoza/var

Missing artifacts are trained first with the default recipes (embedder, its index, adapter, verifier), on
training data only. Then every system answers through a real `tunerag serve` (the default engine, greedy)
over HTTP, `POST /v1/chat`, 8 requests at a time, on two protocols:

* ``heldout``: the domain's held-out questions against the full index (the sample set has 12 unanswerable
  questions among its 104; zaragoza's are all answerable);
* ``gold_removed``: for a seeded half of the answerable held-out questions, every gold document is taken out
  of the knowledge base (a second index built from the corpus without them), so the knowledge base truly
  cannot answer those; the other half stays answerable. Nobody can tune to it: the removed half is drawn
  after training.

Systems, side by side in one run: ``adapter`` (combined, the adapter's own decision), ``adapter+gate``
(the refusal gate at generation.refusal_min_prob=0.5), ``verifier+base`` (rag mode: base generator) and
``verifier+adapter`` (combined). Per system and protocol: correct refusals (of the unanswerable), false
refusals (of the answerable), and for the answerable questions a system answered: ROUGE-L and citation hit,
also on the questions that both it and ``adapter`` answered (what the verifier costs the answers it lets
through). Verifier latency per request (p50/p95 of the API's own timing) is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import time
from pathlib import Path

import httpx
from bench_eval import REFUSAL, zaragoza_settings
from bench_serving import Server
from common import ROOT, emit, percentiles

from core import artifacts
from core.settings import SAMPLE_DIR, Settings, load_settings
from eval.answer_metrics import citation_hit, rouge_l
from eval.runner import EvalItem, load_eval_set
from retrieval import index_store
from retrieval.indexer import update_index
from retrieval.loaders import load_documents
from training.embedder_recipe import train_embedder
from training.generator_recipe import train_generator
from training.verifier_recipe import train_verifier

SYSTEMS = ("adapter", "adapter+gate", "verifier+base", "verifier+adapter")


def domain(name: str, work: Path) -> tuple[Settings, dict, dict]:
    """Settings, the recipes' overrides and the server's environment for the domain."""
    if name == "sample":
        return load_settings(data_dir=work), {}, {}
    settings, embedder_cfg, generator_cfg = zaragoza_settings(work, -1)
    verifier_cfg = settings.train_verifier.model_copy(update={"chat_files": [work / "chat_train.jsonl"],
                                                              "refusal_answer": REFUSAL})
    env = {"TUNERAG_PROMPT__SYSTEM_PROMPT_FILE": str(settings.prompt.system_prompt_file),
           "TUNERAG_PROMPT__FEW_SHOT_FILE": str(settings.prompt.few_shot_file)}
    return settings, {"embedder": embedder_cfg, "generator": generator_cfg, "verifier": verifier_cfg}, env


def ensure_artifacts(settings: Settings, cfgs: dict, *, adapter: bool = True) -> dict[str, float]:
    """Train (and activate) whatever is missing, in the order the README gives (the adapter only when a system
    uses it); returns wall times."""
    times: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        began = time.perf_counter()
        fn()
        times[name] = round(time.perf_counter() - began, 1)

    if artifacts.active_id(settings, "embedder") is None:
        timed("train_embedder_s", lambda: artifacts.activate(settings, "embedder",
                                                             train_embedder(settings, cfgs.get("embedder")).id))
    if index_store.current_version(settings.paths.index_dir) is None:
        location = artifacts.active_embedder_location(settings)
        timed("index_s", lambda: update_index(settings, embedder_location=location))
    if adapter and artifacts.active_id(settings, "adapter") is None:
        timed("train_generator_s", lambda: artifacts.activate(settings, "adapter",
                                                              train_generator(settings, cfgs.get("generator")).id))
    if not artifacts.list_artifacts(settings, "verifier"):  # the runs switch it on and off through the API
        timed("train_verifier_s", lambda: train_verifier(settings, cfgs.get("verifier")))
    return times


def gold_removed_corpus(settings: Settings, removed: set[str], out: Path) -> Path:
    """A copy of the corpus without the files that hold the removed documents."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sources = [Path(s) for s in settings.retrieval.sources]
    holders = {Path(d.source.split("#")[0]).resolve() for d in load_documents(sources) if d.doc_id in removed}
    for root in sources:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.resolve() not in holders:
                target = out / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return out


async def ask_all(url: str, items: list[EvalItem], mode: str, concurrency: int = 8) -> list[dict]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, item: EvalItem) -> dict:
        async with semaphore:
            r = await client.post(f"{url}/v1/chat", json={"question": item.question, "mode": mode})
            r.raise_for_status()
            return r.json()

    async with httpx.AsyncClient(timeout=600) as client:
        return await asyncio.gather(*(one(client, item) for item in items))


def score(items: list[EvalItem], answers: list[dict], answerable: list[bool]) -> dict:
    refused = [a["refused"] for a in answers]
    pos = [i for i, ok in enumerate(answerable) if ok]
    neg = [i for i, ok in enumerate(answerable) if not ok]
    answered = [i for i in pos if not refused[i]]
    out = {
        "answerable": len(pos), "unanswerable": len(neg),
        "correct_refusals": sum(refused[i] for i in neg), "false_refusals": sum(refused[i] for i in pos),
        "correct_refusal_rate": round(sum(refused[i] for i in neg) / len(neg), 4) if neg else None,
        "false_refusal_rate": round(sum(refused[i] for i in pos) / len(pos), 4) if pos else None,
        "answered": len(answered),
        "answered_rouge_l": round(sum(rouge_l(answers[i]["answer"], items[i].reference_answer) for i in answered)
                                  / max(len(answered), 1), 4),
        "answered_citation_hit": round(sum(citation_hit(answers[i]["answer"], items[i].gold_doc_ids) for i in answered)
                                       / max(len(answered), 1), 4),
    }
    verifier_ms = [a["timings_ms"]["verifier"] / 1000 for a in answers if "verifier" in a["timings_ms"]]
    if verifier_ms:
        out["verifier_latency"] = percentiles(verifier_ms)
    return out


def on_common_answers(items: list[EvalItem], answers: list[dict], baseline: list[dict], answerable: list[bool]) -> dict:
    both = [i for i, ok in enumerate(answerable) if ok and not answers[i]["refused"] and not baseline[i]["refused"]]

    def mean(fn, source):
        return round(sum(fn(source[i]["answer"], i) for i in both) / max(len(both), 1), 4)

    return {"questions": len(both),
            "rouge_l": mean(lambda a, i: rouge_l(a, items[i].reference_answer), answers),
            "rouge_l_adapter": mean(lambda a, i: rouge_l(a, items[i].reference_answer), baseline),
            "citation_hit": mean(lambda a, i: citation_hit(a, items[i].gold_doc_ids), answers),
            "citation_hit_adapter": mean(lambda a, i: citation_hit(a, items[i].gold_doc_ids), baseline)}


def run_protocol(data_dir: Path, sources: list[Path], items: list[EvalItem], answerable: list[bool],
                 env: dict[str, str], verifier_id: str, systems: tuple[str, ...]) -> dict:
    """The chosen systems on one knowledge base; two servers (the gate is a start-up setting)."""
    answers: dict[str, list[dict]] = {}
    # Auth is off here: every request shares one address bucket, so the limit must exceed the run.
    base_env = {**env, "TUNERAG_GENERATION__TEMPERATURE": "0", "TUNERAG_SERVER__RATE_LIMIT_PER_MINUTE": "100000"}
    server = Server(data_dir, 8, sources, base_env)
    try:
        httpx.post(f"{server.url}/v1/verifiers/none/activate", timeout=60).raise_for_status()
        if "adapter" in systems:
            answers["adapter"] = asyncio.run(ask_all(server.url, items, "combined"))
        httpx.post(f"{server.url}/v1/verifiers/{verifier_id}/activate", timeout=120).raise_for_status()
        for name, mode in (("verifier+base", "rag"), ("verifier+adapter", "combined")):
            if name in systems:
                answers[name] = asyncio.run(ask_all(server.url, items, mode))
        httpx.post(f"{server.url}/v1/verifiers/none/activate", timeout=60).raise_for_status()
    finally:
        server.stop()
    if "adapter+gate" in systems:
        server = Server(data_dir, 8, sources, {**base_env, "TUNERAG_GENERATION__REFUSAL_MIN_PROB": "0.5"})
        try:
            answers["adapter+gate"] = asyncio.run(ask_all(server.url, items, "combined"))
        finally:
            server.stop()
    out = {name: score(items, answers[name], answerable) for name in SYSTEMS if name in answers}
    if "adapter" in answers:
        for name in ("verifier+base", "verifier+adapter", "adapter+gate"):
            if name in answers:
                out[name]["vs_adapter_on_questions_both_answered"] = on_common_answers(
                    items, answers[name], answers["adapter"], answerable)
    return out


def verifier_cost(settings: Settings, verifier: artifacts.Artifact, items: list[EvalItem], top_k: int) -> dict:
    """In-process cost of one judgement (top_k retrieved passages) at 1 and 2 torch threads."""
    import torch

    from retrieval.answerability import Verifier, pair_text
    from retrieval.search import open_retriever

    model = Verifier.load(verifier.path, verifier.manifest)
    retriever = open_retriever(settings)
    contexts = [(i.question, [pair_text(r.title, r.text) for r in retriever.search(i.question, k=top_k)])
                for i in items[:40]]
    tokens = [len(model.model.tokenizer(q, p, truncation=True, max_length=verifier.manifest["max_length"]).input_ids)
              for q, ps in contexts for p in ps]
    out: dict = {"passages_per_request": top_k, "mean_pair_tokens": round(sum(tokens) / len(tokens), 1),
                 "max_length": verifier.manifest["max_length"]}
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model.judge(*contexts[0])  # warm-up
        seconds = []
        for q, ps in contexts:
            began = time.perf_counter()
            model.judge(q, ps)
            seconds.append(time.perf_counter() - began)
        out[f"threads_{threads}"] = percentiles(seconds)
    torch.set_num_threads(before)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", choices=("sample", "zaragoza"), default="sample")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset (verifier+base alone needs no adapter)")
    args = parser.parse_args()
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    work = ROOT / "var" / "bench" / f"answerability-{args.domain}"
    work.mkdir(parents=True, exist_ok=True)
    settings, cfgs, env = domain(args.domain, work)
    training = ensure_artifacts(settings, cfgs, adapter=any("adapter" in name for name in systems))
    verifier = artifacts.get_artifact(settings, "verifier", "latest")
    eval_file = settings.eval.eval_file if args.domain == "zaragoza" else SAMPLE_DIR / "eval.jsonl"
    items = load_eval_set(Path(eval_file), args.limit)

    # Protocol 1: the held-out questions against the full knowledge base.
    sources = [Path(s) for s in settings.retrieval.sources]
    heldout = run_protocol(settings.paths.data_dir, sources, items, [i.answerable for i in items], env, verifier.id,
                           systems)

    # Protocol 2: a seeded half of the answerable questions lose their gold documents.
    answerable_items = [i for i in items if i.answerable]
    rng = random.Random(args.seed)
    removed_items = set(rng.sample([i.id for i in answerable_items], len(answerable_items) // 2))
    removed_docs = {d for i in answerable_items if i.id in removed_items for d in i.gold_doc_ids}
    # A question stays answerable only if none of its gold documents went with another question's.
    still = [i.id not in removed_items and not set(i.gold_doc_ids) & removed_docs for i in answerable_items]
    kept_items = [it for it, ok in zip(answerable_items, still, strict=True) if ok or it.id in removed_items]
    kept_flags = [ok for it, ok in zip(answerable_items, still, strict=True) if ok or it.id in removed_items]
    removed_dir = work / "gold-removed"
    corpus = gold_removed_corpus(settings, removed_docs, removed_dir / "corpus")
    data_dir = removed_dir / "var"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    (data_dir / "artifacts").symlink_to(settings.paths.artifacts_dir.resolve(), target_is_directory=True)
    gold_removed = run_protocol(data_dir, [corpus], kept_items, kept_flags, env, verifier.id, systems)

    cost = verifier_cost(settings, verifier, items, verifier.manifest["top_k"])
    emit(f"answerability_{args.domain}", {
        "verifier_cost_in_process": cost,
        "domain": args.domain, "systems": systems, "training_wall_s": training, "verifier": verifier.id,
        "verifier_threshold": verifier.manifest["threshold"],
        "verifier_out_of_fold": verifier.manifest["metrics_out_of_fold"],
        "heldout": {"questions": len(items), **heldout},
        "gold_removed": {"questions": len(kept_items), "removed_documents": len(removed_docs),
                         "dropped_as_ambiguous": len(answerable_items) - len(kept_items), **gold_removed},
    })


if __name__ == "__main__":
    main()
