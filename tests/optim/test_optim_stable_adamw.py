"""StableAdamW vs an independent implementation of its update rule; param groups; optimizer builders; grad norms."""

import copy
import math

import optimi
import pytest
import torch
from composer.optim import DecoupledAdamW

from flexbert.config import FlexBertConfigError
from flexbert.optim import (
    StableAdamW,
    build_optimizer,
    filter_bias_norm_wd,
    grad_norms,
    total_grad_norm,
)

# optimi warns that decay >= 1e-3 is high for decouple_lr=True; the tests use large values on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:You are using weight_decay")

SHAPES = [(), (1,), (7,), (5, 3), (2, 3, 4), (16, 8)]


def recipe_step(p, g, m, v, t, lr, b1, b2, eps, wd, decouple, max_lr):
    """The StableAdamW update, line by line, on one tensor (float64). Returns (p, m, v, clipped)."""
    b1t = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
    b2t = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    m = b1t * m + (1 - b1t) * g
    v = b2t * v + (1 - b2t) * g * g
    rms = math.sqrt((g * g / torch.clamp(v, min=eps * eps)).mean().item())
    lr_t = lr / max(1.0, rms)
    if decouple:
        p = p * (1 - lr_t / max_lr * wd)
    else:
        p = p * (1 - lr_t * wd)
    p = p - lr_t * m / (torch.sqrt(v) + eps)
    return p, m, v, rms > 1


