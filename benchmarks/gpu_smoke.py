"""GPU smoke test: the first thing to run on a new single-GPU machine (under 8 minutes on one H100/H200).

Six checks on a ModernBERT-base-width model (hidden 768, 12 heads, GLU 1152, vocab 50368, window 128, a global
layer every 3; 6 layers), each printed as a table and written to `--out`:
  a. every attention kernel this device runs against the eager per-document softmax (`eager_attention`), on packed
     documents of 1..8192 tokens, bf16 and fp32, global and local (sliding_window 128: 64 each side), output and
     q/k/v gradients; error = max |kernel - reference| / max |reference| (the reference in fp32 on the same rounded
     inputs), tolerance 1e-4 in fp32, 3e-2 in bf16 (flash-attn computes fp32 inputs in bf16: bf16 tolerance);
  b. bf16 autocast against fp32: loss and gradients (relative norm of the difference over all parameters), for
     both `return_logits` paths, and the loss-only path (`return_logits=False`) against the logits path in fp32;
  c. compiled layers (`compile_layers`: inductor on CUDA, aot_eager on CPU) over 8 training steps of varying
     packed lengths (one of them a single document) + one evaluation: graph breaks, graphs per step, losses and
     evaluation logits against the same model in eager mode;
  d. peak CUDA memory of one 96x1024 microbatch training step (bf16 autocast, the kernels `auto` picks),
     and the per-layer activation memory from a second, shallower model;
  e. a training step against transformers' ModernBertForMaskedLM with the same weights and documents
     (benchmarks/train_step.py): tokens/s, their ratio, MFU against the device's dense peak (known devices only),
     first-step losses of both;
  f. 3 batches of `main.py yamls/demo.yaml` with `precision: amp_bf16` and `compile_model: true` on a tiny
     generated corpus (needs Composer).
A check that raises is recorded as FAIL with its one-line error and the others still run; the exit code is 1
when any check failed.

    python -m benchmarks.gpu_smoke --out smoke.json                     # on the GPU
    python -m benchmarks.gpu_smoke --device cpu --tiny --out smoke.json # small shapes, CPU, a minute or two
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

CHECK_KEYS = ("a", "b", "c", "d", "e", "f", "g")  # CHECKS (below) maps each to its title and function


def parse_args(argv=None) -> argparse.Namespace:
    # prog spelled out: argparse derives it from how Python was started, which differs between Python versions
    # (`gpu_smoke.py` vs `python -m benchmarks.gpu_smoke`), and the kit reports these lines as a check's error
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda where torch sees one, else cpu")
    p.add_argument("--tiny", action="store_true", help="small shapes (for CPU: a minute or two)")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 6; --tiny 4)")
    p.add_argument("--checks", default=",".join(CHECK_KEYS), help=f"comma-separated subset of {','.join(CHECK_KEYS)}")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--tiny-corpus", default=None, metavar="DIR",
                   help="check f: a tiny_corpus folder (tokenizer/ and mds/, as tests/tiny_setup.py builds it); "
                        "built in a temporary folder when omitted")
    args = p.parse_args(argv)
    unknown = [c for c in args.checks.split(",") if c not in CHECK_KEYS]
    if unknown:
        p.error(f"--checks: unknown {unknown}; choose from {', '.join(CHECK_KEYS)}")
    import torch  # only once the arguments parsed: `--help` answers without it

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here; use --device cpu --tiny")
    return args


if __name__ == "__main__":
    parse_args()  # `--help` and usage errors answer here, before the imports below load torch (seconds)

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import stable_adamw_check  # noqa: E402
from benchmarks import train_step  # noqa: E402
from flexbert.model.attention_kernels import (  # noqa: E402
    ATTENTION_KERNELS,
    PackedIndex,
    eager_attention,
    select_kernel,
)
from flexbert.model.flash_attn_adapter import flash_attn_available, unavailable_reason  # noqa: E402
from flexbert.model.flex_blocks import cpu_backward_supported  # noqa: E402
from flexbert.model.modeling import FlexBertForMaskedLM  # noqa: E402
from flexbert.optim.builders import build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
HEAD_DIM = 64
# (check a) error relative to the reference's largest magnitude
KERNEL_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
# (check b) bf16 autocast against fp32 at initialization: |loss diff| / loss and the gradients' relative difference
AUTOCAST_LOSS_TOL, AUTOCAST_GRAD_TOL = 1e-2, 5e-2
# (check b) the loss-only path against the logits path, both fp32
LOSS_PATH_TOL = 1e-4
# (checks c, e) losses of two computations that should agree: fp32, bf16 autocast
LOSS_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@dataclasses.dataclass
class Settings:
    device: torch.device
    tiny: bool
    layers: int
    model_overrides: dict  # replaces keys of train_step.flexbert_config (the tiny width)
    kernel_heads: int
    packings: dict  # name -> document lengths, for check a
    microbatch: tuple  # (rows, max_seq_len) of check d
    train_tokens: int  # real tokens per step of checks b, c, e
    train_steps: int
    train_warmup: int
    throughput_layers: int  # check e: ModernBERT-base depth on a GPU
    throughput_tokens: int  # check e: real tokens per step (documents of 1024, or of min(8192, this) tokens)
    tiny_corpus: Optional[str] = None  # check f: a corpus built by tests/tiny_setup.py (None: build one)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16

    def config(self, layers: Optional[int] = None):
        return train_step.flexbert_config(layers or self.layers, **self.model_overrides)


def make_settings(device: torch.device, tiny: bool, layers: Optional[int],
                  tiny_corpus: Optional[str] = None) -> Settings:
    rng = random.Random(0)
    if tiny:  # seconds on a CPU: narrow model, short documents; head dim stays ModernBERT's 64
        return Settings(
            device, True, layers or 4, dict(hidden_size=128, num_attention_heads=2, intermediate_size=192), 2,
            {"mixed": [1, 2, 3, 17, 64, 65, 130, 300], "many short": [rng.randint(1, 16) for _ in range(80)],
             "one 1024": [1024]},
            (4, 128), 512, 1, 1, layers or 2, 2048, tiny_corpus)  # e: 2 documents of 1024, 1 of 2048 (8192: a minute)
    return Settings(
        device, False, layers or 6, {}, 12,
        {"mixed": [1, 2, 3, 5, 17, 63, 64, 65, 127, 128, 129, 257, 511, 1000, 1024, 2047],
         "many short": [rng.randint(1, 48) for _ in range(150)],  # > 64 runs: SDPA's padded path
         "one 8192": [8192]},
        (96, 1024), 65536, 5, 2, layers or 22, 65536, tiny_corpus)


def row(case: str, status: str, detail: str, **values) -> dict:
    return {"case": case, "status": status, "detail": detail, **values}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    return (got.float() - want.float()).abs().max().item() / (scale if scale > 0 else 1.0)


def grad_rel_err(got: dict, want: dict) -> float:
    """|g - g_ref| / |g_ref| over all parameters together (Euclidean norms)."""
    diff = sum(float((got[k] - want[k]).double().pow(2).sum()) for k in want)
    ref = sum(float(want[k].double().pow(2).sum()) for k in want)
    return math.sqrt(diff / ref)


def packed_batch(lengths: list[int], seed: int, device: torch.device) -> dict:
    """train_step's packed batch (30% masked, labels on the masked tokens) of documents `lengths`."""
    return train_step.make_batch(lengths, seed, device).packed


