"""Attention kernels (flexbert/model/attention_kernels.py, flash_attn_adapter.py) against a naive reference
written here: a dense T x T softmax over the packed sequence in float64 with a same-document and |i - j| <= window
mask built from Python loops. flash-attn is absent on CPU, so the adapter is driven through an injected stand-in."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from flexbert.model import attention_kernels as ak
from flexbert.model import flash_attn_adapter as fa
from tests.varlen_reference import reference_varlen_attention
from flexbert.model.attention_kernels import ATTENTION_KERNELS, PackedIndex, select_kernel
from flexbert.model.flops import attention_flops

H, D = 2, 16
# Documents shorter and longer than the windows, a 1-token one, an empty one (a zero-length cu_seqlens entry).
LENGTHS = [3, 40, 1, 0, 150, 17, 90]
WINDOWS = [None, 1, 8, 64]


def cu_of(lengths):
    return torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)


def reference(q, k, v, lengths, window, causal=False):
    """softmax(q k^T / sqrt(D)) v over all T tokens, keys outside the query's document or window masked."""
    doc = torch.tensor([d for d, n in enumerate(lengths) for _ in range(n)])
    pos = torch.tensor([i for n in lengths for i in range(n)])
    visible = doc[:, None] == doc[None, :]  # (T, T)
    if window is not None:
        visible &= (pos[:, None] - pos[None, :]).abs() <= window
    if causal:
        visible &= pos[None, :] <= pos[:, None]
    scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("hij,jhd->ihd", probs, v)


def random_qkv(lengths, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(sum(lengths), H, D, generator=g, dtype=dtype) for _ in range(3)]


def kernel_variants():
    yield "eager", ATTENTION_KERNELS.get("eager"), {}
    yield "sdpa", ATTENTION_KERNELS.get("sdpa"), {}
    yield "sliding_window", ATTENTION_KERNELS.get("sliding_window"), {}
    # blocks smaller and larger than the window: the key span b + 2w must cover both
    yield "sliding_window_b16", ATTENTION_KERNELS.get("sliding_window"), {"block_size": 16}
    yield "sliding_window_b96", ATTENTION_KERNELS.get("sliding_window"), {"block_size": 96}
    yield "sdpa_padded", sdpa_padded_fallback, {}


def sdpa_padded_fallback(*args, **kwargs):
    """sdpa with its one-padded-call path (taken above MAX_SDPA_CALLS runs of equal-length documents) forced."""
    saved, ak.MAX_SDPA_CALLS = ak.MAX_SDPA_CALLS, 0
    try:
        return ak.sdpa_attention(*args, **kwargs)
    finally:
        ak.MAX_SDPA_CALLS = saved


VARIANTS = list(kernel_variants())


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("name,kernel,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("lengths", [LENGTHS, [64], [32, 32, 32]], ids=["mixed", "one_doc", "equal_docs"])
def test_kernel_matches_reference_forward_and_grads(name, kernel, kwargs, window, lengths):
    q, k, v = (x.requires_grad_() for x in random_qkv(lengths))
    cu = cu_of(lengths)
    index = PackedIndex.from_cu_seqlens(cu, max(lengths))
    out = kernel(q, k, v, cu, max(lengths), window, **kwargs, index=index)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, lengths, window)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * grad_out).sum().backward()
    (ref * grad_out.double()).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # the same without a precomputed index (the kernel builds its own)
    torch.testing.assert_close(kernel(q, k, v, cu, max(lengths), window, **kwargs), out)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("name,kernel,kwargs", VARIANTS[:3], ids=[v[0] for v in VARIANTS[:3]])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_documents_never_attend_across_boundaries(name, kernel, kwargs, window, dropout_p):
    q, k, v = random_qkv(LENGTHS, seed=2)
    cu = cu_of(LENGTHS)
    s, e = int(cu[4]), int(cu[5])  # the 150-token document
    k2, v2 = k.clone(), v.clone()
    k2[s:e] += 100.0
    v2[s:e] -= 100.0
    torch.manual_seed(0)  # same dropout masks in both calls
    out = kernel(q, k, v, cu, 150, window, dropout_p, **kwargs)
    torch.manual_seed(0)
    out2 = kernel(q, k2, v2, cu, 150, window, dropout_p, **kwargs)
    others = torch.ones(out.shape[0], dtype=torch.bool)
    others[s:e] = False
    torch.testing.assert_close(out2[others], out[others], atol=1e-6, rtol=0)
    assert (out2[s:e] - out[s:e]).abs().max() > 1.0  # the perturbed document itself did change


