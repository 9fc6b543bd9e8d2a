"""The FlexAttention kernel (`attn_kernel: flex_attention`, flexbert/model/attention_kernels.py + flex_blocks.py)
against independent references: the naive per-document varlen attention of tests/varlen_reference.py (float64)
for outputs and gradients; the tiles a block mask lists against a same-document / |i - j| <= window mask written
here token by token (FlexAttention's eager CPU form evaluates every score, so only this test sees the block
structure its compiled GPU kernels rely on); and the whole model against its SDPA kernels."""

from __future__ import annotations

import functools

import pytest
import torch

from flexbert import FlexBertConfig
from flexbert.model import attention_kernels as ak
from flexbert.model import flex_blocks
from flexbert.model.attention_kernels import ATTENTION_KERNELS, PackedIndex
from flexbert.model.modeling import FlexBertForMaskedLM
from tests.helpers import TINY_MODERNBERT, mixed_length_batch
from tests.varlen_reference import reference_varlen_attention

flex = ATTENTION_KERNELS.get("flex_attention")
# 1..300-token documents, several per pack, across block boundaries (128), an empty one; one long document
PACKS = {"mixed": [3, 40, 1, 0, 150, 17, 90, 300], "one_doc": [257], "block_edges": [128, 1, 127, 129]}


@functools.lru_cache(maxsize=None)
def cpu_backward() -> bool:
    return flex_blocks.cpu_backward_supported()


def cu_of(lengths):
    return torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)


def qkv(lengths, heads, head_dim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(sum(lengths), heads, head_dim, generator=g) for _ in range(3)]


def reference(q, k, v, cu, window):
    """flash-attn's varlen semantics (naive, float64): window w on both sides is window_size=(w, w)."""
    size = (-1, -1) if window is None else (window, window)
    n = int(cu.diff().max())
    return reference_varlen_attention(q, k, v, cu, cu, n, n, window_size=size)


@pytest.mark.parametrize("pack,window", [("mixed", None), ("mixed", 8), ("block_edges", 64), ("one_doc", 8)])
def test_flex_matches_reference_forward_and_grads(pack, window):
    lengths = PACKS[pack]
    head_dim = 24 if pack == "mixed" else 16  # 24: not a power of two, padded to 32 for FlexAttention
    q, k, v = qkv(lengths, 2, head_dim, seed=len(lengths))
    cu = cu_of(lengths)
    index = PackedIndex.from_cu_seqlens(cu)
    grad = cpu_backward()
    leaves = [x.clone().requires_grad_(grad) for x in (q, k, v)]
    out = flex(*leaves, cu, index.max_seqlen, window, index=index)
    ref_leaves = [x.double().requires_grad_(grad) for x in (q, k, v)]
    ref = reference(*ref_leaves, cu, window)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    if not grad:
        pytest.skip("this torch runs no FlexAttention backward on the CPU (outputs checked; gradients: GPU check)")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * grad_out).sum().backward()
    (ref * grad_out.double()).sum().backward()
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-5, rtol=1e-5)


