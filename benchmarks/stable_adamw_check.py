"""StableAdamW's implementations (optimi's Triton kernel, foreach and for-loop paths, as our `StableAdamW` runs them)
against the published update rule written out here per tensor in float64, over a few steps of random gradients.

The rule (per tensor, step t from 1; ModernBERT's decoupled settings):
    b1t = b1 * (1 - b1**(t-1)) / (1 - b1**t);  b2t likewise     debiased betas, 0 at t = 1
    m = b1t * m + (1 - b1t) * g;  v = b2t * v + (1 - b2t) * g*g
    rms = sqrt(mean(g*g / max(v, eps*eps)))                     with the updated v
    lr_t = lr / max(1, rms)                                     update clipping
    p = p * (1 - lr_t / max_lr * wd)                            decoupled weight decay (max_lr: the peak lr)
    p = p - lr_t * m / (sqrt(v) + eps)
The inputs make every term visible: weights of ModernBERT's init scale (0.02), a weight decay large enough to move
them, an lr that changes every step below its peak (as a schedule does), gradients at scales from 1e-1 to 1e-7
(where eps decides the step) and one spike step (update clipping).
"""

from __future__ import annotations

import math

import torch

from flexbert.optim import StableAdamW

BETAS, EPS, PEAK_LR, WEIGHT_DECAY, STEPS = (0.9, 0.98), 1e-6, 2e-3, 0.01, 8
SHAPES = [(384, 512), (1152,), (50, 768), (3,), ()]
GRAD_SCALES = [1e-1, 1e-3, 1e-7, 1e-2, 1.0]
SPIKE_STEP = 5  # gradients x 100 there: g*g >> v, so rms > 1 and the step is clipped
# fp32: max |p - reference|, float rounding only; the weights move ~1e-2 over the steps. bf16: the same in units of
# the bf16 spacing at each weight's magnitude (the largest of its start, its end and one step's size PEAK_LR), since
# optimi compensates the Adam update (Kahan summation) but not the weight-decay multiply, which rounds once per step
# (half a spacing per step), and keeps the moments in bf16 (about as much again) (near zero the error is the
# update's rounding, relative to the step size).
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: STEPS}


def bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """The distance between adjacent bf16 numbers at |x| (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=1e-30))) - 7)


def max_error(got: list[torch.Tensor], want: list[torch.Tensor], start: list[torch.Tensor], dtype) -> float:
    if dtype == torch.float32:
        return max(float((a - b).abs().max()) for a, b in zip(got, want))
    return max(float(((a - b).abs() / bf16_spacing(torch.maximum(b.abs(), p.abs()).clamp(min=PEAK_LR))).max())
               for a, b, p in zip(got, want, start))


def lr_at(step: int) -> float:
    return PEAK_LR * (1.0 - 0.08 * step)


def inputs(seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """float64 initial weights and, per step, one gradient per weight."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.02 for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * scale * (100.0 if k == SPIKE_STEP else 1.0)
              for s, scale in zip(SHAPES, GRAD_SCALES)] for k in range(STEPS)]
    return params, grads


def reference_steps(params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The rule above, tensor by tensor, in float64."""
    b1, b2 = BETAS
    out = []
    for i, p in enumerate(params):
        p, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
        for k, step_grads in enumerate(grads):
            g, t = step_grads[i], k + 1
            b1t = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
            b2t = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
            m = b1t * m + (1 - b1t) * g
            v = b2t * v + (1 - b2t) * g * g
            rms = math.sqrt((g * g / v.clamp(min=EPS * EPS)).mean().item())
            lr_t = lr_at(k) / max(1.0, rms)
            p = p * (1 - lr_t / PEAK_LR * WEIGHT_DECAY)
            p = p - lr_t * m / (v.sqrt() + EPS)
        out.append(p)
    return out


def optimizer_steps(params: list[torch.Tensor], grads: list[list[torch.Tensor]], dtype: torch.dtype,
                    device: torch.device, foreach: bool, triton: bool) -> list[torch.Tensor]:
    """Our StableAdamW on the same inputs rounded to `dtype` (bf16 weights: its default Kahan summation)."""
    weights = [torch.nn.Parameter(p.to(device, dtype)) for p in params]
    opt = StableAdamW(weights, lr=PEAK_LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, decouple_lr=True,
                      max_lr=PEAK_LR, foreach=foreach, triton=triton)
    for k, step_grads in enumerate(grads):
        for w, g in zip(weights, step_grads):
            w.grad = g.to(device, dtype)  # a fresh tensor: the foreach / Kahan paths use .grad as scratch space
        for group in opt.param_groups:
            group["lr"] = lr_at(k)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return [w.detach().double().cpu() for w in weights]


def triton_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "optimi's Triton kernel runs on CUDA only"
    from optimi.utils import HAS_TRITON

    return None if HAS_TRITON else "triton is not installed"


def compare(device: torch.device) -> list[dict]:
    """Per (path, dtype): {case, skipped (the reason, or None), error (fp32: max abs difference, bf16: in bf16
    spacings), tolerance, max_update}."""
    params, grads = inputs()
    results = []
    paths = {"triton": dict(foreach=False, triton=True), "foreach": dict(foreach=True, triton=False),
             "for-loop": dict(foreach=False, triton=False)}
    for dtype in (torch.float32, torch.bfloat16):
        # the reference starts from the same rounded weights and gradients as the optimizer
        rounded_params = [p.to(dtype).double() for p in params]
        rounded_grads = [[g.to(dtype).double() for g in step] for step in grads]
        want = reference_steps(rounded_params, rounded_grads)
        moved = max(float((w - p).abs().max()) for w, p in zip(want, rounded_params))
        for path, flags in paths.items():
            result = {"case": f"{path} {str(dtype)[6:]}, {STEPS} steps", "dtype": str(dtype)[6:], "tolerance": TOLERANCE[dtype],
                      "max_update": moved, "skipped": triton_unavailable(device) if path == "triton" else None}
            if not result["skipped"]:
                got = optimizer_steps(rounded_params, rounded_grads, dtype, device, **flags)
                result["error"] = max_error(got, want, rounded_params, dtype)
            results.append(result)
    return results
