# EV PLUS controller firmware: host-side entry points. `make help` lists them.

BOARD ?= unix_sim
PORT ?=
VENV := .venv
PY := $(VENV)/bin/python
MICROPYTHON := $(VENV)/bin/micropython
# The unit tests' names fill MicroPython's name pools, which double and are never freed:
# a whole run needs more than the port's default 2 MB heap (unix_port_tests/runner.py).
UNIT := $(MICROPYTHON) -X heapsize=4M unix_port_tests/runner.py
# The firmware processes mostly wait on their 10 ms ticks: four test workers share two
# cores (about 70 % busy) without starving them, each handed one test at a time, the longest first
# (tests/conftest.py). PYTEST_ARGS="-n 0" runs the suite in one process.
PYTEST_ARGS ?= -n 4 --maxschedchunk 1
RUN_ARGS ?=
BENCH_ARGS ?=
# make soak: the long soak, the power-cut campaign, then the charging core's invariant
# checker for INVARIANT_S seconds of wall time (docs/soak.md, docs/invariants.md).
DURATION ?= 3600
CUTS ?= 300
SEED ?= 1
INVARIANT_S ?= 600

MCU_SOAK_S ?= 150

.PHONY: help setup test test-unix test-host run build deploy ota bench soak mcu lint clean distclean

help:
	@echo "make run                        start the simulated charger (web app http://127.0.0.1:8080, simulator 127.0.0.1:8090)"
	@echo "    RUN_ARGS=\"--entry build/unix_sim/main.py\"   ... from a built tree"
	@echo "make test                       unix-port tests, then the host-side pytest suite"
	@echo "make build BOARD=unix_sim       compile into build/BOARD/ (also esp32_evplus, stm32_evplus, stm32h7_evplus)"
	@echo "make deploy BOARD=... PORT=...  copy build/BOARD/ to a board with mpremote and reset it"
	@echo "make ota BOARD=...              build the upgrade file build/EVPLUS_BOARD.bin and print its MD5"
	@echo "make bench                      every benchmark, one table -> build/bench/report.json"
	@echo "make soak DURATION=3600 CUTS=300 SEED=1   soak, then power cuts -> build/soak.json, build/powercut.json,"
	@echo "    INVARIANT_S=600                          then the charging core's invariant checker for that long"
	@echo "make mcu MCU_SOAK_S=150         the firmware frozen into a 32-bit MicroPython (as on a board), soaked:"
	@echo "                                   its heap -> build/mcu/report.json (FEATURES=1: what each feature costs)"
	@echo "make lint                       ruff on tests/ and tools/, basedpyright on the real boards' code"
	@echo "make clean | distclean          remove build output and caches | also .venv/ and data/"

# Always runs; does nothing when the packages and .venv/ are already up to date.
setup:
	@bash tools/setup.sh

# pytest exits 5 when it ran no test: that fails the build, and says why.
PYTEST = $(PY) -m pytest tests/ $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest ran no test" >&2; fi; exit $$status

# The unix-port unit tests (about 75 s of one core) and the invariant checker (about 95 s)
# run as pytest items beside the host tests (tests/test_unit_suite.py,
# tests/test_invariant_checker.py), not before them.
test: setup
	@$(PYTEST)

test-unix: setup
	$(UNIT)

test-host: setup
	@$(PYTEST)

# The charger runs its modules compiled, as on a board: build first (a few seconds).
run: setup
	@$(PY) tools/build.py --board unix_sim >/dev/null
	@$(PY) tools/run.py --stop-with-parent $(RUN_ARGS)

build: setup
	$(PY) tools/build.py --board $(BOARD)

ota: build
	$(PY) tools/mkbin.py firmware --board $(BOARD) -o build/EVPLUS_$(BOARD).bin

deploy: build
	@test -n "$(PORT)" || { echo "make deploy: set PORT, e.g. PORT=/dev/ttyUSB0" >&2; exit 2; }
	cd build/$(BOARD) && ../../$(VENV)/bin/mpremote connect $(PORT) fs cp -r $$(ls -A | grep -vx manifest.py) : + reset

# Every benchmark, then one summary table (build/bench/report.json). BENCH_ARGS="--quick"
# for a smoke run, "--only http,ocpp" for a subset.
bench: setup
	$(PY) tools/bench_report.py $(BENCH_ARGS)

# Both exit non-zero on a violation; each violation names the seed that replays it.
soak: setup
	$(PY) tools/soak.py --duration $(DURATION) --seed $(SEED) --json build/soak.json
	$(PY) tools/powercut.py --cuts $(CUTS) --seed $(SEED) --json build/powercut.json
	INV_S=$(INVARIANT_S) INV_SEED=$(SEED) $(MICROPYTHON) unix_port_tests/runner.py test_invariants

# The 32-bit frozen build (tools/mcu.py; cached in build/mcu/, rebuilt when the firmware
# changes), then a soak with every feature on against it, or the per-feature table.
mcu: setup
	$(PY) tools/mcu.py --soak-s $(MCU_SOAK_S) $(if $(FEATURES),--features)

lint: setup
	$(VENV)/bin/ruff check tests/ tools/
	$(PY) tools/typecheck.py

clean:
	rm -rf build/ .pytest_cache/ .ruff_cache/
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)/ data/
