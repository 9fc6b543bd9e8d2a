"""The private functions of our dependencies that the project relies on, where no public way exists. Each is used in
exactly one place; if an upgrade renames or reshapes one, this file fails first and names it, instead of a run
failing (or silently changing behaviour) deep inside training.

- composer.utils.checkpoint._write_checkpoint_file(state_dict, filename): wrapped so a checkpoint is written under a
  temporary name and renamed (flexbert/checkpoints/crash_safe.py).
- composer.optim.scheduler._convert_time(time, state, ssr): turns `dur` / `ep` into max_duration's unit, as Composer's
  own schedulers do (flexbert/optim/schedulers.py).
- composer.models.huggingface._is_registered_causal_lm(model): set to answer False while our model is wrapped, so
  Composer does not treat a masked LM as a causal LM (flexbert/train/composer_model.py).
- optimi.utils._default_to_triton(params) -> bool: optimi's own choice of its Triton path, asked with the group's
  parameters (flexbert/optim/stable_adamw.py).
"""

import inspect

import pytest


def _parameters(func) -> list[str]:
    return list(inspect.signature(func).parameters)


@pytest.mark.parametrize(
    "module, name, parameters",
    [
        ("composer.utils.checkpoint", "_write_checkpoint_file", ["state_dict", "filename"]),
        ("composer.optim.scheduler", "_convert_time", ["time", "state", "ssr"]),
        ("composer.models.huggingface", "_is_registered_causal_lm", ["model"]),
        ("optimi.utils", "_default_to_triton", ["params"]),
    ],
)
def test_private_upstream_function_is_still_there(module, name, parameters):
    from importlib import import_module

    func = getattr(import_module(module), name, None)
    assert callable(func), f"{module}.{name} is gone: adapt the one place that uses it (see this file's docstring)"
    assert _parameters(func) == parameters, f"{module}.{name} now takes {_parameters(func)}, we pass {parameters}"


def test_write_checkpoint_file_is_the_function_composer_saves_through():
    """Our wrapper only works while Composer's save path calls the module attribute by name."""
    from composer.utils import checkpoint

    assert "_write_checkpoint_file(state_dict, save_filename)" in inspect.getsource(checkpoint._save_checkpoint)


def test_default_to_triton_answers_false_for_cpu_tensors():
    import torch
    from optimi.utils import _default_to_triton

    assert _default_to_triton([torch.zeros(2)]) is False
