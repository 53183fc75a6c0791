# Every target builds its own virtual environment from the lock file (uv.lock), so a fresh
# clone needs only python3: uv is taken from PATH, or installed once into .tools/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synced
TOOLS  := .tools
UV_VERSION := 0.13.9
UV     ?= $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
LATEST := .venv-latest
# The official Claude Desktop bundle CLI, pinned, installed from npm into .tools/npm/.
MCPB_VERSION := 2.1.2
MCPB   := $(TOOLS)/npm/node_modules/.bin/mcpb

# uv uses this machine's python3 and never downloads an interpreter of its own.
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never

.PHONY: test test-latest docs lint bench demo clean test-clients reliability fuzz soak lock mcpb

$(TOOLS)/bin/uv:
	@echo "==> uv is not on PATH: installing uv $(UV_VERSION) into $(TOOLS)/"
	@$(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(MCPB):
	@command -v npm >/dev/null || { echo "make mcpb needs npm (Node.js): https://nodejs.org"; exit 1; }
	@echo "==> installing @anthropic-ai/mcpb $(MCPB_VERSION) into $(TOOLS)/npm/"
	@npm install --prefix $(TOOLS)/npm --no-audit --no-fund --no-save --silent @anthropic-ai/mcpb@$(MCPB_VERSION)

$(STAMP): uv.lock pyproject.toml | $(UV)
	@echo "==> installing the locked dependencies into $(VENV)/ (uv sync --locked)"
	@$(UV) sync --locked --extra dev
	@touch $(STAMP)

# After changing the dependencies in pyproject.toml: `make lock`, then `make test test-latest`.
lock: | $(UV)
	$(UV) lock

# Two workers (pytest-xdist), each with its own emulator; every test has its own folders
# and state. The suite takes half as long on the two cores CI has (TEST_WORKERS=1: one).
TEST_WORKERS ?= 2

test: $(STAMP)
	@echo "==> running the test suite ($(TEST_WORKERS) workers)"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The same suite against the newest versions pyproject.toml allows, in an environment of its
# own (not the lock's): drift in anthropic, mcp or httpx2 shows here before users see it.
test-latest: | $(UV)
	@echo "==> installing the newest allowed versions into $(LATEST)/ (ignoring uv.lock)"
	@$(UV) venv --quiet --allow-existing $(LATEST)
	@VIRTUAL_ENV=$(LATEST) $(UV) pip install --quiet --refresh --upgrade -e ".[dev]"
	@$(LATEST)/bin/python -c "from importlib.metadata import version as v; print('==> testing with', ', '.join(f'{p} {v(p)}' for p in ('anthropic', 'httpx2', 'mcp', 'pydantic', 'watchdog')))"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

# Regenerates the docs pages that are written from the program (tests/test_docs.py checks them).
docs: $(STAMP)
	$(BIN)/python tests/support/configuration_doc.py > docs/configuration.md

lint: $(STAMP)
	$(BIN)/ruff check server tests bench bundle
	$(BIN)/ruff format --check server tests bench bundle
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python bundle/check.py

# The Claude Desktop bundle: staged in build/mcpb/, checked by `mcpb validate`, packed into
# dist/corpus-cache-<version>.mcpb (docs/clients.md).
mcpb: $(STAMP) | $(MCPB)
	$(BIN)/python bundle/build.py --mcpb $(MCPB)

demo: $(STAMP)
	@echo "==> serving corpora/handbook over MCP and asking two questions"
	$(BIN)/corpus-cache demo --corpus corpora/handbook

bench: $(STAMP)
	$(BIN)/python bench/emulator_overhead.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/tiers.py --quick --json bench/results/tiers-quick.json
	$(BIN)/python bench/planning.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/ledger_audit.py --json bench/results/ledger-audit.json
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
# through a real MCP client, 10,000 generated folder trees through the scan and planner
# (and a share of each in the other protocol era, on resources, and through the tools), and
# 10,000 mutated PDFs and 10,000 mutated DOCX files through extraction.
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
	rm -rf $(VENV) $(LATEST) $(TOOLS) .clients .pytest_cache .mypy_cache .ruff_cache .hypothesis
