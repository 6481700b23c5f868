# `make demo` and `make test` each set up .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned: with no torch present, an unpinned requirement pulls the newest
# CUDA build (several GB). Override for your machine, e.g. make test TORCH_SPEC="torch>=2.1".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The diffusers extra, for the test suite only (about 70 s and 260 MB more on 2 cores; `make demo` does not need it)
DIFFUSERS_STAMP := $(VENV)/.installed-diffusers

# The k-diffusion environment: PyPI's torch build (torchvision needs it; several GB), cached outside the repo.
KD_VENV ?= $(HOME)/.cache/timetuner/kdiffusion-venv
KD_STAMP := $(KD_VENV)/.installed-$(shell cat requirements.txt Makefile | sha256sum | cut -c1-12)

.PHONY: install demo lint test test-slow test-kdiffusion bench sets models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,demo]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/timetuner demo

$(DIFFUSERS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,demo,diffusers]"
	touch $@

# ruff's lint and format check (settings in pyproject.toml); `$(BIN)/ruff format .` fixes the formatting.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The diffusers tests fail instead of skipping here: this target installs the extra. Tests marked slow (a few
# multi-minute subprocess and resume runs) are left to `make test-slow`; CI runs both.
test: $(DIFFUSERS_STAMP) lint
	TIMETUNER_REQUIRE_DIFFUSERS=1 $(BIN)/python -m pytest -q -m "not slow"

test-slow: $(DIFFUSERS_STAMP)
	TIMETUNER_REQUIRE_DIFFUSERS=1 $(BIN)/python -m pytest -q -m slow

$(KD_STAMP):
	rm -rf $(KD_VENV)
	$(PYTHON) -m venv $(KD_VENV)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(KD_VENV)/bin/python -m pip install --quiet \
		--disable-pip-version-check "torch==2.13.0" "torchvision==0.28.0" "k-diffusion==0.1.1.post1" \
		"setuptools<81" -r requirements.txt "matplotlib>=3.7" "scikit-learn>=1.3" "pytest>=7.4" "hypothesis>=6.80"
	touch $@

# The k-diffusion tests against the real package, run from this checkout (the cached environment holds only
# dependencies); they fail instead of skipping here.
test-kdiffusion: $(KD_STAMP)
	PYTHONPATH=$(CURDIR) TIMETUNER_REQUIRE_KDIFFUSION=1 $(KD_VENV)/bin/python -m pytest -q tests/test_kdiffusion.py

# Rebuild the shipped tuned sets and tuned_sets/index.yaml (tens of minutes on 2 cores).
sets: $(STAMP)
	$(BIN)/python -m timetuner_plugins.experiments.build_sets

# Retrain the bundled models from their seeds (about 30 minutes on 2 cores).
models: $(STAMP)
	$(BIN)/python -m timetuner_plugins.bundled.training all

clean:
	rm -rf $(VENV) out .pytest_cache
