# Two commands on a fresh machine:
#   make run    install, then serve the gateway with the demo registry at http://127.0.0.1:8080/mcp
#   make test   install, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(BIN)/.installed node_modules/.installed

# Loopback only, one user: no API keys needed (TOOLGATE_AUTH=off is refused on other hosts).
run: install
	TOOLGATE_AUTH=$${TOOLGATE_AUTH:-off} $(BIN)/toolgate serve --demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench.proxy_overhead
	$(BIN)/python -m bench.sync_scale

clean:
	rm -rf $(VENV) node_modules .toolgate .pytest_cache .mypy_cache .ruff_cache
