"""Builders for tiny random-weight models used by the fast tests (seconds, no downloads).

* a Llama-architecture causal LM with a byte-level BPE tokenizer trained on the sample KB and a ChatML
  chat template (the same template family as SmolLM2), and
* a 2-layer BERT sentence-transformer with a WordPiece vocabulary from the sample KB.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from core.settings import SAMPLE_DIR

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((SAMPLE_DIR / "kb").iterdir())]
    texts.append((SAMPLE_DIR / "system_prompt.txt").read_text(encoding="utf-8"))
    return texts


def build_tiny_causal_lm(folder: Path, *, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Write a ~0.3M-parameter LlamaForCausalLM and its tokenizer to ``folder``. At the default init its greedy
    answers are newlines only; a wider ``initializer_range`` (e.g. 0.3) gives varied text that depends on the prompt."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sentence_transformer(folder: Path, *, seed: int = 0, extra_texts: Sequence[str] = ()) -> Path:
    """Write a 2-layer, 32-dim BERT with mean pooling as a sentence-transformers folder; ``extra_texts`` add
    their words and characters to the vocabulary (e.g. Japanese, for a "multilingual" tiny model)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    texts = [*_corpus(), *extra_texts]
    words = sorted({w for text in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())})
    hf_dir = folder.parent / f"{folder.name}-hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    (hf_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(hf_dir / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    model = SentenceTransformer(str(hf_dir), device="cpu")  # plain HF folder -> Transformer + mean pooling
    model.max_seq_length = 256
    model.save(str(folder))
    return folder
