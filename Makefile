# Set-up is part of every entry point: a fresh Debian machine needs nothing else.
PYTHON ?= $(shell command -v python3)
PY := $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
export PYTHONPATH := $(CURDIR)

.PHONY: run test bench deps lint clean

run: deps
	$(PY) -m gcs.host.cli demo

test: deps
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: deps
	$(PY) -m bench

deps:
	@bash scripts/deps.sh "$(PY)"

clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
