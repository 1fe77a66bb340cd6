# Two commands on a fresh machine: `make run` (serve the demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:9001
DEMO   ?= .demo

.PHONY: run test lint typecheck protos bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

## run: install, make demo keys/config/token issuer in .demo/, serve on 127.0.0.1:9001
run: $(VENV)/.installed
	$(VENV)/bin/authz demo --dir $(DEMO) --listen $(LISTEN)
	$(VENV)/bin/authz serve --config $(DEMO)/config.yaml

## test: install what the tests need and run them all
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

## protos: wipe and regenerate authz/_proto from protos/ (pinned grpcio-tools)
protos: $(VENV)/.installed-dev
	$(PY) protos/generate.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache

## bench: benchmarks (not tests): numbers and ratios against a baseline measured in the same run
bench: $(VENV)/.installed-dev
	mkdir -p bench/results
	$(PY) bench/bench_tracing.py --json bench/results/tracing.json