def varlen_lengths(tokens: int, seed: int) -> list[int]:
    """About `tokens` real tokens of train_step's variable-length documents (up to 1024 tokens, mean ~40%)."""
    return train_step.document_lengths("varlen", tokens, seed)


def fill_rows(rows: int, seq: int, seed: int) -> list[int]:
    """Documents filling exactly rows x seq slots: the variable-length mix scaled to documents of at most `seq`."""
    scale = seq / train_step.MAX_LEN
    lengths = [max(1, round(n * scale)) for n in varlen_lengths(round(rows * seq / scale), seed)]
    total = 0
    for i, n in enumerate(lengths):
        if total + n >= rows * seq:
            return lengths[:i] + [rows * seq - total]
        total += n
    return lengths


# ------------------------------------------------------------------------------------------------- a. kernels
def kernel_unavailable(name: str, device: torch.device) -> Optional[str]:
    """Why the registered kernel `name` cannot run here (None: it can)."""
    if name == "flex_attention" and device.type == "cpu" and not cpu_backward_supported():
        return f"torch {torch.__version__} runs no FlexAttention backward on the CPU"
    if not name.startswith("flash_attn"):
        return None
    if device.type != "cuda":
        return "CUDA only"
    version = int(name[-1])
    if version == 3 and torch.cuda.get_device_capability(device)[0] != 9:
        return "flash-attn 3 runs on Hopper (sm90) only"
    return None if flash_attn_available(version) else unavailable_reason(version)


