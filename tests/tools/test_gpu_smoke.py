"""benchmarks/gpu_smoke.py on CPU (`--device cpu --tiny`): every check runs and passes for real -- the attention
kernels against the eager reference, bf16 autocast against fp32, compiled layers (aot_eager), the training step
against transformers' ModernBERT, main.py -- and only the peak-CUDA-memory check may skip here. A check that
raises becomes a FAIL row with its one-line error, and the checks after it still run."""

import json
import subprocess
import sys

import pytest

from benchmarks import gpu_smoke
from flexbert.model.flex_blocks import cpu_backward_supported
from tests.helpers import ROOT

CUDA_ONLY = {"d"}  # peak CUDA memory: reported SKIP with its reason on CPU


@pytest.mark.slow
def test_cpu_tiny_run_passes_every_check(tiny_corpus, tmp_path):
    # Its own process (run in pytest's, the checks took more CPU time), on the session's corpus (check f builds none).
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--device", "cpu", "--tiny",
                           "--tiny-corpus", str(tiny_corpus), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["tiny_corpus"] == str(tiny_corpus)
    checks = report["checks"]
    assert sorted(checks) == list("abcdefg")
    # torch >= 2.8 refuses FlexAttention's backward on the CPU: there its rows are skipped (and say why)
    flex_on_cpu = cpu_backward_supported()
    cuda_only_rows = ("flash_attn", "triton ") + (() if flex_on_cpu else ("flex_attention",))
    for key, check in checks.items():
        assert check["error"] is None, (key, check["error"])
        expected = "SKIP" if key in CUDA_ONLY else "PASS"
        assert check["status"] == expected, (key, check)
        if expected == "PASS":  # every row of a check that must run on CPU really ran, except the CUDA kernels
            assert all(r["status"] == "PASS" or r["case"].startswith(cuda_only_rows)
                       for r in check["rows"]), check
    assert "GPU" in checks["d"]["reason"]
    assert report["status"] == "PASS"

    kernels = {r["case"]: r for r in checks["a"]["rows"]}
    flex_rows = [r for case, r in kernels.items() if case.startswith("flex_attention")]
    assert flex_rows and all(r["status"] == ("PASS" if flex_on_cpu else "SKIP") for r in flex_rows), flex_rows
    for name in ("sdpa", "sliding_window") + (("flex_attention",) if flex_on_cpu else ()):
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
    throughput = {r["case"]: r for r in checks["e"]["rows"]}
    assert set(throughput) == {"1024-token docs x2, 2 layers, float32", "2048-token docs x1, 2 layers, float32",
                               "ours tok/s 2048 / 1024"}
    # on CPU every goal is reported and none is judged
    assert report["targets"] and set(report["targets"].values()) == {"n/a"}
    optimizer = {r["case"]: r for r in checks["g"]["rows"]}
    assert {c for c, r in optimizer.items() if r["status"] == "PASS"} == {
        f"{path} {dtype}, 8 steps" for path in ("foreach", "for-loop") for dtype in ("float32", "bfloat16")}
    assert "CUDA only" in optimizer["triton float32, 8 steps"]["detail"]


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


@pytest.mark.slow
def test_kit_turns_a_hung_or_crashed_check_into_one_fail_entry(tmp_path):
    import argparse
    import os

    from benchmarks.gpu_kit.__main__ import run_check

    args = argparse.Namespace(device="cpu", tiny=True)
    with open(tmp_path / "log", "w") as log:
        hung = run_check("a", args, dict(os.environ), timeout=0.5, log=log)
        crashed = run_check("nonexistent", args, dict(os.environ), timeout=60, log=log)
    assert hung["status"] == "FAIL" and hung["error"] == "timed out after its budget of 0 s"
    assert crashed["status"] == "FAIL"  # the usage error's own line, whatever Python version runs it
    assert crashed["error"] == ("exited 2 without a result: python -m benchmarks.gpu_smoke: error: --checks: unknown ['nonexistent']; "
                                f"choose from {', '.join(gpu_smoke.CHECKS)}")


@pytest.mark.slow
def test_kit_run_without_install_writes_smoke_json_and_log(tmp_path):
    """`run` end to end on this environment's packages (--no-install): each check in its own process, the merged
    smoke.json with the goals, smoke.log with every check's output."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_kit", "run", "--no-install", "--device", "cpu",
                           "--tiny", "--checks", "g", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["status"] == "PASS" and list(report["checks"]) == ["g"]
    assert report["checks"]["g"]["status"] == "PASS"
    assert not (tmp_path / "site").exists()  # nothing installed
    log = (tmp_path / "smoke.log").read_text()
    assert "(g) StableAdamW paths vs its formula: PASS" in log
