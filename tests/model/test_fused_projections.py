"""The fused projections that recompute cheap activations in the backward pass instead of keeping them -- the GLU
with its output projection (flexbert/model/mlp.py) and LayerNorm with the next input projection
(flexbert/model/norms.py `normed_linear`) -- against the same math written with plain PyTorch ops: forward and
gradients in float64, the unfused fallbacks, dtypes under bf16 autocast, and the memory they exist for (what is
saved for the backward pass)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flexbert import FlexBertConfig
from flexbert.model.mlp import GLU
from flexbert.model.norms import RMSNorm, normed_linear
from tests.helpers import TINY_MODERNBERT


def glu_mlp(act: str, bias: bool, dropout: float = 0.0) -> GLU:
    config = FlexBertConfig(**{**TINY_MODERNBERT, "hidden_act": act, "mlp_in_bias": bias, "mlp_out_bias": bias,
                               "mlp_dropout_prob": dropout})
    torch.manual_seed(0)
    return GLU(config)


def plain_glu(x, mlp: GLU, act):
    inp, gate = F.linear(x, mlp.Wi.weight, mlp.Wi.bias).chunk(2, dim=-1)
    return F.linear(act(inp) * gate, mlp.Wo.weight, mlp.Wo.bias)


@pytest.mark.parametrize("act_name,act", [
    ("gelu", lambda t: F.gelu(t)), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("silu", F.silu)])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_glu_matches_plain_ops_forward_and_gradients(act_name, act, bias):
    mlp = glu_mlp(act_name, bias).double()
    x = torch.randn(37, mlp.Wi.in_features, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, ref = mlp(x), plain_glu(x_ref, mlp, act)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    params = list(mlp.parameters())
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *params], upstream)
    grads_ref = torch.autograd.grad(ref, [x_ref, *params], upstream)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_dropout_path_keeps_plain_semantics():
    mlp = glu_mlp("gelu", False, dropout=0.5).double().train()
    x = torch.randn(16, mlp.Wi.in_features, dtype=torch.float64)
    torch.manual_seed(3)
    out = mlp(x)
    torch.manual_seed(3)
    inp, gate = mlp.Wi(x).chunk(2, dim=-1)
    ref = mlp.Wo(F.dropout(F.gelu(inp) * gate, 0.5))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_gives_bf16_output_and_parameter_dtype_gradients():
    mlp = glu_mlp("gelu", True)
    x = torch.randn(24, mlp.Wi.in_features, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # one region each: autocast caches weight casts per region
        out = mlp(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = plain_glu(x_ref, mlp, F.gelu)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    upstream = torch.randn(out.shape).to(torch.bfloat16)
    grads = torch.autograd.grad(out, [x, *mlp.parameters()], upstream)
    grads_ref = torch.autograd.grad(ref, [x_ref, *mlp.parameters()], upstream)
    for g, r, p in zip(grads, grads_ref, [x, *mlp.parameters()]):
        assert g.dtype == p.dtype == torch.float32
        assert (g - r).abs().max() <= 2e-2 * r.abs().max()


def test_the_product_is_not_kept_for_backward():
    """What is saved for the backward pass: the (T, 2I) projection and Wo's weight, no (T, I) tensor."""
    mlp = glu_mlp("gelu", True)
    x = torch.randn(50, mlp.Wi.in_features, requires_grad=True)
    I = mlp.Wo.in_features
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        mlp(x)
    assert (50, I) not in saved and (50, 2 * I) in saved
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        plain_glu(x, mlp, F.gelu)
    assert (50, I) in saved  # the plain ops do keep it: the check above can fail


def saved_shapes(fn) -> list[tuple]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("norm_bias,linear_bias", [(False, True), (True, False), (True, True)])
def test_normed_linear_matches_layer_norm_then_linear(norm_bias, linear_bias):
    torch.manual_seed(0)
    norm = nn.LayerNorm(24, eps=1e-5, bias=norm_bias).double()
    linear = nn.Linear(24, 40, bias=linear_bias).double()
    with torch.no_grad():  # not the identity init, so a wrong weight / bias gradient shows
        norm.weight.uniform_(0.5, 1.5)
        if norm_bias:
            norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(33, 24, dtype=torch.float64) * 3 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, ref = normed_linear(x, norm, linear), linear(F.layer_norm(x_ref, (24,), norm.weight, norm.bias, 1e-5))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    params = [*norm.parameters(), *linear.parameters()]
    upstream = torch.randn_like(out)
    for g, r in zip(torch.autograd.grad(out, [x, *params], upstream),
                    torch.autograd.grad(ref, [x_ref, *params], upstream)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    x2 = x.detach().requires_grad_()
    assert saved_shapes(lambda: linear(norm(x2))).count((33, 24)) == 2  # unfused: x and the normalized x
    assert saved_shapes(lambda: normed_linear(x2, norm, linear)).count((33, 24)) == 1  # fused: x only


def test_normed_linear_falls_back_for_other_norms_and_half_inputs_under_autocast():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    for norm in (RMSNorm(16), nn.Identity()):
        torch.testing.assert_close(normed_linear(x, norm, linear), linear(norm(x)), rtol=0, atol=0)
    norm = nn.LayerNorm(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = normed_linear(x, norm, linear)  # fp32 input: fused, LayerNorm in fp32, matmul in bf16
        ref = linear(norm(x))
        half = normed_linear(x.bfloat16(), norm, linear)  # bf16 input: autocast would upcast the norm; unfused
        half_ref = linear(norm(x.bfloat16()))
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(half, half_ref, rtol=0, atol=0)


def test_normed_linear_bf16_autocast_gradients_have_parameter_dtypes():
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(32, bias=False), nn.Linear(32, 48)
    x = torch.randn(20, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = normed_linear(x, norm, linear)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = linear(norm(x_ref))
    upstream = torch.randn(out.shape).bfloat16()
    params = [*norm.parameters(), *linear.parameters()]
    for g, r, p in zip(torch.autograd.grad(out, [x, *params], upstream),
                       torch.autograd.grad(ref, [x_ref, *params], upstream), [x, *params]):
        assert g.dtype == p.dtype == torch.float32
        assert (g - r).abs().max() <= 2e-2 * r.abs().max()
