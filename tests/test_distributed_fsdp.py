"""Code that runs on every rank under torch's FSDP, on two CPU processes in a gloo group (tests/gloo_ranks.py):
the gradient-norm callback and the FLOP count. Composer's Trainer does not run FSDP on CPU, so these wrap with
torch's FSDP directly, as Composer does (`use_orig_params=True`, its default), and call our code the way Composer
does."""

import copy
from types import SimpleNamespace

import torch
import torch.nn as nn


class _Metrics:
    def __init__(self):
        self.logged = {}

    def log_metrics(self, metrics):
        self.logged.update(metrics)


def _fsdp(module):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP(module, use_orig_params=True, device_id=torch.device("cpu"))


def _grad_norms_under_fsdp(rank):
    from flexbert.optim import LogGradNorm

    torch.manual_seed(0)
    # FSDP flattens the 32 parameters and gives each rank half: rank 1's half holds nothing of the first weight,
    # so rank 1 has `grad=None` there while rank 0 has a gradient (checked below).
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    reference = copy.deepcopy(model)
    x = torch.randn(4, 3)  # the same on both ranks, so FSDP's averaged gradient is the single-process one
    wrapped = _fsdp(model)
    wrapped(x).square().sum().backward()
    reference(x).square().sum().backward()
    without_grad = [n for n, p in wrapped.named_parameters() if p.grad is None]
    logger = _Metrics()
    state = SimpleNamespace(model=wrapped, fsdp_enabled=True, timestamp=SimpleNamespace(batch=SimpleNamespace(value=0)))
    LogGradNorm(per_layer=True).after_train_batch(state, logger)
    expected = {name: float(p.grad.pow(2).sum().sqrt()) for name, p in reference.named_parameters()}
    expected_total = float(sum(p.grad.pow(2).sum() for p in reference.parameters()).sqrt())
    return logger.logged, expected, expected_total, without_grad


def test_grad_norm_under_fsdp_is_the_full_norm_on_every_rank(gloo_ranks):
    results = gloo_ranks.run(_grad_norms_under_fsdp)
    assert any(without_grad for *_, without_grad in results), "no rank lacks a gradient: the case is not exercised"
    logged_0 = results[0][0]
    for logged, expected, expected_total, _ in results:
        assert logged == logged_0  # the same numbers on every rank
        assert abs(logged["grad_norm/total"] - expected_total) < 1e-5 * expected_total
        per_param = {k.split("grad_norm/")[1].replace("_fsdp_wrapped_module.", ""): v
                     for k, v in logged.items() if k != "grad_norm/total"}
        assert per_param.keys() == expected.keys()
        for name, value in expected.items():
            assert abs(per_param[name] - value) <= 1e-5 * max(value, 1e-6), name