def attend(kernel: Callable, q, k, v, cu, window, grad_out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and q/k/v gradients of one kernel call (+ backward with `grad_out`) on fresh leaf copies."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    index = PackedIndex.from_cu_seqlens(cu)
    out = kernel(q, k, v, cu, index.max_seqlen, window, index=index)
    out.backward(grad_out)
    return out.detach().float(), [x.grad.float() for x in (q, k, v)]


def check_kernels(s: Settings) -> list[dict]:
    window = s.config().local_window
    names = [n for n in ATTENTION_KERNELS.names() if n != "eager"]  # eager is the reference
    worst: dict = {}  # (kernel, dtype, layer) -> {packing: error}
    skipped: dict = {}
    for p, (packing, lengths) in enumerate(s.packings.items()):
        T, H = sum(lengths), s.kernel_heads
        cu = torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32,
                          device=s.device)
        gen = torch.Generator().manual_seed(p)
        base = [torch.randn(T, H, HEAD_DIM, generator=gen) for _ in range(4)]
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v, g = (x.to(s.device, dtype) for x in base)
            for layer_window in (None, window):
                layer = "global" if layer_window is None else f"local w={layer_window}"
                ref_out, ref_grads = attend(eager_attention, q.float(), k.float(), v.float(), cu, layer_window,
                                            g.float())
                for name in names:
                    key = (name, dtype, layer)
                    reason = kernel_unavailable(name, s.device)
                    if reason:
                        skipped[key] = reason
                        continue
                    kernel = select_kernel(name, s.device, dtype, layer_window)
                    try:
                        out, grads = attend(kernel, q, k, v, cu, layer_window, g)
                    except ValueError as err:  # an FA3 build without a sliding window: `auto` uses FA2 there
                        if name == "flash_attn3" and layer_window is not None and "window_size" in str(err):
                            skipped[key] = str(err).split(";")[0]
                            continue
                        raise
                    errors = [rel_err(out, ref_out)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)]
                    worst.setdefault(key, {})[packing] = max(errors)
                del ref_out, ref_grads
            if s.cuda:
                torch.cuda.empty_cache()
    rows = []
    for name in names:
        for dtype in (torch.bfloat16, torch.float32):
            for layer in ("global", f"local w={window}"):
                key, case = (name, dtype, layer), f"{name} {str(dtype)[6:]} {layer}"
                if key in skipped:
                    rows.append(row(case, SKIP, skipped[key]))
                    continue
                errors = worst[key]
                computes_bf16 = name.startswith("flash_attn")  # FlexAttention computes in the input dtype  # fp32 inputs are cast to bf16
                tol = KERNEL_TOL[torch.bfloat16 if computes_bf16 else dtype]
                packing = max(errors, key=errors.get)
                rows.append(row(case, PASS if errors[packing] <= tol else FAIL,
                                f"max err {errors[packing]:.1e} ({packing}), tol {tol:.0e}",
                                errors=errors, tolerance=tol))
    return rows