@pytest.mark.parametrize("name,kernel,kwargs", VARIANTS[:3], ids=[v[0] for v in VARIANTS[:3]])
@pytest.mark.parametrize("window", [None, 8])
def test_dropout_drops_and_rescales(name, kernel, kwargs, window):
    q, k, _ = random_qkv(LENGTHS, seed=3)
    v = torch.ones_like(q, requires_grad=True)  # without dropout every output is exactly 1 (probabilities sum to 1)
    cu = cu_of(LENGTHS)
    torch.testing.assert_close(kernel(q, k, v, cu, 150, window, 0.0, **kwargs), torch.ones_like(q))
    torch.manual_seed(0)
    out = kernel(q, k, v, cu, 150, window, 0.5, **kwargs)
    assert (out - 1).abs().max() > 0.1  # dropout changed something
    assert abs(out[:, :, 0].mean().item() - 1.0) < 0.1  # kept probabilities are scaled by 1 / (1 - p)
    out.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_sliding_window_is_linear_not_dense():
    # 32k tokens in one document: a dense T x T mask would be 1 G entries (and minutes); the blocked kernel is instant.
    T, w = 32768, 64
    q, k, v = (torch.randn(T, 1, 8) for _ in range(3))
    cu = torch.tensor([0, T], dtype=torch.int32)
    out = ATTENTION_KERNELS.get("sliding_window")(q, k, v, cu, T, w)
    i = 20000  # spot-check one query against the definition
    keys = slice(i - w, i + w + 1)
    p = ((k[keys, 0] @ q[i, 0]) / math.sqrt(8)).softmax(0)
    torch.testing.assert_close(out[i, 0], p @ v[keys, 0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ flash-attn adapter
class Recorder:
    """Stand-in for flash_attn_varlen_func: records its arguments, computes with the naive reference."""

    def __init__(self, returns_tuple=False):
        self.calls = []
        self.returns_tuple = returns_tuple

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        out = reference_varlen_attention(*args, **kwargs)
        return (out, None) if self.returns_tuple else out


def fa3_standin(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False,
                window_size=(-1, -1), deterministic=False):
    return reference_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                         softmax_scale=softmax_scale, causal=causal, window_size=window_size)


def _reference(q, k, v, cu_seqlens_q, max_seqlen_q, window_size=(-1, -1), dropout_p=0.0, seqused=(None, None)):
    assert cu_seqlens_q.dtype == torch.int32 and isinstance(max_seqlen_q, int) and max_seqlen_q >= 1
    assert seqused == (None, None)  # we never limit the tokens used per document
    return reference_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_q, max_seqlen_q, max_seqlen_q,
                                         dropout_p, window_size=window_size)


# The varlen function of each published flash-attn release, parameter for parameter (bodies compute with the
# reference); FA3 comes from flash-attn's hopper/ folder at the tag named.
def fa2_standin(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                return_attn_probs=False, block_table=None):  # flash-attn 2.6-2.8
    return _reference(q, k, v, cu_seqlens_q, max_seqlen_q, window_size, dropout_p)


def fa3_v2_6(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False):
    return _reference(q, k, v, cu_seqlens_q, max_seqlen_q), None


