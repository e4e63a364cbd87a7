# Podium: `make run` (the daemon on the embedded default), `make test`, `make lint`.
# The emulators (DESIGN.md §2) are started around the command by daemon/emulators.py.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WITH_EMULATORS := $(PY) -m daemon.emulators run --
PYTEST_ARGS ?=

.PHONY: venv test lint run bench clean

venv: $(STAMP)

# Re-install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: venv lint
	$(WITH_EMULATORS) $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

run: venv
	$(VENV)/bin/podium up

bench: venv
	$(WITH_EMULATORS) $(PY) bench/engine.py

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
