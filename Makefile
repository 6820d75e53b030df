# The two entry points: `make lab` (the main job) and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
NAVSTAR := $(VENV)/bin/navstar
AGENTS ?= 3
PUBLIC_AGENTS ?= 1
LB ?= auto

.PHONY: setup lab lab-down test lint typecheck unit kernel e2e bench bench-quick clean

setup:
	@scripts/setup.sh

# Build the lab (or find it up), then deploy the seed apps and curl their VIP names.
# (Next: `$(NAVSTAR) lab scenario edge` — marathon-lb on the public agent, siege, autoscale.)
lab: setup
	$(NAVSTAR) lab up --agents $(AGENTS) --public-agents $(PUBLIC_AGENTS) --lb $(LB) --prometheus
	$(NAVSTAR) lab scenario

lab-down:
	$(NAVSTAR) lab down

lint: setup
	$(VENV)/bin/ruff check .

# The contract package and the seams, strictly typed (the list is in pyproject.toml).
typecheck: setup
	$(PY) -m mypy

# ruff, mypy, then the whole suite; pytest prints its summary line and the 15 slowest steps (the 20-minute budget), its exit code is ours.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q --durations=15 tests

unit: setup
	$(PY) -m pytest -q -m unit tests

kernel: setup
	$(PY) -m pytest -q -m kernel tests

e2e: setup
	$(PY) -m pytest -q -m e2e tests

# Every benchmark, results in bench/results/ (latest.json), bench/RESULTS.md and bench/plots/.
bench: setup
	$(PY) -m bench

# The same in under 4 minutes: fewer rounds, no lab scenarios (latest-quick.json).
bench-quick: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
