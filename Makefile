# Entry points for people and CI. `make serve` and `make test` are the two set-up
# commands the README promises; both install what they need on first use.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit lock clean

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## Start the server on the embedded development defaults (SQLite + files under ./data).
serve: $(STAMP)
	$(BIN)/kbs serve --dev

## Lint, type-check and run the whole test suite.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## Regenerate the lock files after editing pyproject.toml dependencies.
lock:
	$(PYTHON) -m venv .lockenv && .lockenv/bin/pip install --quiet uv
	.lockenv/bin/uv pip compile pyproject.toml --python-version 3.11 --python-platform x86_64-manylinux_2_34 --generate-hashes -o requirements.lock -q
	.lockenv/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_34 --generate-hashes -o requirements-dev.lock -q

clean:
	rm -rf $(VENV) .lockenv .mypy_cache .ruff_cache .pytest_cache