def fa3_v2_7_0(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False,
               window_size=(-1, -1), deterministic=False, seqused_q=None, seqused_k=None, block_table=None):
    return _reference(q, k, v, cu_seqlens_q, max_seqlen_q, window_size, seqused=(seqused_q, seqused_k)), None


def fa3_v2_7_3(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k,
               softmax_scale=None, causal=False, q_descale=None, k_descale=None, v_descale=None, window_size=(-1, -1),
               sink_token_length=0, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0):
    return _reference(q, k, v, cu_seqlens_q, max_seqlen_q, window_size, seqused=(seqused_q, seqused_k)), None


def fa3_v2_8(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None, seqused_k=None,
             softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None, v_descale=None,
             window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False,
             sm_margin=0, return_attn_probs=False):
    return _reference(q, k, v, cu_seqlens_q, max_seqlen_q, window_size, seqused=(seqused_q, seqused_k))


@pytest.mark.parametrize("version,func", [(2, fa2_standin), (3, fa3_v2_6), (3, fa3_v2_7_0), (3, fa3_v2_7_3),
                                          (3, fa3_v2_8)])
@pytest.mark.parametrize("window", [None, 8])
def test_flash_adapter_calls_every_published_signature_correctly(version, func, window):
    q, k, v = random_qkv(LENGTHS, seed=7, dtype=torch.bfloat16)
    adapter = fa.FlashAttnAdapter(version, varlen_func=func).resolved()
    if window is not None and func is fa3_v2_6:  # that release has no sliding window: refused, never ignored
        with pytest.raises(ValueError, match="has no `window_size` argument"):
            adapter(q, k, v, cu_of(LENGTHS), 150, window)
        return
    out = adapter(q, k, v, cu_of(LENGTHS).long(), 150, window)
    torch.testing.assert_close(out.double(), reference(*[x.double() for x in (q, k, v)], LENGTHS, window),
                               atol=2e-2, rtol=2e-2)
    if version == 3:
        with pytest.raises(ValueError, match="no attention dropout"):
            adapter(q, k, v, cu_of(LENGTHS), 150, window, 0.1)


def test_flash_adapter_hands_half_precision_views_over_without_copies():
    qkv = torch.randn(sum(LENGTHS), 3, H, D, dtype=torch.bfloat16)
    q, k, v = qkv.unbind(1)  # views of a fused projection: last dim contiguous, the rest strided
    rec = Recorder()
    fa.FlashAttnAdapter(2, varlen_func=rec)(q, k, v, cu_of(LENGTHS), 150, None)
    (args, _), = rec.calls
    assert [x.data_ptr() for x in args[:3]] == [x.data_ptr() for x in (q, k, v)]


def test_flash_attn_that_fails_to_import_is_reported_once(monkeypatch):
    def broken_import(name):
        raise ImportError(f"{name}_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDevice")

    monkeypatch.setattr(fa.importlib, "import_module", broken_import)
    monkeypatch.setattr(fa, "_IMPORT_FAILURES", {})
    fa._import_varlen_func.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="flash-attn 2 .* is installed but does not import "
                                                "\\(ImportError: .*undefined symbol"):
            assert not fa.flash_attn_available(2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not fa.flash_attn_available(2)  # once
        with pytest.raises(RuntimeError, match="installed but does not import \\(ImportError"):
            fa.FlashAttnAdapter(2)(*random_qkv([4]), cu_of([4]), 4, None)

        def absent(name):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)

        monkeypatch.setattr(fa.importlib, "import_module", absent)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not installed at all: the normal CPU case, no warning
            assert not fa.flash_attn_available(3)
    finally:
        fa._import_varlen_func.cache_clear()