# ------------------------------------------------------------------------------------------------- b. autocast
def loss_and_grads(model, batch: dict, autocast: bool, return_logits: bool, device: torch.device):
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch, return_logits=return_logits).loss
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def check_autocast(s: Settings) -> list[dict]:
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(s.config()).to(s.device).train()
    batch = packed_batch(varlen_lengths(min(s.train_tokens, 8192), seed=1), 1, s.device)
    ref_loss, ref_grads = loss_and_grads(model, batch, False, True, s.device)
    rows = []
    loss, grads = loss_and_grads(model, batch, False, False, s.device)
    loss_err, grad_err = abs(loss - ref_loss) / ref_loss, grad_rel_err(grads, ref_grads)
    ok = loss_err <= LOSS_PATH_TOL and grad_err <= LOSS_PATH_TOL and grads.keys() == ref_grads.keys()
    rows.append(row("fp32 return_logits=False vs True", PASS if ok else FAIL,
                    f"loss {loss:.5f} vs {ref_loss:.5f}, grad diff {grad_err:.1e}, tol {LOSS_PATH_TOL:.0e}",
                    loss_rel_err=loss_err, grad_rel_err=grad_err))
    for return_logits in (True, False):
        loss, grads = loss_and_grads(model, batch, True, return_logits, s.device)
        loss_err, grad_err = abs(loss - ref_loss) / ref_loss, grad_rel_err(grads, ref_grads)
        ok = loss_err <= AUTOCAST_LOSS_TOL and grad_err <= AUTOCAST_GRAD_TOL and grads.keys() == ref_grads.keys()
        rows.append(row(f"bf16 autocast vs fp32, return_logits={return_logits}", PASS if ok else FAIL,
                        f"loss {loss:.5f} vs {ref_loss:.5f} (tol {AUTOCAST_LOSS_TOL:.0e}), grad diff {grad_err:.1e} "
                        f"(tol {AUTOCAST_GRAD_TOL:.0e})", loss_rel_err=loss_err, grad_rel_err=grad_err))
    return rows


