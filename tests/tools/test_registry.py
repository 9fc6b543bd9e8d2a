"""`python -m flexbert.list_registries` lists every registered name of every registry with its description."""

import subprocess
import sys

import pytest

from flexbert.registry import Registry, closest
from tests.helpers import ROOT



@pytest.mark.slow
def test_listing_covers_every_registry_and_name():
    result = subprocess.run([sys.executable, "-m", "flexbert.list_registries"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    expected = {
        "attention (`model_config.attention_layer`)": ["base", "rope", "parallel", "rope_parallel"],
        "layer (`model_config.bert_layer`)": ["prenorm", "postnorm", "parallel_prenorm"],
        "mlp (`model_config.mlp_layer`)": ["mlp", "glu", "parallel_glu"],
        "norm (`model_config.normalization`)": ["layernorm", "rmsnorm", "triton_layernorm", "triton_rmsnorm"],
        "embedding (`model_config.embedding_layer`)": ["sans_pos", "absolute_pos"],
        "init (`model_config.init_method`)": ["default", "normal", "mitchell", "kaiming_normal", "fan_in", "full_megatron"],
        "loss (`model_config.loss_function`)": ["cross_entropy", "fa_cross_entropy"],
        "attention kernel (`model_config.attn_kernel`)": ["eager", "sdpa", "sliding_window", "flash_attn2", "flash_attn3"],
        "optimizer (`optimizer.name`)": ["decoupled_stableadamw", "stableadamw", "decoupled_adamw", "adamw"],
        "scheduler (`scheduler.name`)": ["warmup_stable_decay", "one_minus_sqrt", "constant_with_warmup",
                                          "cosine_with_warmup", "linear_decay_with_warmup"],
        "callback (`callbacks`)": ["speed_monitor", "lr_monitor", "memory_monitor", "scheduled_gc", "log_grad_norm",
                                   "packing_efficiency", "optimizer_monitor", "runtime_estimator"],
    }
    for header, names in expected.items():
        assert header in out, header
        section = out.split(header, 1)[1].split("\n\n", 1)[0]
        for name in names:
            line = next((l for l in section.splitlines() if l.strip().startswith(name + " ")), None)
            assert line is not None and len(line.split(None, 1)[1]) > 10, f"{header}: {name} has no description"


def test_unknown_name_suggests_the_closest():
    reg = Registry("test thing", "model_config.test_thing")
    reg.add("rmsnorm", object, "x")
    reg.add("layernorm", object, "y")
    with pytest.raises(KeyError, match=r"unknown test thing 'rmsnrom' for `model_config.test_thing` \(did you mean 'rmsnorm'\?\)"):
        reg.get("rmsnrom")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("rmsnorm", object, "again")
    assert closest("zzz", ["rmsnorm"]) == ""
    del Registry.all["test thing"]
