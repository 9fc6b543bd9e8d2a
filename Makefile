# Entry points, all self-contained on a fresh machine:
#   make demo      -> .venv, demo corpus + tokenizer + MDS shards (cached), train yamls/demo.yaml, export, fill-mask,
#                     fine-tune pretrained vs random init on labelled tweets, print the table
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
# requirements-demo.txt: the demo's labelled data package, without the dependencies it does not need for that.
# --compile-bytecode: the .pyc files are written once here, so no process compiles torch, transformers and
# Composer's imports from source again, even where PYTHONDONTWRITEBYTECODE is set (a bare `pytest`, a subprocess).
$(STAMP): requirements.txt requirements-demo.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.txt
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) --no-deps -r requirements-demo.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

# OpenMP threads wait passively (unless you set OMP_WAIT_POLICY): threads that spin while waiting take the cores
# that other processes on a shared machine need, and on 2 busy cores a demo step then takes several times longer.
demo: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m flexbert.demo

# tests/test_cross_lane.py needs both lanes: `make test-next` runs it, from each side. OMP_WAIT_POLICY: as for the
# demo; many tests run a second Python process (ranks, main.py) beside pytest's on the same 2 cores.
# TEST_WORKERS pytest processes (pytest-xdist) share the tests: one alone keeps a 2-core machine about half idle
# (most tests are one thread). TEST_WORKERS=0 runs them all in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest -q -n $(TEST_WORKERS) tests --ignore=tests/test_cross_lane.py

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
	$(VENV_NEXT)/bin/uv pip install -q --compile-bytecode --python $(PY_NEXT) -r requirements-next.txt
	$(VENV_NEXT)/bin/uv pip install -q --compile-bytecode --python $(PY_NEXT) --no-deps -r requirements-next-nodeps.txt
	$(VENV_NEXT)/bin/uv pip install -q --python $(PY_NEXT) --no-deps -e .
	touch $(STAMP_NEXT)

# The new lane's end-to-end subset (the pinned lane runs the full suite): model/HF parity, the loader, the convert
# round trip, eval, compiled layers, the GPU check's CPU mode (3 batches of main.py included), the lane
# compatibility checks, and the cross-lane tests (which run .venv's python too, so both lanes are built first).
NEXT_TESTS := \
	tests/test_lane_compat.py \
	tests/test_cross_lane.py \
	tests/model/test_model_hf_equivalence.py \
	tests/checkpoints/test_hf_interop.py::test_export_loads_in_transformers_with_same_logits \
	tests/train/test_parallelism.py::test_compiled_layers_trace_without_graph_breaks_and_match_eager \
	tests/data/test_data_loader.py::test_resume_is_bit_exact_inside_an_epoch_and_across_the_boundary \
	tests/tools/test_convert.py::test_hf_to_composer_to_hf_round_trips_bit_for_bit \
	tests/tools/test_convert.py::test_composer_to_hf_config_and_logits_match_ours \
	tests/eval/test_eval_run.py::test_learns_a_keyword_task_from_a_hugging_face_folder \
	tests/tools/test_gpu_smoke.py

test-next: $(STAMP) $(STAMP_NEXT)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY_NEXT) -m pytest -q $(NEXT_TESTS)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest -q tests/test_cross_lane.py
