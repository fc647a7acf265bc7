"""The catastrophic-forgetting check: an adapter that changes nothing scores as the base model; one that wrecks
the model is caught by both scores; the general set is text shipped with CPython, not ours."""

from __future__ import annotations

import pytest

from core.models import load_generator
from core.settings import ForgettingSettings, Settings
from training.forgetting import (
    forgetting_check,
    general_instructions,
    general_passages,
    replay_instructions,
    replay_rows,
)

CFG = ForgettingSettings(passages=6, passage_chars=300, instructions=3, max_new_tokens=8)


@pytest.fixture
def talkative(settings: Settings, talkative_generator) -> Settings:
    """Greedy answers that are text (the default tiny model answers newlines: agreement would be vacuous)."""
    return settings.model_copy(update={"models": settings.models.model_copy(update={"generator": str(talkative_generator)})})


def peft_model(settings: Settings, scale: float):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_generator(settings, fresh=True)
    # lm_head too: the random tiny model predicts near-uniformly, and only its head moves that much.
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale) if scale else p.zero_()
    return model, tokenizer


def test_the_general_set_is_prose_from_the_python_reference_manual() -> None:
    passages = general_passages(24, 600)
    assert len(passages) == 24 and len(set(passages)) == 24 and all(len(p) >= 200 for p in passages)
    assert not any("::=" in p for p in passages)
    assert general_passages(24, 600) == passages  # fixed: runs are comparable
    assert all(i.startswith("In two sentences, explain") for i in general_instructions(8))


@pytest.mark.parametrize("scale, warned", [(0.0, False), (5.0, True)])
def test_a_harmless_adapter_passes_and_a_destructive_one_is_flagged(talkative: Settings, scale: float, warned: bool) -> None:
    model, tokenizer = peft_model(talkative, scale)
    result = forgetting_check(model, tokenizer, CFG)
    ppl = result["perplexity"]
    if not warned:  # lora_B = 0: the adapter is the identity
        assert ppl["base"] == ppl["adapter"] and ppl["change"] == 0
        assert result["instruction_agreement_rouge_l"]["mean"] == 1.0 and result["warnings"] == []
    else:
        assert ppl["adapter"] > ppl["base"] * 1.1 and ppl["change"] > CFG.max_perplexity_increase
        assert result["instruction_agreement_rouge_l"]["mean"] < 1.0
        assert any("perplexity" in w for w in result["warnings"])
    assert all(e["base"] for e in result["examples"])  # real text was compared
    assert result["passages"] == 6 and result["instructions"] == 3 and "pydoc_data" in result["source"]


def test_replay_trains_on_other_topics_than_the_check_scores(talkative: Settings) -> None:
    checked = general_instructions(8)
    replay = replay_instructions(40, held_out=8)
    topic = lambda text: text.split("explain ")[-1].split(" in Python")[0].split("about ")[-1].split("describe ")[-1]  # noqa: E731
    assert len(replay) == 40 and not {topic(c) for c in checked} & {topic(r) for r in replay}
    model, tokenizer = load_generator(talkative, fresh=True)
    rows = replay_rows(model, tokenizer, 3, 8, max_new_tokens=6)
    assert rows and all(r["variant"] == "replay" and r["completion"].endswith(tokenizer.eos_token) for r in rows)
    assert all("Python" in r["prompt"] for r in rows)
