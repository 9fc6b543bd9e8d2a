"""`StableAdamW`: AdamW with debiased betas and per-tensor update clipping.

Built on torch-optimi's `optimi.StableAdamW` (0.3.3 installed): optimi's StableAdamW trained ModernBERT and wrote
the released checkpoints' optimizer state (with an earlier optimi release). This subclass only
- keeps the class name `StableAdamW` (Composer files optimizer state under `type(opt).__qualname__`, so the
  released key `optimizers.StableAdamW` restores into it), and per-parameter state `exp_avg` / `exp_avg_sq`;
- sets this project's defaults (`weight_decay=0.0`, gradient release off);
- repairs optimizer state written by other optimi versions / devices when it is loaded (see the two hooks);
- fixes optimi 0.3.3's Triton auto-selection, which tests an empty list and so picks Triton for CPU tensors
  whenever triton is installed (RuntimeError "0 active drivers" on a CPU machine).

The update rule, with optimi's code checked against it formula by formula (optimi/stableadamw.py,
`_single_param_stableadamw`, `_foreach_stableadamw`, the Triton kernels, and optimi/utils.py `debias_beta`):
- debiased betas: optimi computes `(b**t - b) / (b**t - 1)`, algebraically `b * (1 - b**(t-1)) / (1 - b**t)`;
  t counts from 1 (the step counter is incremented before use), so b1t = b2t = 0 at t = 1.         [same]
- m = lerp(m, g, 1 - b1t) = b1t * m + (1 - b1t) * g;  v = b2t * v + (1 - b2t) * g * g.             [same]
- rms = sqrt(mean(g * g / max(v, eps * eps))) over the tensor, with the updated v.                [same]
- lr_t = lr / max(1, rms).                                                                         [same]
- weight decay BEFORE the Adam step: decoupled p *= 1 - lr_t / max_lr * wd, else p *= 1 - lr_t * wd,
  both with the clipped lr_t; max_lr defaults to the constructor lr when decouple_lr=True.          [same]
- p -= lr_t * m / (sqrt(v) + eps): eps OUTSIDE the square root.                                    [same]

Where optimi departs from that rule (none changes fp32 results beyond rounding):
- The step counter t lives in the param group (`group["step"]`), not per tensor: a tensor whose `.grad` is None
  on some step is skipped but the group's t still advances (unless no tensor at all has a gradient: then the
  step does nothing). A zero gradient (not None) is a normal update.
  ModernBERT gives every tensor a gradient every step, so this never matters there.
- eps**2 is stored per tensor in the parameter dtype (`state["eps_sq"]`); for bf16 parameters the moments are
  also kept in bf16 on the non-Triton paths, i.e. only the Adam update is compensated by Kahan summation. The
  weight-decay multiply hits the bf16 weights directly, uncompensated: a decay step below bf16 resolution
  (e.g. 1e-5 on weights near 1) is lost. With fp32 master weights (Composer's amp_bf16, as ModernBERT trained) none of
  this applies.
- The foreach path and the bf16 Kahan path use `p.grad` as scratch space: gradients are garbage after `step()`.
  Read gradients before the step (Composer's Event.AFTER_TRAIN_BATCH, as `log_grad_norm` does).
- The non-Triton paths call `.item()` once per tensor (the clipping factor) and once per group (the step).
"""

from __future__ import annotations

from typing import Any, Iterable

import optimi
import torch
from optimi.utils import _default_to_triton

__all__ = ["StableAdamW"]

# Param-group keys that choose an implementation for this machine, not a hyperparameter of the run: a checkpoint
# written with Triton on a GPU must not force Triton when it is loaded on a CPU, and the reverse.
_IMPLEMENTATION_KEYS = ("foreach", "triton", "gradient_release")


