"""Code that runs on every rank under torch's FSDP, on two CPU processes in a gloo group (tests/gloo_ranks.py):
the gradient-norm callback and the FLOP count. Composer's Trainer does not run FSDP on CPU, so these wrap with
torch's FSDP directly, as Composer does (`use_orig_params=True`, its default), and call our code the way Composer
does."""

import copy
from types import SimpleNamespace

import pytest
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


def _composer_like_state(model_state):
    """What Composer puts in a sharded checkpoint besides the weights: non-tensor values of every kind it saves."""
    from composer.core import Timestamp
    from composer.utils import reproducibility
    from torch.torch_version import TorchVersion

    return {"state": {"model": model_state, "timestamp": Timestamp(batch=6, token=1234).state_dict(), "run_name": "r",
                      "metadata": {"torch_version": TorchVersion(torch.__version__)},
                      "callbacks": {"LoaderStateCallback": {"ranks": [{"epoch": 0, "open_rows": [[1, 0, 5]]}]}}},
            "rng": reproducibility.get_rng_state()}


def _sharded_round_trip(rank, folder):
    import torch.distributed.checkpoint as dist_cp
    from composer.utils.checkpoint import FileSystemReaderWithValidation, dist_cp_load
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType

    from flexbert.checkpoints.safe_unpickle import install_composer_guard

    install_composer_guard()  # what build_trainer does: every checkpoint Composer opens is validated first
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(_fsdp(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))))
    saved, loaded = models
    with FSDP.state_dict_type(saved, StateDictType.SHARDED_STATE_DICT):
        dist_cp.save(_composer_like_state(saved.state_dict()), storage_writer=dist_cp.FileSystemWriter(folder),
                     planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True))  # as Composer saves
    with FSDP.state_dict_type(loaded, StateDictType.SHARDED_STATE_DICT):
        target = _composer_like_state(loaded.state_dict())
        target["state"]["timestamp"] = {k: None for k in target["state"]["timestamp"]}
        target["state"]["callbacks"]["LoaderStateCallback"]["ranks"] = [{"epoch": None, "open_rows": None}]
        dist_cp_load(target, FileSystemReaderWithValidation(folder))  # Composer's reader and its validation hook
        loaded.load_state_dict(target["state"]["model"])
    with FSDP.summon_full_params(saved), FSDP.summon_full_params(loaded):
        same = all(torch.equal(a, b) for a, b in zip(saved.parameters(), loaded.parameters()))
    return same, target["state"]["timestamp"]["batch"], target["state"]["callbacks"]


@pytest.mark.slow
def test_sharded_checkpoint_round_trip_through_composers_validated_reader(gloo_ranks, tmp_path):
    from composer.core import Timestamp

    results = gloo_ranks.run(_sharded_round_trip, str(tmp_path / "ep0-ba6"))
    assert sorted(p.name for p in (tmp_path / "ep0-ba6").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    for same, batch, callbacks in results:
        assert same  # the second model's weights became the first's, shard by shard
        assert batch == Timestamp(batch=6).state_dict()["batch"]
        assert callbacks == {"LoaderStateCallback": {"ranks": [{"epoch": 0, "open_rows": [[1, 0, 5]]}]}}


def _flops_under_fsdp(rank):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from flexbert import FlexBertConfig
    from flexbert.model.flops import training_flops
    from flexbert.model.modeling import FlexBertForMaskedLM
    from tests.helpers import TINY_MODERNBERT, mixed_length_batch

    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**TINY_MODERNBERT))
    ids, mask = mixed_length_batch(3, 40, 128, [40, 17, 29])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask == 1, ids, -100)}
    alone = training_flops(model, batch)
    layer_class = type(model.bert.encoder.layers[0])
    # as Composer wraps it: one unit per encoder layer inside the root unit, the original parameters kept
    wrapped = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"), auto_wrap_policy=ModuleWrapPolicy({layer_class}))
    return alone, training_flops(wrapped, batch), sum(p.numel() for p in wrapped.parameters())


def test_flop_count_under_fsdp_is_the_whole_models(gloo_ranks):
    from flexbert import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM
    from tests.helpers import TINY_MODERNBERT

    full = sum(p.numel() for p in FlexBertForMaskedLM(FlexBertConfig(**TINY_MODERNBERT)).parameters())
    for alone, under_fsdp, local_params in gloo_ranks.run(_flops_under_fsdp):
        assert local_params < full  # the rank really holds only a shard
        assert under_fsdp == alone
