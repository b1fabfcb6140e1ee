# TrueConf Calendar Connector — the two commands of README.md and what they stand on.
#   make run    install, then start the whole product with emulators (tc-calendar sandbox)
#   make test   install, then lint, type-check and run every test
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
PACKAGES := proto libs/tccal $(sort $(dir $(wildcard services/*/pyproject.toml emulators/*/pyproject.toml))) sandbox .
# Our import packages (libs/*/src/<pkg>, services/*/src/<pkg>, emulators/*/src/<pkg>, sandbox/src/<pkg>), type-checked
# strictly.
PKGS := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard libs/*/src/*/__init__.py services/*/src/*/__init__.py emulators/*/src/*/__init__.py sandbox/src/*/__init__.py)))))
STAMP := $(VENV)/.installed
# An independent EWS client (ews-javascript-api, npm) that drives the Exchange emulator in the tests.
EWS_JS := tests/interop/ews-js
EWS_JS_STAMP := $(EWS_JS)/node_modules/.installed
# prometheus-operator's CRD schemas (npm) the Helm chart's ServiceMonitor and PrometheusRule are validated against.
PROM_OP := tests/deploy/prometheus-operator
PROM_OP_STAMP := $(PROM_OP)/node_modules/.installed

.PHONY: install run test lint typecheck pytest faults scale clean bench bench-report bench-smoke

install: $(STAMP) $(EWS_JS_STAMP) $(PROM_OP_STAMP)

$(STAMP): pyproject.toml constraints.txt $(wildcard */pyproject.toml */*/pyproject.toml) $(wildcard proto/trueconf/calendar/v1/*.proto)
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, this is {sys.version}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --constraint constraints.txt --reinstall-package tc-calendar-contracts $(foreach p,$(PACKAGES),-e $(p))
# Bytecode of the dependencies and of our own (editable) sources, made once here: where PYTHONDONTWRITEBYTECODE is
# set (as on this kind of machine) Python caches nothing at import, and every process the tests start compiled all
# it imports again (1.5-2 s of CPU per process).
	$(BIN)/python -m compileall -q -j 0 proto libs services emulators sandbox
	touch $@

$(EWS_JS_STAMP): $(EWS_JS)/package.json $(EWS_JS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 18+) is needed for the EWS interop tests: apt-get install nodejs npm" >&2; exit 1; }
	npm ci --prefix $(EWS_JS) --no-audit --no-fund --loglevel=error
	touch $@

$(PROM_OP_STAMP): $(PROM_OP)/package.json $(PROM_OP)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 18+) is needed for the Helm chart's monitoring tests: apt-get install nodejs npm" >&2; exit 1; }
	npm ci --prefix $(PROM_OP) --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/tc-calendar sandbox --state-dir .sandbox --ready-file .sandbox/ready.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy $(foreach p,$(PKGS),-p $(p))

pytest: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

# The fault suite at the issue's size (10,000 changes per scenario, ~1 h on 2 cores); TC_FAULTS_LOAD /
# TC_FAULTS_CONVERGE_S override; the table goes to tests/faults/results/faults-<load>-<utc>.json and .md.
faults: install
	load=$${TC_FAULTS_LOAD:-10000}; TC_FAULTS_LOAD=$$load \
	  TC_FAULTS_REPORT=$${TC_FAULTS_REPORT:-tests/faults/results/faults-$$load-$$(date -u +%Y%m%dT%H%M%SZ).json} \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -rxX -o timeout=7200 tests/faults

# The scale-out fault suite (tests/scale/test_scale_faults.py, issue #18) at the issue's size: 3 ews-ingest, 3 tcs-gateway
# and 2 sync-engine and 2 licensing replicas on 3 NATS nodes, 2,000 mailboxes (passed in 7.6 min on a quiet machine,
# bench/README.md §7; `make test` runs it at 60).
# TC_SCALE_MAILBOXES / TC_SCALE_RATE (changes per second) / TC_SCALE_ENGINES / TC_SCALE_ROLLING (serial here, waves
# in `make test`) override; the measured times go to
# tests/scale/results/scale-<mailboxes>-<utc>.json.
scale: install
	n=$${TC_SCALE_MAILBOXES:-2000}; TC_SCALE_MAILBOXES=$$n TC_SCALE_ROLLING=$${TC_SCALE_ROLLING:-serial} \
	  TC_SCALE_REPORT=$${TC_SCALE_REPORT:-tests/scale/results/scale-$$n-$$(date -u +%Y%m%dT%H%M%SZ).json} \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -s tests/scale/test_scale_faults.py

# Benchmarks against their baselines at the sizes of issues #8 and #21 (bench/README.md); ~40 min on 2 cores,
# results in bench/results/. `live` holds #21.3's burst of 2,000 CreateItem and the lone meeting during it;
# bench_callist.py #21.4's 20,000 occurrences and the reconnect of 2,000 users; bench_engine_reference.py #21.2's
# engine beside the engine the issue was filed on (three alternating pairs; the reference is installed once, by its own
# `make install`, under ~/.cache/tc-calendar-bench-reference). Then bench/report.py prints and writes
# bench/results/report-<utc>.md: each of #21's figures beside last turn's and the target, met / not met. A failed
# benchmark does not stop the others (`-`): the report counts only this run's results (--since), says "not run" for
# it, and fails `make bench` (--require-all). Smaller runs: bench/bench.py live --mailboxes 50, and so on.
bench: BENCH_SINCE := $(shell date -u +%Y%m%dT%H%M%SZ)
bench: install
	-$(BIN)/python bench/bench.py live --mailboxes 2000
	-$(BIN)/python bench/bench.py idle --mailboxes 2000
	-$(BIN)/python bench/bench.py initial-sync --mailboxes 2000 --timeout 1800
	-$(BIN)/python bench/bench_engine_reference.py --pairs 3 --changes 5000
	-$(BIN)/python bench/bench_callist.py --occurrences 20000 --users 2000
	$(BIN)/python bench/report.py --since $(BENCH_SINCE) --require-all

# The report alone, over the newest result of each kind in bench/results/ whenever it was written.
bench-report: install
	$(BIN)/python bench/report.py

# The smallest run of each benchmark; `make test` runs it too (tests/bench/test_bench_smoke.py).
bench-smoke: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/bench

clean:
	rm -rf $(VENV) .venv-helm proto/gen .sandbox $(EWS_JS)/node_modules $(PROM_OP)/node_modules