# ------------------------------------------------------------------------------------------------- c. compile
def compile_batches(s: Settings) -> list[dict]:
    """8 training batches of different packed lengths; the 4th is one document (no padding in the attention)."""
    rng = random.Random(3)
    max_len = 1024 if not s.tiny else 300
    batches = []
    for step in range(8):
        if step == 3:
            lengths = [rng.randint(max_len // 2, max_len)]
        else:
            lengths = [rng.randint(1, max_len) for _ in range(rng.randint(2, 24 if not s.tiny else 5))]
        batches.append(packed_batch(lengths, 100 + step, s.device))
    return batches


def run_steps(model, batches: list[dict], dtype: torch.dtype, device: torch.device, after_step=None):
    """Training steps (forward + backward, no optimizer: the weights stay equal) then one evaluation on the last
    batch; returns the losses and the evaluation logits."""
    losses = []
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for batch in batches:
            loss = model(**batch, return_logits=False).loss
            loss.backward()
            losses.append(float(loss))
            if after_step:
                after_step()
        model.eval()
        with torch.no_grad():
            logits = model(**batches[-1]).logits.float()
    model.train()
    return losses, logits


def check_compile(s: Settings) -> list[dict]:
    import torch._dynamo
    from torch._dynamo.utils import counters

    from flexbert.train.parallelism import compile_layers

    dtype = s.amp_dtype if s.cuda else torch.float32  # as the trainer: amp_bf16 on GPU, fp32 on CPU
    backend = "inductor" if s.cuda else "aot_eager"  # inductor's CPU path is not used by the trainer
    batches = compile_batches(s)
    torch.manual_seed(0)
    eager = FlexBertForMaskedLM(s.config()).to(s.device).train()
    compiled = FlexBertForMaskedLM(s.config()).to(s.device).train()
    compiled.load_state_dict(eager.state_dict())
    eager_losses, eager_logits = run_steps(eager, batches, dtype, s.device)
    del eager

    torch._dynamo.reset()
    counters.clear()
    # compile_layers compiles on CUDA only; on CPU it is made to see CUDA so that the trainer's own call is checked
    with mock.patch.object(torch.cuda, "is_available", lambda: True) if not s.cuda else contextlib.nullcontext():
        assert compile_layers(compiled, backend=backend), "compile_layers did not compile"
    graphs_per_step = []

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    def record() -> None:
        graphs_per_step.append(graphs() - sum(graphs_per_step))

    start = time.perf_counter()
    # past the graph limit torch would silently run the layers eagerly: here that is an error
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        losses, logits = run_steps(compiled, batches, dtype, s.device, after_step=record)
    seconds = time.perf_counter() - start
    eval_graphs = graphs() - sum(graphs_per_step)
    breaks = sum(counters["graph_break"].values())
    tol = LOSS_TOL[dtype]
    loss_err = max(abs(a - b) / b for a, b in zip(losses, eager_losses))
    logit_err = rel_err(logits, eager_logits)
    # Multi-document steps after the first must reuse its graphs (dynamic shapes); the single-document step may
    # add one graph per global-layer kind (no padding mask), the evaluation one per kind (no gradients).
    late = [n for i, n in enumerate(graphs_per_step) if i > 0 and i != 3]
    rows = [
        row("graph breaks", PASS if breaks == 0 else FAIL, f"{breaks} ({backend})",
            reasons=sorted(counters["graph_break"])),
        row("graphs over 8 steps + eval", PASS if not any(late) else FAIL,
            f"new graphs per step {graphs_per_step} (step 4: one document), eval +{eval_graphs}; "
            f"limit {torch._dynamo.config.recompile_limit}; {seconds:.0f} s",
            graphs_per_step=graphs_per_step, eval_graphs=eval_graphs, unique_graphs=graphs(), seconds=seconds),
        row("compiled vs eager", PASS if loss_err <= tol and logit_err <= max(tol, 1e-3) else FAIL,
            f"loss max rel diff {loss_err:.1e}, eval logits {logit_err:.1e} ({str(dtype)[6:]}, tol {tol:.0e})",
            loss_rel_err=loss_err, logits_rel_err=logit_err, losses=losses, eager_losses=eager_losses),
    ]
    torch._dynamo.reset()
    return rows


# ------------------------------------------------------------------------------------------------- d. memory
def kernel_name(kernel: Callable) -> str:
    return getattr(kernel, "__name__", None) or f"flash_attn{kernel.version}"


def step_peak_mib(s: Settings, layers: int, lengths: list[int]) -> tuple[float, float]:
    """(persistent MiB: weights + Adam moments, peak MiB above it) of one bf16-autocast training step."""
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(s.config(layers)).to(s.device).train()
    optimizer = build_optimizer(train_step.OPTIMIZER, model)
    for p in model.parameters():  # allocate the Adam moments first (zero gradients: no update)
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step = train_step.make_step(model, packed_batch(lengths, 7, s.device), optimizer, s.device, s.amp_dtype)
    if not s.cuda:
        step()
        return float("nan"), float("nan")
    gc.collect()
    torch.cuda.synchronize(s.device)
    torch.cuda.reset_peak_memory_stats(s.device)
    base = torch.cuda.memory_allocated(s.device)
    step()
    torch.cuda.synchronize(s.device)
    peak = torch.cuda.max_memory_allocated(s.device)
    del model, optimizer, step
    gc.collect()
    torch.cuda.empty_cache()
    return base / 2**20, (peak - base) / 2**20


def check_memory(s: Settings) -> list[dict]:
    rows_n, seq = s.microbatch
    lengths = fill_rows(rows_n, seq, seed=5)
    window = s.config().local_window
    kernels = {layer: kernel_name(select_kernel("auto", s.device, s.amp_dtype, w))
               for layer, w in (("global", None), ("local", window))}
    persistent, peak = step_peak_mib(s, s.layers, lengths)
    case = f"{rows_n}x{seq} ({sum(lengths)} tokens, {len(lengths)} docs), {s.layers} layers"
    if not s.cuda:
        return [row(case, SKIP, "peak CUDA memory needs a GPU (the step itself ran on CPU)", kernels=kernels)]
    shallow = max(1, s.layers - 3)
    if shallow == s.layers:
        raise ValueError("the per-layer memory needs --layers 2 or more")
    _, peak_shallow = step_peak_mib(s, shallow, lengths)
    per_layer = (peak - peak_shallow) / (s.layers - shallow)
    full = persistent + peak + per_layer * (22 - s.layers)  # ModernBERT-base depth, same widths
    total = torch.cuda.get_device_properties(s.device).total_memory / 2**20
    return [row(case, PASS,
                f"step peak {peak / 1024:.1f} GiB above {persistent / 1024:.1f} GiB weights+Adam; "
                f"{per_layer / 1024:.2f} GiB/layer -> 22 layers ~{full / 1024:.0f} of {total / 1024:.0f} GiB; "
                f"kernels {kernels['global']}/{kernels['local']}",
                persistent_mib=persistent, step_peak_mib=peak, per_layer_mib=per_layer, est_22_layers_mib=full,
                device_mib=total, kernels=kernels)]


# ------------------------------------------------------------------------------------------------- e. train step
# Throughput goals for a GPU in bf16 with the base model: MFU at 1024 tokens per document (higher with flash-attn),
# our tokens/s over transformers' at 1024, and our tokens/s at 8192 over ours at 1024. A MISS is reported, not failed.
MFU_GOAL = {"flash_attn": 0.40, "other": 0.30}
SPEEDUP_GOAL, LONG_RATIO_GOAL = 1.5, 0.85
TARGETS_LEGEND = ("targets: goals for a GPU in bf16 with the base model; MISS = below the goal, which is not a FAIL "
                  "(FAIL = a wrong result or a crash); n/a = not measurable here (CPU, or a GPU without a known peak)")


def target(value: Optional[float], goal: float, measurable: bool) -> dict:
    status = "n/a" if not measurable or value is None else PASS if value >= goal else "MISS"
    return {"status": status, "value": value, "goal": goal}


def throughput(s: Settings, case: str) -> dict:
    """train_step's summary of one case (both models, same documents), with the first-step loss comparison."""
    dtype = "bfloat16" if s.cuda else "float32"
    args = argparse.Namespace(device=s.device.type, dtype=dtype, threads=torch.get_num_threads(), seed=0,
                              layers=s.throughput_layers, peer_attn="auto", case=case, tokens=s.throughput_tokens,
                              warmup=s.train_warmup, steps=s.train_steps)
    timing = train_step.time_worker(args, config=s.config(s.throughput_layers))
    r = train_step.summarize(args, timing, {})
    first = r["first_step_loss"]
    r.update(dtype=dtype, peer_attn=train_step.peer_attention(args), gpu=timing["machine"].get("gpu"),
             loss_rel_err=abs(first["ours"] - first["peer"]) / first["peer"], loss_tol=LOSS_TOL[getattr(torch, dtype)])
    return r


def check_train_step(s: Settings) -> list[dict]:
    kernel = kernel_name(select_kernel("auto", s.device, s.amp_dtype, None))
    mfu_goal = MFU_GOAL["flash_attn" if kernel.startswith("flash_attn") else "other"]
    results = {n: throughput(s, case) for n, case in ((1024, "fixed1024"), (8192, "long8192"))}
    rows = []
    for n, r in results.items():
        first = r["first_step_loss"]
        if "ours_mfu" in r:
            util = f"MFU ours {r['ours_mfu']:.1%} / peer {r['peer_mfu']:.1%}"
        elif s.cuda:
            util = f"MFU omitted: no known peak for {r['gpu']}"
        else:
            util = f"of matmul ours {r['ours_of_matmul']:.0%} / peer {r['peer_of_matmul']:.0%} (no MFU on CPU)"
        targets = {}
        if n == 1024:
            targets = {f"MFU >= {mfu_goal:.0%} ({kernel})": target(r.get("ours_mfu"), mfu_goal,
                                                                      s.cuda and "ours_mfu" in r),
                       f"tok/s >= {SPEEDUP_GOAL}x transformers": target(r["speedup"], SPEEDUP_GOAL, s.cuda)}
        case = f"{r['real_tokens'] / r['docs']:.0f}-token docs x{r['docs']:.0f}, {s.throughput_layers} layers, {r['dtype']}"
        rows.append(row(case, PASS if r["loss_rel_err"] <= r["loss_tol"] else FAIL,
                        f"ours {r['ours_tok_s']:.0f} tok/s, transformers ({r['peer_attn']}) {r['peer_tok_s']:.0f} "
                        f"tok/s, ratio {r['speedup']:.2f}x; {util}; first loss {first['ours']:.4f} vs "
                        f"{first['peer']:.4f}", targets=targets, attn_kernel=kernel,
                        **{k: v for k, v in r.items() if k not in ("case", "status", "detail")}))
    long_len = min(8192, s.throughput_tokens)
    long_ratio = results[8192]["ours_tok_s"] / results[1024]["ours_tok_s"]
    rows.append(row(f"ours tok/s {long_len} / 1024", PASS, f"{long_ratio:.2f}", long_ratio=long_ratio,
                    targets={f"{long_len}/1024 >= {LONG_RATIO_GOAL}": target(long_ratio, LONG_RATIO_GOAL,
                                                                             s.cuda and long_len == 8192)}))
    return rows


def format_targets(targets: dict) -> str:
    return "; ".join(f"{name}: {t['status']}" + (f" ({t['value']:.3g})" if t["value"] is not None else "")
                     for name, t in targets.items()) or "-"


def collect_targets(checks: dict) -> dict:
    """{"check: case: goal": status} over every row that has targets."""
    return {f"{key}: {r['case']}: {name}": t["status"]
            for key, check in checks.items() for r in check["rows"] for name, t in r.get("targets", {}).items()}


# ------------------------------------------------------------------------------------------------- f. main.py
def check_main(s: Settings) -> list[dict]:
    if importlib.util.find_spec("composer") is None:
        return [row("main.py 3 batches", SKIP, "Composer is not installed")]
    from tests.tiny_setup import build_tiny_corpus, tiny_run_overrides

    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        root = Path(tmp)
        corpus = Path(s.tiny_corpus) if s.tiny_corpus else build_tiny_corpus(root)
        overrides = tiny_run_overrides(corpus, root / "run", max_duration="3ba", eval_interval="3ba",
                                       eval_subset_num_batches=1, save_interval="3ba", precision="amp_bf16",
                                       **{"model.model_config.compile_model": "true"})
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), str(ROOT / "yamls" / "demo.yaml"), *overrides],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "WANDB_MODE": "offline"})
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][-1:]
            raise RuntimeError(f"main.py exited {proc.returncode}: {tail[0] if tail else '(no output)'}")
        metrics = [json.loads(ln) for ln in (root / "run" / "metrics.jsonl").read_text().splitlines() if ln]
    losses = [m["loss/train/total"] for m in metrics if "loss/train/total" in m]
    ok = len(losses) == 3 and all(math.isfinite(x) for x in losses)
    fallbacks = [ln.strip() for ln in proc.stderr.splitlines() if "needs a GPU" in ln or "ignored on CPU" in ln]
    note = "; on CPU main.py runs fp32 and eager (it warns)" if fallbacks else ""
    return [row("main.py demo, amp_bf16 + compile_model, 3 batches", PASS if ok else FAIL,
                f"train losses {', '.join(f'{x:.3f}' for x in losses)}; {seconds:.0f} s{note}",
                losses=losses, seconds=seconds, fallbacks=fallbacks)]


