# The two commands of the README:
#   make demo    set up .venv (first time only) and run the main job on the bundled data
#   make test    set up the test environments (first time only) and run the tests in both:
#                .venv      with learn2learn (which pins numpy<2): the whole default suite
#                .venv-np2  numpy 2, no learn2learn, as `pip install metakd` gives a user: the
#                           same suite, tests marked `learn2learn` skipped (tests/conftest.py)
#                Both passes run even if the first fails; `make test NP2=0` runs only the first,
#                `make test NP2_ARGS="tests/test_tasks.py ..."` narrows the second.
PY := .venv/bin/python
PY_NP2 := .venv-np2/bin/python
NP2 ?= 1
NP2_ARGS ?=

.PHONY: demo test test-np2 test-slow test-all lint setup setup-dev setup-np2 bench clean-venv

setup:
	@bash scripts/bootstrap.sh core

setup-dev:
	@bash scripts/bootstrap.sh dev

setup-np2:
	@bash scripts/bootstrap.sh dev-np2

demo: setup
	$(PY) -m metakd.cli demo

ifeq ($(NP2),1)
test: setup-dev setup-np2
	@status=0; \
	echo "== tests in .venv (numpy $$($(PY) -c 'import numpy; print(numpy.__version__)'), learn2learn)"; \
	$(PY) -m pytest -q || status=1; \
	echo "== tests in .venv-np2 (numpy $$($(PY_NP2) -c 'import numpy; print(numpy.__version__)'), no learn2learn)"; \
	METAKD_EXPECT_NUMPY=2 $(PY_NP2) -m pytest -q $(NP2_ARGS) || status=1; \
	exit $$status
else
test: setup-dev
	$(PY) -m pytest -q
endif

test-np2: setup-np2
	METAKD_EXPECT_NUMPY=2 $(PY_NP2) -m pytest -q $(NP2_ARGS)

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
	rm -rf .venv .venv-np2
