# Entry points, all self-contained on a fresh machine:
#   make demo      -> .venv, demo corpus + tokenizer + MDS shards (cached), train yamls/demo.yaml, export, fill-mask
#   make test      -> .venv, the CPU test suite (pinned lane: torch 2.7, transformers 4.57)
#   make test-next -> .venv and .venv-next, the end-to-end subset under torch 2.11, transformers 5, numpy 2
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Cache bytecode: with PYTHONDONTWRITEBYTECODE every process recompiles torch and transformers (~8 s each).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test venv venv-next test-next clean-demo

venv: $(STAMP)

# uv resolves and installs the pinned set in ~30 s (pip takes minutes for the 5 GB CUDA torch wheel).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

# OpenMP threads wait passively (unless you set OMP_WAIT_POLICY): threads that spin while waiting take the cores
# that other processes on a shared machine need, and on 2 busy cores a demo step then takes several times longer.
demo: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m flexbert.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf demo_data demo_runs

# The second lane: what current GPU images ship (Python 3.12, torch 2.11, transformers 5, numpy 2). A pyenv
# shim named python3.12 exists even where it is not the selected version, so the interpreter is found by running it.
PYTHON_NEXT ?= python3.12
VENV_NEXT := .venv-next
PY_NEXT := $(VENV_NEXT)/bin/python
STAMP_NEXT := $(VENV_NEXT)/.installed

venv-next: $(STAMP_NEXT)

# Composer, streaming and mosaicml-cli pin torch/transformers/numpy below this lane: installed with --no-deps, their
# runtime dependencies pinned in requirements-next.txt.
$(STAMP_NEXT): requirements-next.txt requirements-next-nodeps.txt pyproject.toml
	@py=$$(for c in "$(PYTHON_NEXT)" $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
	    "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$c"; break; }; done); \
	  if [ -z "$$py" ]; then echo "make venv-next: no Python 3.12 found (tried $(PYTHON_NEXT), ~/.pyenv/versions/3.12*): install one or pass PYTHON_NEXT=/path/to/python3.12" >&2; exit 1; fi; \
	  test -x $(PY_NEXT) || "$$py" -m venv $(VENV_NEXT)
	$(PY_NEXT) -m pip install -q --disable-pip-version-check uv
	$(VENV_NEXT)/bin/uv pip install -q --python $(PY_NEXT) -r requirements-next.txt
	$(VENV_NEXT)/bin/uv pip install -q --python $(PY_NEXT) --no-deps -r requirements-next-nodeps.txt
	$(VENV_NEXT)/bin/uv pip install -q --python $(PY_NEXT) --no-deps -e .
	touch $(STAMP_NEXT)
