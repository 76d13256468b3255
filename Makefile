# cardiowatch developer entry points. `make test` is the README's (and CI's) test command.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
# Hash of the dependency pins the venv was built from; a change rebuilds it.
VENV_STAMP := $(VENV)/.cardiowatch-deps.sha256
PYTEST_ARGS ?=

.PHONY: help venv kafka-jars test demo lint broker-start broker-stop

help:
	@echo "make venv        create/update .venv from requirements.lock + pyproject.toml"
	@echo "make test        venv + Kafka jars, then pytest (the session starts its own broker)"
	@echo "make demo        venv + Kafka jars, then cardiowatch demo"
	@echo "make lint        import-linter layer contracts, mypy on the pure stream core"
	@echo "make broker-start / broker-stop   local Kafka on 127.0.0.1:9092 (deploy/kafka.sh)"

venv:
	@want="$$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"; \
	if [[ -x $(VENV)/bin/python && -f $(VENV_STAMP) && "$$(cat $(VENV_STAMP))" == "$$want" ]]; then \
	    echo "venv: $(VENV) is current"; \
	else \
	    [[ -x $(VENV)/bin/python ]] || $(PYTHON) -m venv $(VENV); \
	    $(VENV)/bin/python -m pip install -c requirements.lock -e ".[test]"; \
	    echo "$$want" > $(VENV_STAMP); \
	fi

kafka-jars:
	@deploy/kafka.sh fetch

# pytest exit 5 ("no tests collected") is a failure too: a test run that found nothing
# must not pass CI. Each test file is named as it runs, with the run's progress in per
# cent, and the 25 slowest tests are listed at the end.
test: venv kafka-jars
	@rc=0; $(VENV)/bin/python -m pytest --durations=25 $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc == 5 ]]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

demo: venv kafka-jars
	$(VENV)/bin/cardiowatch demo

lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

broker-start: venv kafka-jars
	$(VENV)/bin/cardiowatch broker start

broker-stop:
	deploy/kafka.sh stop
