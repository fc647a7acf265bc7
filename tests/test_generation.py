from __future__ import annotations

import json

from core.models import load_generator
from core.prompt import load_template, render_prompt
from core.settings import Settings
from inference.generation import generate

QUESTIONS = ["How do I reset my password?", "Can I pay by bank transfer?", "Which carriers?"]


def test_batched_greedy_decoding_matches_one_at_a_time(settings: Settings) -> None:
    model, tokenizer = load_generator(settings)
    template = load_template(settings)
    prompts = [render_prompt(tokenizer, template.build_messages(q)) for q in QUESTIONS]
    config = settings.generation.model_copy(update={"batch_size": 3, "max_new_tokens": 8})
    batched = generate(model, tokenizer, prompts, config)
    single = [generate(model, tokenizer, [p], config)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(0 < g.completion_tokens <= 8 for g in batched)
    assert [g.prompt_tokens for g in batched] == [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert tokenizer.padding_side == "left"


def test_long_prompts_keep_their_end(settings: Settings) -> None:
    model, tokenizer = load_generator(settings)
    config = settings.generation.model_copy(update={"max_context_tokens": 100, "max_new_tokens": 2})
    result = generate(model, tokenizer, ["word " * 1000], config)[0]
    assert result.prompt_tokens == 100


def test_empty_input_returns_nothing(settings: Settings) -> None:
    model, tokenizer = load_generator(settings)
    assert generate(model, tokenizer, [], settings.generation) == []


def test_repetition_penalty_counts_the_answer_not_the_prompt() -> None:
    """Quoting the context and citing its [doc-id]s must cost nothing; repeating the answer still does."""
    import numpy as np
    import torch

    from core.settings import GenerationSettings
    from inference.sampling import logits_processing, sample_next

    prompt, answer = [5, 6, 7], [8]
    scores = torch.tensor([[0.0, 0, 0, 0, 0, 2.0, 2.0, -2.0, 2.0, -2.0]])
    config = GenerationSettings(repetition_penalty=2.0)
    (penalty,) = logits_processing(config, len(prompt), None)["logits_processor"]
    out = penalty(torch.tensor([prompt + answer]), scores.clone())
    assert out[0, 5:8].tolist() == [2.0, 2.0, -2.0]  # prompt tokens untouched
    assert out[0, 8].item() == 1.0 and out[0, 9].item() == -2.0  # the answer's token divided; unseen untouched
    (nothing_yet,) = logits_processing(config, 4, None)["logits_processor"]
    assert torch.equal(nothing_yet(torch.tensor([prompt + answer]), scores.clone()), scores)
    # The llama.cpp engine's sampler: the same penalty on the same seen tokens.
    seen = np.zeros(10, dtype=bool)
    seen[answer] = True
    logits = np.array([0.0, 0, 0, 0, 0, 2.0, 1.0, -2.0, 2.5, -2.0], dtype=np.float32)
    assert sample_next(logits, seen, 2.0, 0.0, 1.0, np.random.default_rng(0)) == 5  # 2.5 -> 1.25 loses to 2.0
    assert sample_next(logits, np.zeros(10, dtype=bool), 2.0, 0.0, 1.0, np.random.default_rng(0)) == 8


def test_generate_applies_the_configured_penalty_scope(settings) -> None:
    from transformers import RepetitionPenaltyLogitsProcessor as AnswerRepetitionPenalty

    from inference.refusal import RefusalGate
    from inference.sampling import RefusalGateProcessor
    from inference.sampling import logits_processing as _logits_processing

    kinds = lambda kw: [type(p) for p in kw["logits_processor"]]  # noqa: E731
    assert kinds(_logits_processing(settings.generation, 10, None)) == [AnswerRepetitionPenalty]
    gate = RefusalGate((1, 2), 0.5)
    assert kinds(_logits_processing(settings.generation, 10, gate)) == [RefusalGateProcessor, AnswerRepetitionPenalty]
    both = settings.generation.model_copy(update={"repetition_penalty_scope": "prompt_and_answer"})
    assert _logits_processing(both, 10, None)["repetition_penalty"] == settings.generation.repetition_penalty
    assert kinds(_logits_processing(both, 10, None)) == []
    off = settings.generation.model_copy(update={"repetition_penalty": 1.0})
    assert _logits_processing(off, 10, None)["repetition_penalty"] == 1.0


def test_refusal_gate_masks_an_unsure_refusal_token_only_on_the_refusal_path() -> None:
    import numpy as np

    from inference.refusal import RefusalGate

    gate = RefusalGate((7, 3, 5), 0.5)
    logits = np.log(np.array([0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.05, 0.05]))  # p(3) = 0.4
    assert gate.blocked([7], logits) == 3  # on the path, the refusal's next token (3) is below 0.5
    assert gate.blocked([7, 3], logits) == 5  # every refusal token must be sure, not only the first
    assert RefusalGate((7, 3, 5), 0.3).blocked([7], logits) is None  # 0.4 >= 0.3: allowed
    assert gate.blocked([8], logits) is None and gate.blocked([7, 4], logits) is None  # left the refusal
    assert gate.blocked([7, 3, 5], logits) is None  # the whole refusal is out: nothing left to gate
    assert gate.blocked([], logits) == 7 and RefusalGate((3,), 0.39).blocked([], logits) is None
    opened = RefusalGate((7, 3, 5), 0.5, opening=1)  # token 7 (the greeting) is shared with answers: never gated
    assert opened.blocked([], logits) is None and opened.blocked([7], logits) == 3


def test_generate_with_a_refusal_gate_masks_the_refusal_unless_the_model_is_sure(settings: Settings) -> None:
    """A gate whose "refusal" is the model's own greedy answer: at min_prob 1.0 no token is sure enough, so the
    first token changes; at a tiny min_prob every token passes and the answer is unchanged."""
    from inference.refusal import RefusalGate

    model, tokenizer = load_generator(settings)
    prompt = render_prompt(tokenizer, load_template(settings).build_messages(QUESTIONS[0]))
    config = settings.generation.model_copy(update={"max_new_tokens": 6})
    plain = generate(model, tokenizer, [prompt], config)[0]
    own = tuple(generate_ids(model, tokenizer, prompt, config))
    sure = generate(model, tokenizer, [prompt], config, refusal_gate=RefusalGate(own, 1e-9))[0]
    gated = generate(model, tokenizer, [prompt], config, refusal_gate=RefusalGate(own, 1.0))[0]
    assert sure.text == plain.text
    assert tuple(tokenizer(gated.text, add_special_tokens=False).input_ids[:1]) != own[:1], (gated.text, plain.text)


def generate_ids(model, tokenizer, prompt: str, config) -> list[int]:
    """The greedy answer's token ids, decoded with the same logits processing as ``generate``."""
    import torch

    from inference.sampling import logits_processing as _logits_processing

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=config.max_new_tokens, do_sample=False, top_k=None,
                             pad_token_id=tokenizer.pad_token_id,
                             **_logits_processing(config, enc["input_ids"].shape[1], None))
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_the_gate_is_read_from_the_adapter_folder(settings: Settings, tmp_path, caplog) -> None:
    from inference.refusal import REFUSAL_FILE, load_gate, write_refusal

    _, tokenizer = load_generator(settings)
    refusal = "Hi there!\n\nI couldn't find that."
    encode = lambda text: tuple(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    assert load_gate(tmp_path, tokenizer, 0.5) is None  # an adapter trained without refusals: never gated
    write_refusal(tmp_path, refusal, tokenizer, ["Hi there!\n\nGo to Settings. [doc-a]", "Hello! Yes. [doc-b]"])
    assert json.loads((tmp_path / REFUSAL_FILE).read_text())["opening"] == "Hi there!\n\n"
    gate = load_gate(tmp_path, tokenizer, 0.5)
    assert gate is not None and gate.min_prob == 0.5 and gate.tokens == encode(refusal)
    assert gate.opening == len(encode("Hi there!\n\n")) and 0 < gate.opening < len(gate.tokens)
    write_refusal(tmp_path, refusal, tokenizer)  # no answers to compare with: every token is gated
    assert load_gate(tmp_path, tokenizer, 0.5).opening == 0
    assert load_gate(tmp_path, tokenizer, 0.0) is None  # refusal_min_prob 0: plain decoding
    (tmp_path / REFUSAL_FILE).write_text("{not json")
    assert load_gate(tmp_path, tokenizer, 0.5) is None and "not gated" in caplog.text
