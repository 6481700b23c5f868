# `make demo` and `make test` each set up .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned: with no torch present, an unpinned requirement pulls the newest
# CUDA build (several GB). Override for your machine, e.g. make test TORCH_SPEC="torch>=2.1".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench sets models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/timetuner demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Rebuild the shipped tuned sets and tuned_sets/index.yaml (tens of minutes on 2 cores).
sets: $(STAMP)
	$(BIN)/python -m timetuner_plugins.build_sets

# Retrain the bundled models from their seeds (about 30 minutes on 2 cores).
models: $(STAMP)
	$(BIN)/python -m timetuner_plugins.training all

clean:
	rm -rf $(VENV) out .pytest_cache