class StableAdamW(optimi.StableAdamW):
    """AdamW-Adafactor hybrid with update clipping (Wortsman et al. 2023); update rule in the module docstring.

    Args:
        params: parameters or param groups (dicts; extra keys such as `param_names` are kept).
        lr: learning rate (the peak lr; Composer schedules multiply it).
        betas: (b1, b2) before debiasing.
        weight_decay: decay coefficient; 0 disables decay.
        eps: added to sqrt(v) in the update; eps**2 floors v inside the clipping RMS.
        decouple_lr: decay by `lr_t / max_lr * wd` instead of `lr_t * wd` ("fully decoupled").
        max_lr: peak lr for `decouple_lr`; defaults to `lr`.
        kahan_sum: Kahan-compensated updates for bf16/fp16 parameters; None = on for low precision only.
        foreach: optimi's multi-tensor path; None lets optimi choose.
        triton: optimi's fused Triton path (CUDA only); None lets optimi choose.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        eps: float = 1e-6,
        decouple_lr: bool = False,
        max_lr: float | None = None,
        kahan_sum: bool | None = None,
        foreach: bool | None = None,
        triton: bool | None = None,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            eps=eps,
            decouple_lr=decouple_lr,
            max_lr=max_lr,
            kahan_sum=kahan_sum,
            foreach=foreach,
            triton=triton,
            gradient_release=False,
        )
        # prepend: optimi's own post-load hook reads group["triton"], which older checkpoints lack.
        self.register_load_state_dict_pre_hook(_complete_loaded_groups, prepend=True)
        self.register_load_state_dict_post_hook(_complete_loaded_state)

    @torch.no_grad()
    def step(self, closure=None, param=None):
        loss = None
        if closure is not None and param is None:  # Composer steps with a closure that runs the microbatches
            with torch.enable_grad():
                loss = closure()
        if param is None and all(p.grad is None for g in self.param_groups for p in g["params"]):
            # no gradient anywhere (a skipped batch, see NonFiniteLossGuard): nothing moves, not even the step counter
            # that optimi would otherwise advance
            return loss
        super().step(None, param)
        return loss

    def _init_group(self, group: dict[str, Any], *args, **kwargs):
        if not group["setup"] and group["triton"] is None and group["foreach"] is None:
            # optimi 0.3.3 decides from the list it is about to fill, still empty (`all([])` is True), so with
            # triton installed it picks Triton even for CPU tensors and crashes. Decide from the group's params.
            group["triton"] = _default_to_triton(group["params"])
        return super()._init_group(group, *args, **kwargs)


def _complete_loaded_groups(optimizer: StableAdamW, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Loaded param groups replace ours wholesale. Fill keys an older optimi did not write (e.g. `triton`, added
    in 0.3) from our defaults, and take the implementation choice (foreach / triton) from this machine."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        return state_dict  # torch's load_state_dict raises the size error with its own message
    completed = []
    for saved, current in zip(saved_groups, optimizer.param_groups):
        group = dict(saved)
        for key, default in optimizer.defaults.items():
            group.setdefault(key, default)
        for key in _IMPLEMENTATION_KEYS:
            group[key] = current[key]
        if group["triton"] is None and group["foreach"] is None and group.get("setup", False):
            # optimi decides triton only in its first step (`setup`); a loaded group is already set up.
            group["triton"] = _default_to_triton(current["params"])
        completed.append(group)
    return {**state_dict, "param_groups": completed}


def _complete_loaded_state(optimizer: StableAdamW) -> None:
    """optimi re-initialises (zeroes) a tensor's moments when `kahan_comp` is missing from its state, and indexes
    `eps_sq` unconditionally. Add both to loaded moments that lack them instead of losing the moments."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or "exp_avg" not in state:
                continue
            state.setdefault("eps_sq", torch.tensor(group["eps"] ** 2, dtype=p.dtype, device=p.device))
            low_precision = p.dtype in (torch.float16, torch.bfloat16)
            if state.get("kahan_comp") is None:
                if group["kahan_sum"] is not False and low_precision:
                    state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    group["kahan_sum"] = True
                elif group["triton"]:
                    # the Triton kernel takes a pointer even when it does not use it
                    state["kahan_comp"] = torch.zeros(1, dtype=torch.uint8, device=p.device)
                else:
                    state["kahan_comp"] = None