def gradient_stream(steps, seed=0):
    """Per step, one gradient per shape: gaussian at varying scales, spikes (to trigger update clipping), an
    always-zero tensor and a tensor that is zero on some steps."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for k in range(steps):
        grads = []
        for i, shape in enumerate(SHAPES):
            g = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** (-1 - i % 3)
            if k in (20, 37):
                g = g * 50.0  # a gradient spike: g^2 >> v, so rms > 1 and the update is clipped
            grads.append(g)
        grads.append(torch.zeros(4, 3, dtype=torch.float64))  # zero gradient every step
        partial = torch.randn(6, generator=gen, dtype=torch.float64) * 1e-2
        grads.append(partial if k % 3 else torch.zeros(6, dtype=torch.float64))
        stream.append(grads)
    return stream


def initial_params(seed=1):
    gen = torch.Generator().manual_seed(seed)
    shapes = SHAPES + [(4, 3), (6,)]
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def lr_at(k, peak):
    return peak * (0.3 + 0.7 * math.cos(k / 50 * math.pi / 2))  # a changing lr below the peak, like a schedule


@pytest.mark.parametrize("decouple", [False, True], ids=["coupled_wd", "decoupled_wd"])
@pytest.mark.parametrize("wd", [0.0, 0.05], ids=["no_wd", "wd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_recipe_formulas_for_50_steps(decouple, wd, dtype):
    b1, b2, eps, peak, steps = 0.9, 0.98, 1e-3, 1e-2, 50  # eps large enough that its placement matters
    stream = gradient_stream(steps)
    ref = [p.clone() for p in initial_params()]
    ref_m = [torch.zeros_like(p) for p in ref]
    ref_v = [torch.zeros_like(p) for p in ref]
    params = [torch.nn.Parameter(p.clone().to(dtype)) for p in initial_params()]
    opt = StableAdamW(params, lr=peak, betas=(b1, b2), eps=eps, weight_decay=wd, decouple_lr=decouple, max_lr=peak)
    clipped = 0
    for k, grads in enumerate(stream):
        lr = lr_at(k, peak)
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, grads):
            p.grad = g.to(dtype)
        opt.step()
        for i, g in enumerate(grads):
            ref[i], ref_m[i], ref_v[i], c = recipe_step(
                ref[i], g, ref_m[i], ref_v[i], k + 1, lr, b1, b2, eps, wd, decouple, peak
            )
            clipped += c
        if k == 0:  # t = 1 is its own case: b1t = b2t = 0
            for p, r in zip(params, ref):
                assert torch.allclose(p.detach().double(), r, rtol=1e-6, atol=0)
    assert 0 < clipped < steps * len(SHAPES)  # the clipping branch was exercised, and not always
    for p, r, m, v in zip(params, ref, ref_m, ref_v):
        st = opt.state[p]
        for got, want in ((p.detach(), r), (st["exp_avg"], m), (st["exp_avg_sq"], v)):
            err = (got.double() - want).norm() / max(want.norm().item(), 1e-30)
            assert err < 1e-6, f"relative error {err:.2e} for shape {tuple(want.shape)}"


@pytest.mark.parametrize("decouple", [False, True])
def test_first_step_closed_form(decouple):
    # t = 1: m = g, v = g^2, so rms = sqrt(mean(g^2 / max(g^2, eps^2))) <= 1, lr_t = lr and the step is
    # lr * g / (|g| + eps) -- sign-like, whatever the gradient's scale.
    lr, max_lr, wd, eps = 0.02, 0.05, 0.1, 1e-6
    p0 = torch.randn(5, 4, dtype=torch.float64)
    g = torch.randn(5, 4, dtype=torch.float64) * 1e-3
    p = torch.nn.Parameter(p0.clone())
    opt = StableAdamW([p], lr=lr, weight_decay=wd, eps=eps, decouple_lr=decouple, max_lr=max_lr)
    p.grad = g.clone()
    opt.step()
    decay = lr / max_lr * wd if decouple else lr * wd
    want = p0 * (1 - decay) - lr * g / (g.abs() + eps)
    assert torch.allclose(p.detach(), want, rtol=1e-12, atol=1e-15)


def test_zero_gradient_only_decays():
    lr, wd, steps = 0.01, 0.5, 10
    p0 = torch.randn(3, 3, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = StableAdamW([p], lr=lr, weight_decay=wd, decouple_lr=True)  # max_lr defaults to lr
    for _ in range(steps):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert opt.param_groups[0]["max_lr"] == lr
    assert torch.allclose(p.detach(), p0 * (1 - wd) ** steps, rtol=1e-12)
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(p))


@pytest.mark.parametrize("with_closure", [False, True])
def test_a_step_without_any_gradient_changes_nothing(with_closure):
    """A skipped batch (every .grad None): no weight decay, no moment update, no step count -- and the next real
    step is the one an uninterrupted run takes (the Adam formulas of step 2 with t = 2)."""
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    twin = torch.nn.Parameter(p.detach().clone())
    opt = StableAdamW([p], lr=0.01, weight_decay=0.1, decouple_lr=True)
    ref = StableAdamW([twin], lr=0.01, weight_decay=0.1, decouple_lr=True)
    grads = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
    for o, q in ((opt, p), (ref, twin)):
        q.grad = grads[0].clone()
        o.step()
    before = (p.detach().clone(), opt.state[p]["exp_avg"].clone(), int(opt.param_groups[0]["step"]))
    p.grad = None
    calls = []
    loss = opt.step(closure=lambda: calls.append(1) or torch.tensor(3.0)) if with_closure else opt.step()
    assert (calls == [1] and float(loss) == 3.0) if with_closure else loss is None  # the closure still runs
    assert torch.equal(p.detach(), before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
    assert int(opt.param_groups[0]["step"]) == before[2] == 1
    for o, q in ((opt, p), (ref, twin)):
        q.grad = grads[1].clone()
        o.step()
    assert torch.equal(p.detach(), twin.detach())


def test_checkpoint_identity_and_state_keys():
    assert StableAdamW.__qualname__ == "StableAdamW"
    assert issubclass(StableAdamW, optimi.StableAdamW)
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = StableAdamW([p], lr=1e-3)
    p.grad = torch.randn(3, 2)
    opt.step()
    assert type(opt).__qualname__ == "StableAdamW"
    assert {"exp_avg", "exp_avg_sq"} <= set(opt.state_dict()["state"][0])


def test_loads_state_from_an_older_optimi_without_losing_moments():
    """Older optimi wrote no `triton` group key; a state without `kahan_comp` / `eps_sq` must keep its moments."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 5, dtype=torch.float64) for _ in range(6)]

    def run(params, opt, gs):
        for g in gs:
            params[0].grad = g.clone()
            opt.step()

    p_ref = [torch.nn.Parameter(torch.ones(4, 5, dtype=torch.float64))]
    opt_ref = StableAdamW(p_ref, lr=1e-2, betas=(0.9, 0.98), weight_decay=1e-2)
    run(p_ref, opt_ref, grads[:3])
    saved_weights = p_ref[0].detach().clone()
    saved = copy.deepcopy(opt_ref.state_dict())
    for group in saved["param_groups"]:
        del group["triton"]
    for st in saved["state"].values():
        del st["eps_sq"], st["kahan_comp"]
    run(p_ref, opt_ref, grads[3:])  # the uninterrupted run

    p_new = [torch.nn.Parameter(saved_weights)]
    opt_new = StableAdamW(p_new, lr=1e-2, betas=(0.9, 0.98), weight_decay=1e-2)
    opt_new.load_state_dict(saved)
    run(p_new, opt_new, grads[3:])
    assert opt_new.param_groups[0]["step"].item() == 6
    assert torch.allclose(p_new[0].detach(), p_ref[0].detach(), rtol=1e-12, atol=0)


def test_kahan_bf16_stays_close_to_fp32():
    # Updates of ~1e-3 on weights in [1, 2) are below bf16's spacing there (2^-7): plain bf16 loses them,
    # Kahan summation carries them in the compensation buffer. No weight decay: optimi multiplies bf16 weights by
    # (1 - decay) directly, without compensation (see the module docstring).
    torch.manual_seed(0)
    p0 = (1.0 + torch.rand(64, 32)).bfloat16().float()  # both runs start from the same, bf16-exact weights
    grads = [torch.randn(64, 32).abs() * 1e-2 + 1e-3 for _ in range(60)]  # one sign: updates accumulate

    def train(dtype, kahan):
        p = torch.nn.Parameter(p0.clone().to(dtype))
        opt = StableAdamW([p], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0, decouple_lr=True, kahan_sum=kahan)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        return p.detach().float(), opt

    fp32, _ = train(torch.float32, False)
    kahan, opt = train(torch.bfloat16, True)
    plain, _ = train(torch.bfloat16, False)
    assert opt.state[opt.param_groups[0]["params"][0]]["kahan_comp"] is not None
    moved = (fp32 - p0).abs().mean()
    kahan_err = (kahan - fp32).abs().max()
    plain_err = (plain - fp32).abs().max()
    assert moved > 0.03  # fp32 moved by many bf16 spacings' worth in total
    assert kahan_err <= 2**-7  # within one bf16 spacing of the fp32 run
    assert plain_err > 4 * kahan_err


