from __future__ import annotations

import pytest

from core.prompt import CONTEXT_HEADER, NO_CONTEXT_NOTE, ContextPassage, load_template, render_prompt
from core.settings import Settings

PASSAGES = [
    ContextPassage("billing-plans", "Plans and pricing", "The Growth plan costs $49 per month."),
    ContextPassage("billing-refunds", "Refunds", "Annual plans are refunded pro rata within 30 days."),
]


def test_context_block_lists_each_passage_with_its_citation_id(settings: Settings) -> None:
    messages = load_template(settings).build_messages("How much is Growth?", PASSAGES)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[-1]["content"]
    assert user.startswith(CONTEXT_HEADER)
    assert "[billing-plans] Plans and pricing\nThe Growth plan costs $49 per month." in user
    assert user.index("[billing-plans]") < user.index("[billing-refunds]") < user.index("How much is Growth?")


def test_retrieval_off_and_nothing_found_are_different_prompts(settings: Settings) -> None:
    template = load_template(settings)
    assert template.build_messages("Hi?", None)[-1]["content"] == "Hi?"
    assert NO_CONTEXT_NOTE in template.build_messages("Hi?", [])[-1]["content"]


def test_few_shot_examples_only_when_asked(settings: Settings) -> None:
    template = load_template(settings)
    plain = template.build_messages("Hi?")[0]["content"]
    shots = template.build_messages("Hi?", with_examples=True)[0]["content"]
    assert plain == template.system_prompt.strip()
    assert shots.startswith(plain) and "Examples of answers" in shots and "Parcelly Support" in shots


def test_history_is_kept_in_order_and_validated(settings: Settings) -> None:
    template = load_template(settings)
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert [m["content"] for m in template.build_messages("c", None, history)][1:] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"history\[0\]\.role"):
        template.build_messages("c", None, [{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="question must not be empty"):
        template.build_messages("   ")


def test_rendered_prompt_ends_where_the_assistant_speaks(settings: Settings) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings.models.generator)
    prompt = render_prompt(tokenizer, load_template(settings).build_messages("How much?", PASSAGES))
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("How much?<|im_end|>\n<|im_start|>assistant\n")
