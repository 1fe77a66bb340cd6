# Two commands on a fresh machine: `make run` (serve the demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:9001
DEMO   ?= .demo
# make demo: Envoy + authz + echo upstream on 127.0.0.1, away from `make run` (9001/9002)
# and the quick start's Envoy (10000/9901). Override any of them: make demo DEMO_ENVOY_PORT=18080
DEMO_STATE            ?= deploy/demo/.state
DEMO_ENVOY_PORT       ?= 10080
DEMO_ENVOY_ADMIN_PORT ?= 10081
DEMO_AUTHZ_PORT       ?= 10091
DEMO_AUTHZ_ADMIN_PORT ?= 10092
DEMO_UPSTREAM_PORT    ?= 10093
DEMO_STORE_PORT       ?= 10094
DEMO_OTLP             ?= auto

.PHONY: run test lint typecheck protos bench clean demo demo-stop lock docs docs-serve

# Every install takes its versions from constraints.txt (make lock refreshes it).
PIP_INSTALL := $(PY) -m pip install --quiet -c constraints.txt

$(VENV)/.installed: pyproject.toml setup.py constraints.txt authz/grpc/_wire.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[test,lint,bench,fuzz,docs]'
	@# xds-protos (test-only) ships older copies of opentelemetry-proto's and googleapis-common-protos'
	@# modules over theirs, depending on install order: put the owners' files back.
	$(PIP_INSTALL) --force-reinstall --no-deps $$($(PY) -c "import importlib.metadata as m; \
	  print(' '.join(f'{d}=={m.version(d)}' for d in ('opentelemetry-proto', 'googleapis-common-protos')))")
	$(PY) -c "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope"
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
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

## protos: regenerate authz/grpc/_proto from protos/ (pinned grpcio-tools): descriptor set, modules, stubs;
## authz/grpc/_proto/__init__.py, which loads the set, is written by hand and kept
protos: $(VENV)/.installed-dev
	$(PY) protos/generate.py

## lock: resolve the newest versions pyproject.toml allows in a scratch venv and write constraints.txt
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[test,lint,bench,fuzz,docs]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -vi '^envoy-jwe-authz'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache site

## bench: benchmarks (not tests): numbers and ratios against baselines measured in the same run
## (about 10 minutes; wrk and h2load from apt; writes bench/results/*.json and docs/bench.png)
bench: $(VENV)/.installed-dev
	$(PIP_INSTALL) -e '.[bench]'
	command -v wrk >/dev/null && command -v h2load >/dev/null && command -v redis-server >/dev/null || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nghttp2-client redis-server; }
	@# run.py calls bench/bench_tracing.py and bench/bench_token.py first (-> bench/results/tracing.json,
	@# token.json), then the servers, Envoy, wrk and h2load scenarios (-> results.json, docs/bench.png)
	$(PY) bench/run.py --json bench/results/results.json --chart docs/bench.png

## demo: local stack (real Envoy, authz, echo upstream) in the background; prints a table of requests
demo: $(VENV)/.installed-dev
	$(PY) deploy/demo/stack.py start --state $(DEMO_STATE) --otlp $(DEMO_OTLP) \
	  --envoy-port $(DEMO_ENVOY_PORT) --envoy-admin-port $(DEMO_ENVOY_ADMIN_PORT) \
	  --authz-port $(DEMO_AUTHZ_PORT) --authz-admin-port $(DEMO_AUTHZ_ADMIN_PORT) \
	  --upstream-port $(DEMO_UPSTREAM_PORT) --store-port $(DEMO_STORE_PORT)

## demo-stop: end the processes `make demo` started (by pid)
demo-stop:
	$(PY) deploy/demo/stack.py stop --state $(DEMO_STATE)

## fuzz: coverage-guided fuzzing (atheris) of each target in fuzz/ for FUZZ_SECONDS (default 60);
## prints executions and time per target; crashes go to fuzz/crashes/ (git-ignored), exit 1 if any
FUZZ_SECONDS ?= 60
.PHONY: fuzz

$(VENV)/.installed-fuzz: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[fuzz]'
	touch $@

fuzz: $(VENV)/.installed-fuzz
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS)

## docs: build the documentation site (mkdocs.yml, pages in docs/) into site/, strictly: a broken link,
## a missing anchor or a page outside the navigation fails the build
DOCS_ADDR ?= 127.0.0.1:8000

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs build --strict --site-dir site

## docs-serve: serve the site on DOCS_ADDR (default 127.0.0.1:8000), rebuilt on every change
docs-serve: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs serve --strict --dev-addr $(DOCS_ADDR)
