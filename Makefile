# Set-up is part of every entry point: a fresh Debian machine needs nothing else.
# PYTHON: the interpreter the venv is made from (any 3.11+; default Debian's /usr/bin/python3
# where it exists, else python3 on PATH). Everything then runs the venv's own interpreter.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) $(shell command -v python3))
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: run test bench fuzz soak deps lint clean

run: deps
	$(VENV)/bin/gcsctl demo

test: deps
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: deps
	$(PY) -m bench

# 10^6 fuzzed frames: the coverage-guided in-process fuzzer of the protocol core, then the
# mutation fuzzer against a local-mode agent (root); each prints frames, rate and crashes
# and exits non-zero on any violation. PYGCS_FUZZ_PROTOCOL_FRAMES, PYGCS_FUZZ_FRAMES: the
# budgets; PYGCS_FUZZ_SEED: the seed of both.
fuzz: deps
	$(PY) tests/fuzz_protocol.py --frames $${PYGCS_FUZZ_PROTOCOL_FRAMES:-900000}
	$(PY) tests/fuzz_bridge.py --frames $${PYGCS_FUZZ_FRAMES:-100000}

# Ten minutes of containers and execs with chaos (kills, host disconnects, a full scratch
# disk) against a local-mode agent (root); fails on any leak or lost notification.
# PYGCS_SOAK_SECONDS, PYGCS_SOAK_SEED; the plot: build/soak.svg.
soak: deps
	@mkdir -p build
	$(PY) tests/soak.py --seconds $${PYGCS_SOAK_SECONDS:-600} --svg build/soak.svg --json build/soak.json

deps:
	@bash scripts/deps.sh "$(PYTHON)" "$(VENV)"

clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
