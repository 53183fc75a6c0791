# Every target builds its own virtual environment, so a fresh clone needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint bench demo clean test-clients reliability fuzz soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/corpus-cache demo --corpus corpora/handbook

bench: $(STAMP)
	$(BIN)/python bench/emulator_overhead.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/planning.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/traces.py --kind edit-heavy --questions 150 --out bench/results/edit-heavy.jsonl
	$(BIN)/python bench/cost.py --trace bench/results/edit-heavy.jsonl --json bench/results/cost-edit-heavy.json
	$(BIN)/python bench/traces.py --kind rare --questions 500 --out bench/results/rare.jsonl
	$(BIN)/python bench/cost.py --trace bench/results/rare.jsonl --json bench/results/cost-rare.json
	$(BIN)/python bench/traces.py --kind bursty --questions 60 --out bench/results/bursty.jsonl
	$(BIN)/python bench/cost.py --trace bench/results/bursty.jsonl --json bench/results/cost-bursty.json
	$(BIN)/python bench/traces.py --kind sparse --questions 60 --out bench/results/sparse.jsonl
	$(BIN)/python bench/cost.py --trace bench/results/sparse.jsonl --json bench/results/cost-sparse.json

# The heavy versions of the reliability tests (a few minutes): 100 SIGKILLs of the server
# during ledger writes; 20 runs of 50 questions racing edits.
reliability: $(STAMP)
	CORPUS_CACHE_KILL_ROUNDS=100 $(BIN)/python -m pytest -q -s tests/test_kill_during_writes.py
	CORPUS_CACHE_CONSISTENCY_ROUNDS=20 $(BIN)/python -m pytest -q tests/test_concurrent_asks.py

# The fuzz targets at full size (several minutes): 10,000 cases of arguments to every tool
# through a real MCP client, and 10,000 generated folder trees through the scan and planner
# (and a share of each in the other protocol era, on resources, and through the tools).
fuzz: $(STAMP)
	CORPUS_CACHE_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q tests/fuzz --hypothesis-show-statistics

# An hour of simulated traffic with edits and API faults, on the emulator's virtual clock,
# in a few minutes: memory and open file descriptors must stay flat.
soak: $(STAMP)
	$(BIN)/python bench/soak.py --json bench/results/soak.json

# Opt-in, not part of `test`: installs the MCP Inspector and Claude Code from npm into .clients/.
test-clients: $(STAMP)
	$(BIN)/python tests/clients/run_clients.py

clean:
	rm -rf $(VENV) .clients .pytest_cache .mypy_cache .ruff_cache .hypothesis
