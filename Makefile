# Two entry points, both self-contained on a fresh machine:
#   make demo  -> .venv, demo corpus + tokenizer + MDS shards (cached), train yamls/demo.yaml, export, fill-mask
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
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flexbert.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf demo_data demo_runs
