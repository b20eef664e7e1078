# Two commands set everything up on a fresh machine: `make demo` (the end-to-end run on the local cloud)
# and `make test` (lint, types and the whole test suite). Everything else builds on the same .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_VERSION_CHECK := 1
export CDK_DISABLE_CLI_TELEMETRY := true
CDK := npx --no-install cdk
CDK_FLAGS := --no-notices

.PHONY: help install test unit lint types bench chaos synth deploy diff demo clean

help:
	@echo "make demo    - set up, synthesize the stack, run it end to end on the local cloud, check convergence"
	@echo "make test    - set up, then lint, type-check and run every test"
	@echo "make demo ARGS='--catalog 0 --items 500'  - a smaller demo; python -m localcloud demo --help lists the options"
	@echo "make bench   - benchmarks: runtime, memory, the shared budget, its learning (simulated), bulk conversion, then on the"
	@echo "               local cloud (~45 min; ARGS=--quick for ~5 min); results in bench/results/"
	@echo "make chaos   - ~20,000 changes under injected faults on the local cloud, with a convergence check (~10 min)"
	@echo "make synth   - synthesize the CDK app offline into cdk.out/"
	@echo "make deploy  - deploy with the pinned CDK CLI (needs AWS credentials; see docs/deploy.md)"

$(STAMP): requirements.txt requirements-dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(NODE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: $(STAMP)
	$(VENV)/bin/mypy lambda_src infra localcloud ops bench app.py tests

test: install lint types
	$(VENV)/bin/pytest

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

demo: install
	$(PY) -m localcloud demo $(ARGS)

bench: $(STAMP)
	$(PY) -m bench.bench_runtime $(ARGS)
	$(PY) -m bench.bench_memory $(ARGS)
	$(PY) -m bench.bench_budget $(ARGS)
	$(PY) -m bench.bench_learning $(ARGS)
	$(PY) -m bench.bench_bulk $(ARGS)
	$(PY) -m bench.bench_localcloud $(ARGS)

chaos: install
	$(PY) -m localcloud chaos $(ARGS)

synth: install
	$(CDK) synth $(CDK_FLAGS) --quiet

diff: install
	$(CDK) diff $(CDK_FLAGS)

deploy: install
	$(CDK) deploy $(CDK_FLAGS) --require-approval broadening

clean:
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache .hypothesis