# ------------------------------------------------------------------------------------------------- g. optimizer
def check_optimizer(s: Settings) -> list[dict]:
    rows = []
    for r in stable_adamw_check.compare(s.device):
        if r["skipped"]:
            rows.append(row(r["case"], SKIP, r["skipped"]))
            continue
        unit = "" if r["dtype"] == "float32" else " bf16 spacings"
        rows.append(row(r["case"], PASS if r["error"] <= r["tolerance"] else FAIL,
                        f"max |ours - formula| {r['error']:.2g}{unit}, tol {r['tolerance']:.0g}{unit} "
                        f"(weights moved up to {r['max_update']:.1e})",
                        **{k: v for k, v in r.items() if k not in ("case", "skipped")}))
    return rows


# ------------------------------------------------------------------------------------------------- driver
CHECKS = {
    "a": ("attention kernels vs eager", check_kernels),
    "b": ("bf16 autocast vs fp32", check_autocast),
    "c": ("compiled layers", check_compile),
    "d": ("peak memory, one microbatch", check_memory),
    "e": ("train step vs transformers", check_train_step),
    "f": ("main.py amp_bf16 + compile", check_main),
    "g": ("StableAdamW paths vs its formula", check_optimizer),
}
assert tuple(CHECKS) == CHECK_KEYS, "CHECK_KEYS names the checks parse_args accepts"


