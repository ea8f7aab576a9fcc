# Fairway developer entry points. `make test` is the documented test command; CI runs
# `make lint` and then `make test` (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
SERVICES := scripts/services.sh
SERVICES_DIR := $(or $(FAIRWAY_SERVICES_DIR),.services)
PYTEST_ARGS ?=
# `make demo DEMO_ARGS=--short`: the ten-second pipeline run instead of the whole product.
DEMO_ARGS ?=

# Defaults only; scripts/services.sh treats any other address as an external server it must not manage.
export FAIRWAY_AMQP_URL ?= amqp://guest:guest@127.0.0.1:$(or $(FAIRWAY_RABBITMQ_PORT),5672)/%2F
export FAIRWAY_MONGO_URL ?= mongodb://127.0.0.1:$(or $(FAIRWAY_MONGO_PORT),27017)/fairway
# The PostgreSQL under the local FerretDB (scripts/services.sh), for its GIN indexes.
ifneq ($(FAIRWAY_FERRETDB_BACKEND),sqlite)
export FAIRWAY_POSTGRES_URL ?= postgres://postgres@127.0.0.1:$(or $(FAIRWAY_POSTGRES_PORT),5433)/ferretdb
endif
# Development only: production sets its own (see docs/deploy.md).
export FAIRWAY_SECRET_KEY ?= fairway-development-key-not-for-production
export FAIRWAY_RABBITMQ_MGMT_URL ?= http://guest:guest@127.0.0.1:$(or $(FAIRWAY_RABBITMQ_MGMT_PORT),15672)

.PHONY: venv services browser test test-long lint demo bench perftest down clean

venv: $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

services:
	$(SERVICES) up

browser:
	scripts/browser.sh

test: venv services browser
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The Ansible host tests left out of `make test` for time: the cluster inventory (docs/deploy.md).
test-long: venv services browser
	$(VENV)/bin/pytest -m hosts_long $(PYTEST_ARGS)

# Style, types and the import direction (contracts in pyproject.toml); CI runs it before the tests.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole product with simulated devices until Ctrl-C (fairway/devtools/demo.py).
demo: venv services
	$(VENV)/bin/fairway demo $(DEMO_ARGS)

bench: venv services
	$(VENV)/bin/python -m benchmarks.run

# RabbitMQ PerfTest for the broker's one-hop ceiling (benchmarks/end_to_end.py installs it
# too); needs java and mvn, not part of `make test`.
perftest:
	scripts/perftest.sh install

down:
	$(SERVICES) down

clean: down
	rm -rf $(SERVICES_DIR) $(VENV)
