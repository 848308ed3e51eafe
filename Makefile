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
TORCH_PIP_ARGS := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
# One stamp per requested torch build, so asking for another build installs it
# while the same request again installs nothing. Its name is the spec and index
# made file-safe, plus their checksum (torch>=2.12 and torch<=2.12 read alike).
# The request is part of every call: export TORCH_SPEC and TORCH_INDEX_URL on a
# GPU machine, or a plain `make test` puts the default build back.
TORCH_REQUEST := $(TORCH_SPEC)$(if $(TORCH_INDEX_URL),@$(TORCH_INDEX_URL))
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_REQUEST)' | tr -c 'A-Za-z0-9.@-' '_')-$(shell printf '%s' '$(TORCH_REQUEST)' | cksum | cut -d' ' -f1)

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
# The stamps of other builds go, so that switching back reinstalls. A torch that
# is already there is replaced, not kept: another build can carry the same
# version (2.13.0+cu128 satisfies torch==2.13.0), and pip would leave it. Then a
# plain install adds what the requested build depends on.
$(TORCH_STAMP): | $(BIN)/python
	rm -f $(VENV)/.torch-*
	if $(BIN)/python -m pip show torch >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install --force-reinstall --no-deps $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	touch $@

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(TORCH_STAMP)
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
