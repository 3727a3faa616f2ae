# The two commands of the README:
#   make demo    set up .venv (first time only) and run the main job on the bundled data
#   make test    set up .venv with the dev tools and learn2learn (first time only) and run the tests
PY := .venv/bin/python

.PHONY: demo test test-slow test-all lint setup setup-dev bench clean-venv

setup:
	@bash scripts/bootstrap.sh core

setup-dev:
	@bash scripts/bootstrap.sh dev

demo: setup
	$(PY) -m metakd.cli demo

test: setup-dev
	$(PY) -m pytest -q

test-slow: setup-dev
	$(PY) -m pytest -q -m slow

test-all: setup-dev
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup-dev
	$(PY) -m ruff check metakd tests benchmarks examples
	$(PY) -m mypy

bench: setup-dev
	$(PY) -m benchmarks.data_throughput

clean-venv:
	rm -rf .venv
