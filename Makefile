# vlmtune: the two commands of the README do all set-up on a fresh machine.
#   make demo   - create .venv if missing, install, run the main job (offline demo)
#   make test   - create/update .venv, install with dev extras, run the whole test suite
#
# torch is installed first and on its own, so that no dependency resolves a
# multi-GB CUDA build on a CPU machine. Override for a GPU machine, e.g.
#   make demo TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# or point a CPU machine that reaches PyTorch's index at its CPU wheels:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.vlmtune-installed
DEV_STAMP := $(VENV)/.vlmtune-dev-installed

.PHONY: demo test install install-dev browser lint bench clean

demo: install
	$(BIN)/vlmtune demo $(DEMO_ARGS)

test: install-dev browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

bench: install-dev
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

install: $(STAMP)
install-dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch alone first (CPU build unless TORCH_SPEC/TORCH_INDEX_URL say otherwise).
$(VENV)/.torch-installed: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/python -m pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	touch $@

$(STAMP): pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(STAMP)

# Headless Chromium (Debian's package) for the HTML report test. Best effort:
# without root or apt the browser test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	    else echo "chromium not installed and no root/apt: the browser test will be skipped"; fi; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
