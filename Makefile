# Stockade: `make run` sets up this host and starts the server; `make test` runs the suite.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup run test lint typecheck unit integration bench bench-density sync ts-types clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/stockade serve $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests scripts bench

typecheck: setup
	$(VENV)/bin/mypy

test: setup
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -p no:cacheprovider -q

unit: setup
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	$(VENV)/bin/pytest -q tests/integration

bench: setup
	$(PY) -m bench.run $(ARGS)

# Many idle sandboxes at once: memory per sandbox, API latency, exec into them.
bench-density: setup
	$(PY) -m bench.density $(ARGS)

# Regenerate the sync SDK from the async source.
sync:
	$(PY) scripts/gen_sync.py

# Regenerate the TypeScript SDK's API types from this checkout's server code.
ts-types: setup
	bash sdk/typescript/scripts/gen-from-checkout.sh $(PY)
