# flows: every developer and CI entry point. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv and install flows with its test extras

.PHONY: services
services: ## start Kafka (localhost:9092), PostgreSQL (localhost:5432) and the Schema Registry (localhost:8081); idempotent
	bash scripts/services.sh up

.PHONY: services-down
services-down: ## stop what `make services` started, and nothing else
	bash scripts/services.sh down

.PHONY: demo
demo: venv services ## the wordcount demo: count a text, SIGKILL the worker halfway, check the counts exact
	bash scripts/demo.sh

.PHONY: image
image: ## build the container image with podman on a Debian base made here, run `flows list` in it
	bash scripts/image.sh

.PHONY: test
test: venv services ## install, start the services, run the whole suite
	$(PY) -m pytest tests

.PHONY: test-unit
test-unit: venv ## the unit tests and the in-memory contract suites (no services)
	$(PY) -m pytest tests/unit tests/contract -m "not integration"

.PHONY: lint
lint: venv ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: typecheck
typecheck: venv ## mypy --strict on the packages and the tests
	$(VENV)/bin/mypy

.PHONY: proto
proto: venv ## regenerate the protobuf modules from proto/
	$(PY) -m grpc_tools.protoc -Iproto --python_out=flows/_proto --pyi_out=flows/_proto proto/flows_envelope.proto

.PHONY: bench
bench: venv services ## run the benchmarks side by side with the peers
	$(PY) -m bench

.PHONY: bench-quick
bench-quick: venv services ## a one-minute benchmark for development
	$(PY) -m bench --quick
