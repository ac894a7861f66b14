# The project's entry points. `make test` is what CI runs; it sets itself up first.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 4  # the suite mostly waits on VMs, brokers and timers (35% CPU at -n 2 on 2 cores): 4 workers halve its wall time

.PHONY: setup test demo bench vectors clean

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/test.sh $(PYTEST_ARGS)

demo: setup
	@$(VENV)/bin/edgepay demo

bench: setup
	@set -e; for f in bench/[!_]*.py; do echo "== $$f"; $(PY) $$f; done  # _*.py: helpers, not benchmarks

vectors: setup
	$(PY) protocol/vectors/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