def visible_by_tiles(mask, size: int) -> torch.Tensor:
    """(size, size) bool: what FlexAttention's block-sparse kernels compute from `mask` -- every pair in a listed
    full tile, and mask_mod's verdict on the pairs of a listed partial tile; nothing elsewhere."""
    B = flex_blocks.BLOCK
    q_idx = torch.arange(size)[:, None]
    kv_idx = torch.arange(size)[None, :]
    mod = mask.mask_mod(0, 0, q_idx, kv_idx)
    visible = torch.zeros(size, size, dtype=torch.bool)
    for counts, indices, full in ((mask.kv_num_blocks, mask.kv_indices, False),
                                  (mask.full_kv_num_blocks, mask.full_kv_indices, True)):
        for qb in range(size // B):
            for kb in indices[0, 0, qb, : counts[0, 0, qb]].tolist():
                rows, cols = slice(qb * B, (qb + 1) * B), slice(kb * B, (kb + 1) * B)
                assert not visible[rows, cols].any(), f"tile ({qb}, {kb}) listed twice"
                visible[rows, cols] = True if full else mod[rows, cols]
    return visible


@pytest.mark.parametrize("window", [None, 0, 64, 200])
def test_block_mask_tiles_hold_exactly_the_visible_pairs(window):
    lengths = [1, 127, 128, 300, 5, 600, 64, 2]  # 1227 tokens: 10 blocks, documents inside, across and over them
    index = PackedIndex.from_cu_seqlens(cu_of(lengths))
    mask = flex_blocks.packed_block_mask(index.doc_ids, index.batch_size, window)
    T, size = index.num_tokens, flex_blocks.padded_length(index.num_tokens)
    assert size == 1280 and mask.seq_lengths == (size, size)
    doc = torch.tensor([d for d, n in enumerate(lengths) for _ in range(n)])
    want = doc[:, None] == doc[None, :]
    if window is not None:
        pos = torch.arange(T)
        want &= (pos[:, None] - pos[None, :]).abs() <= window
    got = visible_by_tiles(mask, size)
    assert torch.equal(got[:T, :T], want)
    assert not got[:T, T:].any() and not got[T:, :T].any()  # padding: invisible to real tokens and sees none
    assert got[T:, T:].diagonal().all()  # each padding query has a key: no empty softmax row
    # block-sparse: a local layer visits at most the tiles its window can reach
    if window is not None and window < 128:
        assert int((mask.kv_num_blocks + mask.full_kv_num_blocks).max()) <= 3
    # the backward pass reads the transposed lists; they must describe the same tiles
    assert torch.equal(mask.q_num_blocks.sum(), mask.kv_num_blocks.sum())


def test_flex_head_dim_and_padding_rules():
    assert [flex_blocks.flex_head_dim(d) for d in (1, 8, 16, 24, 64, 65, 128)] == [16, 16, 16, 32, 64, 128, 128]
    assert [flex_blocks.padded_length(t) for t in (0, 1, 128, 129, 8192)] == [128, 128, 128, 256, 8192]


def test_flex_refuses_dropout_and_handles_an_empty_batch():
    q, k, v = qkv([4, 5], 2, 16, seed=0)
    with pytest.raises(ValueError, match="attn_kernel flex_attention has no attention dropout"):
        flex(q, k, v, cu_of([4, 5]), 5, None, 0.1)
    empty = torch.zeros(0, 2, 16)
    assert flex(empty, empty, empty, cu_of([0]), 0, None).shape == (0, 2, 16)


def model_config(**overrides) -> FlexBertConfig:
    return FlexBertConfig(**{**TINY_MODERNBERT, "num_hidden_layers": 3, **overrides})


def test_block_masks_built_once_per_batch_one_per_window(monkeypatch):
    built = []
    real = ak.packed_block_mask
    monkeypatch.setattr(ak, "packed_block_mask", lambda doc, n, window: built.append(window) or real(doc, n, window))
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(model_config(num_hidden_layers=6, attn_kernel="flex_attention")).eval()
    ids, mask = mixed_length_batch(2, 20, 128, [20, 3])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    # 6 layers, 2 global (window None) and 4 local (sliding_window 8: 4 each side): one mask per window
    assert sorted(built, key=str) == [4, None]
    built.clear()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert sorted(built, key=str) == [4, None]  # a new batch, new masks


def test_model_logits_with_flex_equal_sdpa():
    ids, mask = mixed_length_batch(4, 150, 128, [150, 1, 77, 129])
    logits = {}
    for kernel in ("flex_attention", "sdpa", "eager"):
        torch.manual_seed(0)
        model = FlexBertForMaskedLM(model_config(attn_kernel=kernel)).eval()
        with torch.no_grad():
            logits[kernel] = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits["flex_attention"][real], logits["sdpa"][real], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(logits["flex_attention"][real], logits["eager"][real], atol=2e-5, rtol=2e-5)


def test_model_with_attention_dropout_refuses_flex_in_training():
    model = FlexBertForMaskedLM(model_config(attn_kernel="flex_attention", attention_probs_dropout_prob=0.1)).train()
    ids, mask = mixed_length_batch(2, 16, 128, [16, 9])
    with pytest.raises(ValueError, match="attention_probs_dropout_prob: 0.0"):
        model(input_ids=ids, attention_mask=mask)
    with torch.no_grad():  # evaluation has no dropout: it runs
        model.eval()(input_ids=ids, attention_mask=mask)
