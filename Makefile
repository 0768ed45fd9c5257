# The README's two commands: `make demo` and `make test`.  Both run setup first (idempotent).
SHELL := /bin/bash
VENV_PY = .venv/bin/python
export FLD_HOME ?= $(CURDIR)/fld_home
export SPARK_LOCAL_IP = 127.0.0.1
export PYTHONUNBUFFERED = 1

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup.sh >/dev/null

demo: setup
	$(VENV_PY) -m jobs.demo

test: setup
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV_PY) bench/ingest_throughput.py
	$(VENV_PY) bench/predictor_throughput.py --device cpu
	$(VENV_PY) bench/train_throughput.py --size tiny --batch 16

clean:
	rm -rf fld_home