def check_status(rows: list[dict]) -> str:
    statuses = {r["status"] for r in rows}
    return FAIL if FAIL in statuses or not rows else PASS if PASS in statuses else SKIP


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def run_check(key: str, s: Settings, checks: dict = CHECKS) -> dict:
    title, fn = checks[key]
    start = time.perf_counter()
    try:
        rows, error = fn(s), None
        status = check_status(rows)
    except Exception as err:  # one check's failure is reported; the others still run
        rows, error, status = [], one_line(err), FAIL
        traceback.print_exc()
    if s.cuda:
        gc.collect()
        torch.cuda.empty_cache()
    result = {"title": title, "status": status, "error": error, "seconds": round(time.perf_counter() - start, 1),
              "rows": rows}
    if status == SKIP:
        result["reason"] = "; ".join(sorted({r["detail"] for r in rows}))
    return result


def format_check(key: str, result: dict) -> str:
    header = f"({key}) {result['title']}: {result['status']} in {result['seconds']:.0f} s"
    if result["error"]:
        return f"{header}\n  {result['error']}"
    if not any("targets" in r for r in result["rows"]):
        return header + "\n" + common.format_table(["case", "status", "detail"],
                                                   [[r["case"], r["status"], r["detail"]] for r in result["rows"]])
    table = common.format_table(["case", "status", "detail", "targets"],
                                [[r["case"], r["status"], r["detail"], format_targets(r.get("targets", {}))]
                                 for r in result["rows"]])
    return header + "\n" + table + "\n" + TARGETS_LEGEND


