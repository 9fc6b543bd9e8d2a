"""Model FLOP accounting (flexbert/model/flops.py `training_flops`) against two independent counts:

- a naive count written here from the layer shapes the config implies (Wqkv 3H x H, Wo H x H, GLU Wi 2I x H,
  Wo H x I, head H x H, decoder V x H; 2 FLOPs per multiply-add, backward = 2x forward) plus attention over the
  (query, key) pairs enumerated one by one (same document, |i - j| <= window on local layers);
- the matmuls the model really runs in a forward + backward, counted by torch's FlopCounterMode (aten mm/addmm;
  the CPU attention kernels are not among its counted ops, so attention is checked by the enumeration only).
Tiny config, packed documents shorter and longer than the window, a padding tail, masked prediction on and off.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flexbert import FlexBertConfig
from flexbert.model.flops import training_flops
from flexbert.model.modeling import FlexBertForMaskedLM
from tests.helpers import TINY_MODERNBERT

LENGTHS = [5, 13, 1, 9, 20]  # sliding_window 8 -> one-sided window 4: documents shorter and longer than it
PAD_TAIL = 3


def visible_pairs_by_enumeration(lengths, window):
    return sum(1 for n in lengths for i in range(n) for j in range(n) if window is None or abs(i - j) <= window)


def naive_flops(config, lengths, head_tokens):
    """(linear-layer FLOPs, attention FLOPs) of one training step, forward + backward."""
    H, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    tokens = sum(lengths)
    per_layer_weights = 3 * H * H + H * H + 2 * I * H + I * H  # Wqkv, attention Wo, GLU Wi, MLP Wo
    linear = 2 * config.num_hidden_layers * per_layer_weights * tokens + 2 * (H * H + V * H) * head_tokens
    attention = 0
    for layer in range(config.num_hidden_layers):
        is_global = layer % config.global_attn_every_n_layers == 0
        pairs = visible_pairs_by_enumeration(lengths, None if is_global else config.sliding_window // 2)
        attention += 2 * 2 * H * pairs  # QK^T and PV, each 2 FLOPs per multiply-add, over all heads' channels
    return 3 * linear, 3 * attention


def model_for(masked_prediction: bool) -> FlexBertForMaskedLM:
    torch.manual_seed(0)
    config = FlexBertConfig(**{**TINY_MODERNBERT, "masked_prediction": masked_prediction, "num_hidden_layers": 4})
    return FlexBertForMaskedLM(config)


def packed_batch(lengths, seed=0):
    """One packed row: documents back to back, a padding tail, about a third of the real tokens masked."""
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    ids = torch.randint(5, 128, (1, T + PAD_TAIL), generator=gen)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(T, generator=gen) < 0.3
    labels[0, :T][masked] = ids[0, :T][masked]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return {"input_ids": ids, "cu_seqlens": cu, "max_seqlen": max(lengths), "labels": labels}, int(masked.sum())


def executed_matmul_flops(model, batch, **forward_kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        model(**batch, **forward_kwargs).loss.backward()
    counts = counter.get_flop_counts()["Global"]
    assert set(counts) <= {torch.ops.aten.mm, torch.ops.aten.addmm}, f"unexpected counted ops {set(counts)}"
    return sum(counts.values())


@pytest.mark.parametrize("masked_prediction", [True, False])
def test_packed_batch_matches_naive_and_executed_counts(masked_prediction):
    model = model_for(masked_prediction)
    batch, n_masked = packed_batch(LENGTHS)
    head_tokens = n_masked if masked_prediction else sum(LENGTHS)
    linear, attention = naive_flops(model.config, LENGTHS, head_tokens)
    assert training_flops(model, batch) == linear + attention
    assert executed_matmul_flops(model, batch) == linear  # the model runs exactly these matmuls, no more
    if masked_prediction:
        assert n_masked < sum(LENGTHS)  # the head really ran on fewer tokens


@pytest.mark.parametrize("masked_prediction", [True, False])
def test_step_without_logits_runs_the_head_on_labelled_tokens_with_the_same_matmuls(masked_prediction):
    """return_logits=False (the trainer without training metrics): chunked loss, gradients formed in the forward;
    the matmul work is that of the masked-only head, whatever masked_prediction says."""
    model = model_for(masked_prediction)
    batch, n_masked = packed_batch(LENGTHS)
    linear, attention = naive_flops(model.config, LENGTHS, n_masked)
    assert training_flops(model, batch, head_on_labelled_only=True) == linear + attention
    assert executed_matmul_flops(model, batch, return_logits=False) == linear


def test_padded_batch_counts_real_tokens_only():
    model = model_for(True)
    lengths = [7, 16, 2]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 128, (3, 16), generator=gen)
    mask = torch.zeros(3, 16, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    labels = torch.where((torch.rand(3, 16, generator=gen) < 0.4) & mask.bool(), ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    linear, attention = naive_flops(model.config, lengths, int((labels != -100).sum()))
    assert training_flops(model, batch) == linear + attention
    assert executed_matmul_flops(model, batch) == linear


def test_loader_batch_with_several_rows_sums_the_rows():
    """The training loader's layout: rows stacked, cu_seqlens (rows, D_max + 1) padded with -1."""
    model = model_for(True)
    rows = [packed_batch([5, 13, 1], seed=2), packed_batch([20, 9], seed=3)]
    width = max(b["input_ids"].shape[1] for b, _ in rows)
    cu = torch.full((2, 4), -1, dtype=torch.int32)
    ids = torch.zeros(2, width, dtype=torch.long)
    labels = torch.full((2, width), -100)
    for r, (b, _) in enumerate(rows):
        cu[r, : b["cu_seqlens"].numel()] = b["cu_seqlens"]
        ids[r, : b["input_ids"].shape[1]] = b["input_ids"][0]
        labels[r, : b["labels"].shape[1]] = b["labels"][0]
    expected = sum(sum(naive_flops(model.config, lengths, n)) for lengths, (_, n) in zip([[5, 13, 1], [20, 9]], rows))
    assert training_flops(model, {"input_ids": ids, "cu_seqlens": cu, "labels": labels}) == expected
