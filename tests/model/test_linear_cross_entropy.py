"""Chunked decoder + cross entropy (flexbert.model.linear_cross_entropy) against PyTorch's cross entropy on the
materialized logits, in float64: loss and the gradients of hidden states, weight and bias."""

import pytest
import torch
import torch.nn.functional as F

from flexbert.model.linear_cross_entropy import linear_cross_entropy
from tests.helpers import TINY_MODERNBERT, mixed_length_batch


def reference_loss(hidden, weight, bias, labels, ignore_index, label_smoothing, z_scale, reduction):
    """The definition: logits, PyTorch's cross entropy, plus z-loss = scale * logsumexp^2 over kept rows."""
    logits = F.linear(hidden, weight, bias)
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction=reduction)
    if z_scale:
        lse_sq = torch.logsumexp(logits[labels != ignore_index], -1).square()
        loss = loss + z_scale * (lse_sq.mean() if reduction == "mean" else lse_sq.sum())
    return loss


def leaves(n, vocab, hidden_size, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: (torch.randn(*shape, generator=gen, dtype=torch.float64) * 2).requires_grad_()  # noqa: E731
    return make(n, hidden_size), make(vocab, hidden_size), make(vocab) if with_bias else None


@pytest.mark.parametrize("label_smoothing,z_scale,reduction,with_bias,chunk", [
    (0.0, 0.0, "mean", True, 7),     # several chunks, a short last one
    (0.1, 0.0, "mean", True, 64),    # one chunk holds every row
    (0.0, 1e-3, "mean", False, 5),
    (0.2, 1e-2, "sum", True, 3),
    (0.0, 0.0, "sum", False, 1),
])
def test_loss_and_gradients_match_cross_entropy_on_logits(label_smoothing, z_scale, reduction, with_bias, chunk):
    n, vocab, hidden_size = 23, 41, 16
    labels = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(1))
    labels[[0, 5, 6, 22]] = -100  # ignored rows, including the first and last
    ours_in = leaves(n, vocab, hidden_size, with_bias, seed=2)
    ref_in = [x.detach().clone().requires_grad_() if x is not None else None for x in ours_in]

    ours = linear_cross_entropy(*ours_in, labels, label_smoothing=label_smoothing, lse_square_scale=z_scale,
                                reduction=reduction, chunk_rows=chunk)
    ref = reference_loss(*ref_in, labels, -100, label_smoothing, z_scale, reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)

    upstream = 0.37  # the gradients must scale with the loss' upstream gradient
    (ours * upstream).backward()
    (ref * upstream).backward()
    for name, a, b in zip(("hidden", "weight", "bias"), ours_in, ref_in):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=f"grad of {name}")


def test_all_rows_ignored_gives_nan_mean_and_zero_gradients():
    hidden, weight, bias = leaves(4, 9, 8, True, seed=3)
    labels = torch.full((4,), -100)
    loss = linear_cross_entropy(hidden, weight, bias, labels)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(F.linear(hidden, weight, bias), labels))
    linear_cross_entropy(hidden, weight, bias, labels, reduction="sum").backward()
    assert hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_frozen_inputs_get_no_gradient_and_no_grad_mode_computes_the_loss_only():
    hidden, weight, bias = leaves(10, 13, 8, True, seed=4)
    labels = torch.randint(0, 13, (10,))
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, bias, labels, chunk_rows=3)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None and bias.grad is not None
    with torch.no_grad():
        again = linear_cross_entropy(hidden, weight, bias, labels, chunk_rows=4)
    torch.testing.assert_close(again, F.cross_entropy(F.linear(hidden, weight, bias), labels).detach())


def test_rejects_unknown_reduction():
    hidden, weight, bias = leaves(2, 5, 4, False, seed=5)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, bias, torch.zeros(2, dtype=torch.long), reduction="none")


@pytest.mark.parametrize("masked_prediction", [True, False])
def test_model_without_logits_matches_the_model_with_logits(masked_prediction):
    """FlexBertForMaskedLM(return_logits=False): same loss, same gradient on every parameter (incl. the decoder
    weight tied to the embeddings), logits None."""
    from flexbert import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM

    config = FlexBertConfig(**{**TINY_MODERNBERT, "masked_prediction": masked_prediction,
                               "loss_kwargs": {"lse_square_scale": 1e-4, "label_smoothing": 0.05}})
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(config).double().train()
    ids, mask = mixed_length_batch(3, 40, config.vocab_size, [40, 17, 29])
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3) & (mask == 1)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.where(chosen, ids, -100)}
    grads = []
    for return_logits in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(**batch, return_logits=return_logits)
        assert (out.logits is None) == (not return_logits)
        out.loss.backward()
        grads.append((out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (loss_ref, grads_ref), (loss, grads_ours) = grads
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    assert grads_ours.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_ours[name], grads_ref[name], rtol=1e-9, atol=1e-12, msg=name)


def test_composer_model_skips_logits_only_in_training_without_training_metrics():
    from flexbert import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.composer_model import FlexBertComposerModel

    ids, mask = mixed_length_batch(2, 24, 128, [24, 11])
    labels = torch.where((torch.arange(24) % 3 == 0) & (mask == 1), ids, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**TINY_MODERNBERT))
    for disable_train_metrics, expect_logits in ((True, False), (False, True)):
        composer_model = FlexBertComposerModel(model, disable_train_metrics=disable_train_metrics).train()
        out = composer_model(batch)
        assert (out.logits is not None) == expect_logits
        with torch.no_grad():
            logits = model(**batch).logits  # (n_masked, V) with masked_prediction, else (B, S, V)
        kept = labels[labels != -100]
        expected = F.cross_entropy(logits if logits.dim() == 2 else logits[labels != -100], kept)
        torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-6, atol=1e-6)
        composer_model.eval()
        assert composer_model(batch).logits is not None  # evaluation always gets logits


def test_bf16_autocast_matches_the_unfused_path_under_autocast():
    """Under AMP (bf16 autocast, as on GPU) the matmuls run in bf16, softmax and accumulators in fp32, like the
    unfused path (bf16 logits upcast for the loss, bf16 matmuls in its backward); gradients come back in the
    parameters' dtype (the fused path accumulates the weight and bias gradients in fp32 across chunks, the unfused
    one in bf16: they differ by ~0.3% of the largest entry)."""
    n, vocab, hidden_size = 64, 300, 32
    hidden, weight, bias = (x.detach().float().requires_grad_() for x in leaves(n, vocab, hidden_size, True, seed=6))
    labels = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(7))
    ref_in = [x.detach().clone().requires_grad_() for x in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, bias, labels, lse_square_scale=1e-3, chunk_rows=10)
        logits = F.linear(*ref_in)
        assert logits.dtype == torch.bfloat16
        logits = logits.float()
        ref = F.cross_entropy(logits, labels) + 1e-3 * torch.logsumexp(logits, -1).square().mean()
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("hidden", "weight", "bias"), (hidden, weight, bias), ref_in):
        assert a.grad.dtype == torch.float32, name
        assert (a.grad - b.grad).abs().max() < 1e-2 * b.grad.abs().max(), name


def test_second_backward_through_the_same_graph_is_refused():
    hidden, weight, bias = leaves(6, 11, 8, True, seed=8)
    loss = linear_cross_entropy(hidden, weight, bias, torch.randint(0, 11, (6,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