# ----------------------------------------------------------------------------------------------- param groups


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = torch.nn.Module()
        self.embeddings.tok_embeddings = torch.nn.Embedding(10, 4)
        self.embeddings.norm = torch.nn.LayerNorm(4, bias=False)
        self.attn_norm = torch.nn.LayerNorm(4)
        self.Wqkv = torch.nn.Linear(4, 12, bias=False)
        self.decoder = torch.nn.Linear(4, 10)
        self.final_norm = torch.nn.Module()
        self.final_norm.weight = torch.nn.Parameter(torch.ones(2, 4))  # a 2-D norm weight: exempt by name
        self.scale = torch.nn.Parameter(torch.ones(()))  # 0-d: exempt by ndim
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_filter_bias_norm_wd_groups_and_names():
    model = Toy()
    groups = filter_bias_norm_wd(model, weight_decay=0.1)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.1]
    assert set(groups[0]["param_names"]) == {
        "embeddings.norm.weight", "attn_norm.weight", "attn_norm.bias", "decoder.bias", "final_norm.weight", "scale",
    }
    assert set(groups[1]["param_names"]) == {"embeddings.tok_embeddings.weight", "Wqkv.weight", "decoder.weight"}
    named = dict(model.named_parameters())
    for g in groups:
        assert all(p is named[n] for p, n in zip(g["params"], g["param_names"]))
    opt = StableAdamW(groups, lr=1e-3, weight_decay=0.1)
    assert opt.param_groups[1]["param_names"] == groups[1]["param_names"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == groups[0]["param_names"]


# ----------------------------------------------------------------------------------------------- builders


@pytest.mark.parametrize(
    "name, cls, decouple",
    [
        ("decoupled_stableadamw", StableAdamW, True),
        ("stableadamw", StableAdamW, False),
        ("decoupled_adamw", DecoupledAdamW, None),
        ("adamw", torch.optim.AdamW, None),
    ],
)
def test_build_optimizer(name, cls, decouple):
    cfg = {"name": name, "lr": 8e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 1e-5,
           "filter_bias_norm_wd": True, "log_grad_norm": True}
    opt = build_optimizer(cfg, Toy())
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-5]
    assert all(g["lr"] == 8e-4 and g["eps"] == 1e-6 for g in opt.param_groups)
    assert "Wqkv.weight" in opt.param_groups[1]["param_names"]
    if cls is StableAdamW:
        assert all(g["decouple_lr"] is decouple for g in opt.param_groups)
        assert all((g["beta1"], g["beta2"]) == (0.9, 0.98) for g in opt.param_groups)
        if decouple:
            assert all(g["max_lr"] == 8e-4 for g in opt.param_groups)
    else:
        assert all(g["betas"] == (0.9, 0.98) for g in opt.param_groups)


def test_build_optimizer_without_filter_keeps_one_named_group():
    opt = build_optimizer({"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}, Toy())
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.01
    assert "frozen" not in opt.param_groups[0]["param_names"]


def test_build_optimizer_errors_name_the_fix():
    with pytest.raises(FlexBertConfigError, match=r"optimizer\.weight_decy.*did you mean 'weight_decay'"):
        build_optimizer({"name": "adamw", "lr": 1e-3, "weight_decy": 0.1}, Toy())
    with pytest.raises(ValueError, match=r"did you mean 'decoupled_stableadamw'"):
        build_optimizer({"name": "decoupled_stable_adamw", "lr": 1e-3}, Toy())
    with pytest.raises(FlexBertConfigError, match=r"optimizer\.lr"):
        build_optimizer({"name": "adamw"}, Toy())


# ----------------------------------------------------------------------------------------------- grad norms


def test_grad_norms_match_naive_sums():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(7, dtype=torch.bfloat16), torch.randn(()), torch.zeros(2, 2),
             torch.randn(4, 4, dtype=torch.float64)]
    per = grad_norms(grads)
    assert per.dtype == torch.float32 and per.shape == (len(grads),)
    for got, g in zip(per.tolist(), grads):
        assert got == pytest.approx(math.sqrt((g.double() ** 2).sum().item()), rel=1e-5, abs=1e-12)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads] + [torch.nn.Parameter(torch.ones(3))]
    for p, g in zip(params, grads):
        p.grad = g
    total = total_grad_norm(params)  # the last parameter has no grad and is skipped
    assert isinstance(total, torch.Tensor) and total.ndim == 0
    want = math.sqrt(sum((g.double() ** 2).sum().item() for g in grads))
    assert total.item() == pytest.approx(want, rel=1e-5)
