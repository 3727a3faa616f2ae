# The two commands of the README:
#   make demo    set up .venv (first time only) and run the main job on the bundled data
#   make test    set up the test environments (first time only), lint (ruff, mypy: a finding
#                fails the target) and run the tests in both:
#                .venv      with learn2learn (which pins numpy<2): the whole default suite
#                .venv-np2  numpy 2, no learn2learn, as `pip install metakd` gives a user: the
#                           same suite, tests marked `learn2learn` skipped (tests/conftest.py)
#                Both passes run even if the first fails; `make test NP2=0` runs only the first,
#                `make test NP2_ARGS="tests/test_tasks.py ..."` narrows the second.
# Documentation:
#   make docs        set up .venv with the dev tools, build the site strictly and serve it on
#                    http://127.0.0.1:8000 (DOCS_ADDR overrides), rebuilding on every change
#   make docs-build  the strict build into site/
PY := .venv/bin/python
PY_NP2 := .venv-np2/bin/python
NP2 ?= 1
NP2_ARGS ?=
DOCS_ADDR ?= 127.0.0.1:8000

.PHONY: demo test test-np2 test-slow test-all lint setup setup-dev setup-np2 bench clean-venv docs docs-build

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
	echo "== lint (ruff, mypy)"; \
	$(PY) -m ruff check metakd tests benchmarks examples || status=1; \
	$(PY) -m mypy || status=1; \
	echo "== tests in .venv (numpy $$($(PY) -c 'import numpy; print(numpy.__version__)'), learn2learn)"; \
	$(PY) -m pytest -q || status=1; \
	echo "== tests in .venv-np2 (numpy $$($(PY_NP2) -c 'import numpy; print(numpy.__version__)'), no learn2learn)"; \
	METAKD_EXPECT_NUMPY=2 $(PY_NP2) -m pytest -q $(NP2_ARGS) || status=1; \
	exit $$status
else
test: setup-dev
	$(PY) -m ruff check metakd tests benchmarks examples
	$(PY) -m mypy
	$(PY) -m pytest -q
endif

test-np2: setup-np2
	METAKD_EXPECT_NUMPY=2 $(PY_NP2) -m pytest -q $(NP2_ARGS)

test-slow: setup-dev
	bash scripts/install_chromium.sh
	METAKD_REQUIRE_BROWSER=1 $(PY) -m pytest -q -m slow

test-all: setup-dev
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup-dev
	$(PY) -m ruff check metakd tests benchmarks examples
	$(PY) -m mypy

docs: setup-dev
	$(PY) -m mkdocs serve --strict --dev-addr $(DOCS_ADDR)

docs-build: setup-dev
	$(PY) -m mkdocs build --strict -d site

bench: setup-dev
	$(PY) -m benchmarks.data_throughput

clean-venv:
	rm -rf .venv .venv-np2