@pytest.mark.parametrize("window", [None, 8, 64])
@pytest.mark.parametrize("in_dtype,compute_dtype,expect_dtype", [
    (torch.float32, torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float16, torch.float16),
    (torch.bfloat16, torch.float16, torch.bfloat16),  # already half: passed as is
])
def test_flash_adapter_calling_convention(window, in_dtype, compute_dtype, expect_dtype):
    lengths = LENGTHS
    qkv = torch.randn(sum(lengths), 3, H, D, generator=torch.Generator().manual_seed(4)).to(in_dtype).requires_grad_()
    q, k, v = qkv.unbind(1)  # non-contiguous views, as a fused Wqkv produces them
    cu = cu_of(lengths).long()  # the adapter must hand flash-attn int32
    rec = Recorder()
    adapter = fa.FlashAttnAdapter(2, varlen_func=rec, compute_dtype=compute_dtype, deterministic=True)
    out = adapter(q, k, v, cu, 150, window, 0.0)
    (args, kwargs), = rec.calls
    assert len(args) == 3  # q, k, v; everything else by keyword (the published signatures differ in order)
    for x in args:
        assert x.dtype == expect_dtype and x.stride(-1) == 1 and x.shape == (sum(lengths), H, D)
    for name in ("cu_seqlens_q", "cu_seqlens_k"):
        assert kwargs.pop(name).dtype == torch.int32
    assert kwargs.pop("max_seqlen_q") == kwargs.pop("max_seqlen_k") == 150
    assert kwargs == {"dropout_p": 0.0, "softmax_scale": None, "causal": False,
                      "window_size": (-1, -1) if window is None else (window, window), "deterministic": True}
    assert out.dtype == in_dtype and out.shape == q.shape
    rounded = [x.detach().to(expect_dtype).double() for x in (q, k, v)]
    torch.testing.assert_close(out.double(), reference(*rounded, lengths, window), atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert qkv.grad.dtype == in_dtype and torch.isfinite(qkv.grad.float()).all() and qkv.grad.abs().sum() > 0


def test_flash_adapter_passes_dropout_and_fa3_convention():
    q, k, v = random_qkv(LENGTHS, seed=5)
    cu = cu_of(LENGTHS)
    rec = Recorder()
    fa.FlashAttnAdapter(2, varlen_func=rec)(q, k, v, cu, 150, 64, 0.1)
    assert rec.calls[0][1]["dropout_p"] == 0.1
    # FA3: no dropout argument; releases returning (out, lse) are unwrapped; dropout > 0 is refused
    fa3 = fa.FlashAttnAdapter(3, varlen_func=fa3_standin)
    out = fa3(q, k, v, cu, 150, None, 0.0)
    torch.testing.assert_close(out.double(), reference(*[x.bfloat16().double() for x in (q, k, v)], LENGTHS, None),
                               atol=2e-2, rtol=2e-2)
    out_tuple = fa.FlashAttnAdapter(3, varlen_func=Recorder(returns_tuple=True))(q, k, v, cu, 150, None, 0.0)
    assert out_tuple.shape == q.shape
    with pytest.raises(ValueError, match="no attention dropout"):
        fa3(q, k, v, cu, 150, None, 0.1)


def test_flash_adapter_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(fa, "_import_varlen_func", lambda version: None)
    q, k, v = random_qkv([4])
    with pytest.raises(RuntimeError, match="`flash_attn` is not installed"):
        fa.FlashAttnAdapter(2)(q, k, v, cu_of([4]), 4, None)


@pytest.mark.parametrize("window_size,causal", [((-1, -1), False), ((8, 8), False), ((1, 1), False), ((-1, -1), True)])
def test_reference_varlen_attention_semantics(window_size, causal):
    q, k, v = random_qkv(LENGTHS, seed=6, dtype=torch.float64)
    cu = cu_of(LENGTHS)
    out = reference_varlen_attention(q, k, v, cu, cu, 150, 150, 0.0, window_size=window_size, causal=causal)
    window = None if window_size[0] < 0 else window_size[0]
    torch.testing.assert_close(out, reference(q, k, v, LENGTHS, window, causal=causal))
    with pytest.raises(TypeError, match="int32"):
        reference_varlen_attention(q, k, v, cu.long(), cu.long(), 150, 150)


# ------------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("lengths", [[1], [5], [0, 3, 7], [64, 65, 129, 2], [200, 1, 30]])
@pytest.mark.parametrize("window", [None, 0, 1, 8, 64, 1000])
def test_attention_flops_brute_force(lengths, window):
    pairs = sum(1 for n in lengths for i in range(n) for j in range(n) if window is None or abs(i - j) <= window)
    assert attention_flops(lengths, 12, 64, window) == 2 * 2 * 12 * 64 * pairs
    assert ak.lengths_from_cu_seqlens(cu_of(lengths)) == lengths


# ------------------------------------------------------------------------------------ selection
@pytest.fixture
def fake_machine(monkeypatch):
    """Pretend which flash-attn versions import (the stand-in below), whether the GPU is Hopper and whether
    FlexAttention compiles there (Triton)."""
    state = {"fa2": False, "fa3": False, "hopper": False, "flex": False}
    monkeypatch.setattr(fa, "_import_varlen_func", lambda version: fa2_standin if state[f"fa{version}"] else None)
    monkeypatch.setattr(ak, "_is_hopper", lambda device: state["hopper"])
    monkeypatch.setattr(ak, "flex_attention_usable", lambda device: state["flex"] and device.type == "cuda")

    def pretend(**settings):
        state.update(settings)
        ak._select.cache_clear()  # selection is cached per (name, device, dtype, ...): the machine "changed"

    pretend()
    yield pretend
    ak._select.cache_clear()


def kind(kernel):
    """The registry name of a selected kernel (flash-attn adapters come back bound to the imported function)."""
    if isinstance(kernel, fa.FlashAttnAdapter):
        assert kernel.varlen_func is fa2_standin and kernel.keywords is not None  # resolved at selection
        return f"flash_attn{kernel.version}"
    return next(name for name in ATTENTION_KERNELS.names() if ATTENTION_KERNELS.get(name) is kernel)


def test_select_on_cpu_and_by_name(fake_machine):
    for name in (None, "auto"):
        assert kind(select_kernel(name, "cpu", torch.float32, None)) == "sdpa"
        assert kind(select_kernel(name, "cpu", torch.bfloat16, 64)) == "sliding_window"
    fake_machine(fa2=True)  # installed but the tensors are on the CPU
    assert kind(select_kernel("auto", "cpu", torch.bfloat16, 64)) == "sliding_window"
    for name in ("eager", "sdpa", "sliding_window", "flash_attn2"):
        assert kind(select_kernel(name, "cpu", torch.float32, 64)) == name
    # an explicit flash-attn kernel that does not import is an error, not a silent fallback
    with pytest.raises(RuntimeError, match="attn_kernel: flash_attn3 needs flash-attn 3, but `flash_attn_interface` "
                                           "is not installed"):
        select_kernel("flash_attn3", "cpu", torch.float32, 64)
    with pytest.raises(KeyError, match="did you mean 'sliding_window'"):
        select_kernel("sliding_windw", "cpu", torch.float32, 64)


def test_select_auto_on_cuda(fake_machine):
    cuda, bf16 = torch.device("cuda", 0), torch.bfloat16
    assert kind(select_kernel(None, cuda, bf16, None)) == "sdpa" and kind(select_kernel(None, cuda, bf16, 64)) == "sliding_window"
    fake_machine(fa2=True)
    assert kind(select_kernel(None, cuda, bf16, None)) == "flash_attn2"
    assert kind(select_kernel(None, cuda, torch.float16, 64)) == "flash_attn2"
    assert kind(select_kernel(None, cuda, torch.float32, 64)) == "sliding_window"  # fp32 runs are not cast to bf16
    fake_machine(fa3=True, hopper=True)
    assert kind(select_kernel(None, cuda, bf16, None)) == "flash_attn3"
    assert kind(select_kernel(None, cuda, bf16, 64)) == "flash_attn2"  # local layers stay on FA2
    assert kind(select_kernel(None, cuda, bf16, None, dropout_p=0.1)) == "flash_attn2"  # FA3 has no dropout
    fake_machine(fa2=False)
    assert kind(select_kernel(None, cuda, bf16, None)) == "flash_attn3"
    assert kind(select_kernel(None, cuda, bf16, 64)) == "sliding_window"
    det = select_kernel(None, cuda, bf16, None, deterministic=True)
    assert kind(det) == "flash_attn3" and det.deterministic and not ATTENTION_KERNELS.get("flash_attn3").deterministic


def test_select_auto_takes_flex_attention_on_cuda_without_flash_attn(fake_machine):
    cuda, bf16 = torch.device("cuda", 0), torch.bfloat16
    fake_machine(flex=True)  # no flash-attn: FlexAttention for global and local layers, in any dtype
    for dtype in (bf16, torch.float16, torch.float32):
        for window in (None, 64):
            assert kind(select_kernel("auto", cuda, dtype, window)) == "flex_attention"
    # attention dropout: FlexAttention has none, so auto keeps the SDPA kernels
    assert kind(select_kernel(None, cuda, bf16, None, dropout_p=0.1)) == "sdpa"
    assert kind(select_kernel(None, cuda, bf16, 64, dropout_p=0.1)) == "sliding_window"
    assert kind(select_kernel(None, "cpu", bf16, 64)) == "sliding_window"  # never on the CPU (eager, dense)
    fake_machine(fa3=True, hopper=True)  # FA3 on global layers, FlexAttention where FA3 does not apply
    assert kind(select_kernel(None, cuda, bf16, None)) == "flash_attn3"
    assert kind(select_kernel(None, cuda, bf16, 64)) == "flex_attention"
    fake_machine(fa2=True)  # flash-attn 2 wins in half precision; fp32 is not cast to bf16
    assert kind(select_kernel(None, cuda, bf16, 64)) == "flash_attn2"
    assert kind(select_kernel(None, cuda, torch.float32, 64)) == "flex_attention"
    # by name it runs anywhere (eager on the CPU), but an explicit choice with attention dropout is an error
    assert kind(select_kernel("flex_attention", "cpu", torch.float32, 64)) == "flex_attention"
    with pytest.raises(ValueError, match="attn_kernel: flex_attention has no attention dropout; set "
                                         "model_config.attention_probs_dropout_prob: 0.0"):
        select_kernel("flex_attention", cuda, bf16, None, dropout_p=0.1)


def test_flex_attention_usable_needs_cuda_and_triton(monkeypatch):
    assert not ak.flex_attention_usable(torch.device("cpu"))
    monkeypatch.setattr(ak.importlib.util, "find_spec", lambda name: object() if name == "triton" else None)
    assert ak.flex_attention_usable(torch.device("cuda", 0))
    monkeypatch.setattr(ak.importlib.util, "find_spec", lambda name: None)
    assert not ak.flex_attention_usable(torch.device("cuda", 0))


def test_packed_index_checks():
    index = PackedIndex.from_cu_seqlens(cu_of([3, 0, 5]))
    assert index.lengths == [3, 5] and index.cu_seqlens.tolist() == [0, 3, 8] and index.max_seqlen == 5
    assert index.doc_ids.tolist() == [0] * 3 + [1] * 5 and index.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert index.key_padding_mask.view(2, 5).tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert PackedIndex.from_cu_seqlens(cu_of([4, 4])).key_padding_mask is None
    with pytest.raises(ValueError, match="longest document"):
        PackedIndex.from_cu_seqlens(cu_of([3, 5]), max_seqlen=4)
    with pytest.raises(ValueError, match="non-decreasing"):
        PackedIndex.from_cu_seqlens(torch.tensor([0, 5, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="window"):
        ATTENTION_KERNELS.get("sdpa")(*random_qkv([4]), cu_of([4]), 4, -1)