def machine(device: torch.device) -> dict:
    import transformers

    info = {**common.machine_info(device), "transformers": transformers.__version__,
            "flash_attn2": flash_attn_available(2), "flash_attn3": flash_attn_available(3)}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["peak_bf16_flops"] = train_step.gpu_peak_flops(info["gpu"], bf16=True)
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("highest")  # the fp32 references must not run in TF32
    s = make_settings(device, args.tiny, args.layers, args.tiny_corpus)
    info = machine(device)
    print(f"# gpu_smoke on {info.get('gpu', 'cpu')}: torch {torch.__version__}, transformers "
          f"{info['transformers']}, flash-attn 2/3 {info['flash_attn2']}/{info['flash_attn3']}, {s.layers} layers, "
          f"{'tiny' if s.tiny else 'base'} width", flush=True)
    results = {}
    for key in args.checks.split(","):
        results[key] = run_check(key, s)
        print(format_check(key, results[key]) + "\n", flush=True)
    status = FAIL if any(r["status"] == FAIL for r in results.values()) else PASS
    print("# summary: " + ", ".join(f"{k} {r['status']}" for k, r in results.items()) + f" -> {status}")
    targets = collect_targets(results)
    if targets:
        print("# targets: " + "; ".join(f"{k} {v}" for k, v in targets.items()))
    if args.out:
        settings = {k: v for k, v in dataclasses.asdict(s).items() if k != "device"}
        common.write_json(args.out, {"status": status, "machine": info, "settings": settings, "targets": targets,
                                     "checks": results})
        print(f"# wrote {args.out}")
    return 1 if status == FAIL else 0


if __name__ == "__main__":
    sys.exit(main())
