"""benchmarks/gpu_smoke.py on CPU (`--device cpu --tiny`): every check runs and passes for real -- the attention
kernels against the eager reference, bf16 autocast against fp32, compiled layers (aot_eager), the training step
against transformers' ModernBERT, main.py -- and only the peak-CUDA-memory check may skip here. A check that
raises becomes a FAIL row with its one-line error, and the checks after it still run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_smoke

ROOT = Path(__file__).resolve().parents[1]
CUDA_ONLY = {"d"}  # peak CUDA memory: reported SKIP with its reason on CPU


@pytest.mark.slow
def test_cpu_tiny_run_passes_every_check(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert sorted(checks) == list("abcdef")
    for key, check in checks.items():
        assert check["error"] is None, (key, check["error"])
        expected = "SKIP" if key in CUDA_ONLY else "PASS"
        assert check["status"] == expected, (key, check)
        if expected == "PASS":  # every row of a check that must run on CPU really ran, except the CUDA kernels
            assert all(r["status"] == "PASS" or r["case"].startswith("flash_attn") for r in check["rows"]), check
    assert "GPU" in checks["d"]["reason"]
    assert report["status"] == "PASS"

    kernels = {r["case"]: r for r in checks["a"]["rows"]}
    for name in ("sdpa", "sliding_window", "flex_attention"):
        for dtype in ("bfloat16", "float32"):
            for layer in ("global", "local w=64"):
                errors = kernels[f"{name} {dtype} {layer}"]["errors"]
                assert set(errors) == {"mixed", "many short", "one 1024"}  # every packing was compared
    compiled = {r["case"]: r for r in checks["c"]["rows"]}
    assert compiled["graph breaks"]["detail"].endswith("(aot_eager)")
    assert compiled["graphs over 8 steps + eval"]["graphs_per_step"][0] > 0  # the layers really were compiled
    assert len(compiled["compiled vs eager"]["losses"]) == 8
    step = checks["e"]["rows"][0]
    assert step["ours_tok_s"] > 0 and step["peer_tok_s"] > 0 and step["peer_attn"] == "sdpa"
    assert len(checks["f"]["rows"][0]["losses"]) == 3


def test_a_raising_check_is_one_fail_line_and_the_rest_still_run():
    def broken(settings):
        raise RuntimeError("kernel exploded\nsecond line")

    checks = {"x": ("broken", broken), "y": ("fine", lambda s: [gpu_smoke.row("case", "PASS", "ok")]),
              "z": ("skipped", lambda s: [gpu_smoke.row("case", "SKIP", "needs a GPU")])}
    settings = gpu_smoke.make_settings(gpu_smoke.torch.device("cpu"), tiny=True, layers=None)
    results = {key: gpu_smoke.run_check(key, settings, checks) for key in checks}
    assert results["x"]["status"] == "FAIL" and results["x"]["error"] == "RuntimeError: kernel exploded"
    assert results["y"]["status"] == "PASS" and results["z"]["status"] == "SKIP"
    assert results["z"]["reason"] == "needs a GPU"
    assert gpu_smoke.check_status([gpu_smoke.row("a", "PASS", ""), gpu_smoke.row("b", "FAIL", "")]) == "FAIL"


def test_kit_pins_exact_versions_and_leaves_the_image_packages_alone():
    from benchmarks.gpu_kit.__main__ import pinned

    specs = pinned()
    names = {spec.split("==")[0].lower() for spec, _ in specs}
    assert {"mosaicml", "mosaicml-streaming", "torch-optimi", "omegaconf", "antlr4-python3-runtime"} <= names
    assert not names & {"torch", "transformers", "numpy", "triton", "flash-attn", "wandb"}
    assert all("==" in spec for spec, _ in specs)
    assert [spec for spec, sdist in specs if sdist] == ["antlr4-python3-runtime==4.9.3"]


def test_kit_turns_a_hung_or_crashed_check_into_one_fail_entry(tmp_path):
    import argparse
    import os

    from benchmarks.gpu_kit.__main__ import run_check

    args = argparse.Namespace(device="cpu", tiny=True)
    with open(tmp_path / "log", "w") as log:
        hung = run_check("a", args, dict(os.environ), timeout=0.5, log=log)
        crashed = run_check("nonexistent", args, dict(os.environ), timeout=60, log=log)
    assert hung["status"] == "FAIL" and hung["error"] == "timed out after its budget of 0 s"
    assert crashed["status"] == "FAIL" and crashed["error"]
