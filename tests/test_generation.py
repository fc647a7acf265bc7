from __future__ import annotations

from core.generation import generate
from core.models import load_generator
from core.prompt import load_template, render_prompt
from core.settings import Settings

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
    import torch

    from core.generation import AnswerRepetitionPenalty

    prompt, answer = [5, 6, 7], [8]
    scores = torch.tensor([[0.0, 0, 0, 0, 0, 2.0, 2.0, -2.0, 2.0, -2.0]])
    out = AnswerRepetitionPenalty(2.0, prompt_length=len(prompt))(torch.tensor([prompt + answer]), scores.clone())
    assert out[0, 5:8].tolist() == [2.0, 2.0, -2.0]  # prompt tokens untouched
    assert out[0, 8].item() == 1.0 and out[0, 9].item() == -2.0  # the answer's token divided; unseen untouched
    untouched = AnswerRepetitionPenalty(2.0, prompt_length=4)(torch.tensor([prompt + answer]), scores.clone())
    assert torch.equal(untouched, scores)  # nothing generated yet


def test_generate_applies_the_configured_penalty_scope(settings) -> None:
    from core.generation import _repetition_penalty

    assert "logits_processor" in _repetition_penalty(settings.generation, 10)
    both = settings.generation.model_copy(update={"repetition_penalty_scope": "prompt_and_answer"})
    assert _repetition_penalty(both, 10) == {"repetition_penalty": settings.generation.repetition_penalty}
    off = settings.generation.model_copy(update={"repetition_penalty": 1.0})
    assert _repetition_penalty(off, 10) == {"repetition_penalty": 1.0}
