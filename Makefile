# Two commands on a fresh machine (Python 3.10+ and make, nothing else):
#   make demo   create .venv if missing, install epochkit, run the 5-fold CV demo (examples/cv_digits.py)
#   make test   the same with the test extras, then ruff, mypy and pytest
# Both are idempotent: an install is redone only when pyproject.toml, TORCH, TORCH_INDEX or LITDATA changes.

PYTHON ?= python3
VENV   ?= .venv
# The torch the tests run with (CI tests this one only). Override it, e.g. `make test TORCH="torch==2.14.0"`; the
# FSDP tests need torch 2.6+ (`torch.distributed.fsdp.fully_shard`).
TORCH  ?= torch==2.13.0
# Where pip gets torch. Empty: pip's configured index (PyPI's Linux wheel of torch is the CUDA build, several GB).
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs PyTorch's CPU build from its own index.
TORCH_INDEX ?=
# litdata (the streaming-data tests) requires torchvision, which would replace that torch with a CUDA build of
# several GB; it needs torchvision only for image and video serializers, so it is installed without its requirements
# (the others are in the `test` extra).
LITDATA ?= litdata==0.2.76
PYTEST_ARGS ?=
# `make stress N=50`: how many times each test that starts processes runs.
N ?= 20

BIN := $(VENV)/bin
# One stamp per (extras, torch, its index and litdata spec): changing TORCH reinstalls, re-running does not.
TORCH_TAG := $(shell printf '%s' '$(strip $(TORCH) $(TORCH_INDEX) $(LITDATA))' | cksum | cut -d' ' -f1)
TORCH_FROM := $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
DEMO_STAMP := $(VENV)/.installed-demo-$(TORCH_TAG)
TEST_STAMP := $(VENV)/.installed-test-$(TORCH_TAG)

.PHONY: demo test lint typecheck pytest stress random-order bench docs chromium docs-check clean

demo: $(DEMO_STAMP)
	$(BIN)/python examples/cv_digits.py

test: $(TEST_STAMP)
	$(MAKE) --no-print-directory lint typecheck pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected no test: make treats any non-zero exit as a failure.
pytest: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every test marked `ddp` or `processes` (it starts DDP processes, or kills a run), N times in a row each; prints
# "N passed, 0 failed" per test and fails if any run failed.
stress: $(TEST_STAMP)
	$(BIN)/python tests/stress.py --count $(N)

# The whole suite once in a random order (pytest-randomly prints "Using --randomly-seed=N" first; replay that order
# with `make random-order PYTEST_ARGS=--randomly-seed=N`).
random-order: $(TEST_STAMP)
	$(BIN)/python -m pytest -p randomly $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	@for f in benchmarks/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(BIN)/python "$$f" || exit 1; done

# The documentation site (mkdocs.yml) in site/ (git-ignored); --strict: a broken link, a page left out of the
# navigation or an API reference that does not resolve fails. Browse it: `python3 -m http.server -d site`.
docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Debian's headless-capable Chromium for the browser check, installed when missing (apt-get: needs root). Where it
# cannot be installed this says so, and the browser test skips with that reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium could not be installed (apt-get needs root and Debian's archive): tests/test_docs.py's browser test will skip"

# The site built strictly, served on localhost and opened in headless Chromium: the home page, a guide and an API
# page render (title, navigation, code blocks, no console error); screenshots under the test's tmp_path (printed).
docs-check: $(TEST_STAMP) chromium
	$(BIN)/python -m pytest tests/test_docs.py -s $(PYTEST_ARGS)

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "epochkit needs Python 3.10+, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_FROM) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_FROM) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	$(BIN)/python -m pip install --quiet --no-deps "$(LITDATA)"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis lightning_logs site
