"""Schema options beyond the block names: initial layers, masked prediction, logits padding, losses, RoPE forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from flexbert import FlexBertConfig, FlexBertForMaskedLM
from flexbert.model.loss import CrossEntropyLoss
from flexbert.model.rotary import apply_rope, rope_tables
from tests.helpers import TINY_MODERNBERT, mixed_length_batch


def _model(**overrides):
    torch.manual_seed(0)
    return FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, **overrides}))


def test_initial_layers_use_their_own_blocks():
    model = _model(num_initial_layers=2, initial_mlp_layer="mlp", initial_attention_layer="base")
    layers = model.bert.encoder.layers
    assert [l.mlp.Wi.out_features for l in layers] == [96, 96, 192, 192]
    assert [l.attn.spec.rope for l in layers] == [False, False, True, True]


def test_masked_prediction_equals_full_head_on_masked_positions():
    full = _model().eval()
    sparse = _model(masked_prediction=True).eval()
    sparse.load_state_dict(full.state_dict())
    ids, mask = mixed_length_batch(2, 20, 128, lengths=[20, 11], seed=0)
    labels = torch.full_like(ids, -100)
    labels[0, [1, 5, 7]] = ids[0, [1, 5, 7]]
    labels[1, [0, 10]] = ids[1, [0, 10]]
    with torch.no_grad():
        out_full = full(input_ids=ids, attention_mask=mask, labels=labels)
        out_sparse = sparse(input_ids=ids, attention_mask=mask, labels=labels)
    selected = labels != -100
    torch.testing.assert_close(out_sparse.logits, out_full.logits[selected], atol=1e-6, rtol=0)
    expected = F.cross_entropy(out_full.logits[selected], labels[selected])
    torch.testing.assert_close(out_sparse.loss, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_full.loss, expected, atol=1e-6, rtol=0)


def test_packed_logits_are_unpadded_unless_pad_logits():
    ids = torch.randint(5, 128, (1, 24))
    cu = torch.tensor([0, 9, 20], dtype=torch.int32)
    with torch.no_grad():
        assert _model().eval()(input_ids=ids, cu_seqlens=cu).logits.shape == (20, 128)
        padded = _model(pad_logits=True).eval()(input_ids=ids, cu_seqlens=cu).logits
    assert padded.shape == (1, 24, 128) and torch.all(padded[0, 20:] == 0)


def test_dropout_is_active_in_training_and_reproducible_by_seed():
    model = _model(attn_out_dropout_prob=0.3, mlp_dropout_prob=0.3, embed_dropout_prob=0.1, attention_probs_dropout_prob=0.2)
    ids, mask = mixed_length_batch(2, 16, 128, lengths=[16, 9], seed=1)
    model.train()
    torch.manual_seed(3)
    a = model(input_ids=ids, attention_mask=mask).logits
    torch.manual_seed(3)
    b = model(input_ids=ids, attention_mask=mask).logits
    c = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)
    model.eval()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                               model(input_ids=ids, attention_mask=mask).logits, atol=0, rtol=0)


def test_untied_decoder_is_its_own_parameter():
    tied, untied = _model(), _model(tie_word_embeddings=False)
    assert tied.decoder.weight is tied.bert.embeddings.tok_embeddings.weight
    assert untied.decoder.weight is not untied.bert.embeddings.tok_embeddings.weight
    assert "decoder.weight" in dict(untied.named_parameters())


def test_z_loss_and_label_smoothing_follow_their_formulas():
    torch.manual_seed(0)
    logits, labels = torch.randn(12, 30), torch.randint(0, 30, (12,))
    labels[[2, 7]] = -100
    keep = labels != -100
    logp = logits[keep].log_softmax(-1)
    nll = -logp.gather(1, labels[keep, None]).squeeze(1)
    smooth = 0.1
    expected = ((1 - smooth) * nll - smooth * logp.mean(-1)).mean()
    lse = torch.logsumexp(logits[keep], -1)
    expected = expected + 1e-3 * (lse**2).mean()
    got = CrossEntropyLoss(label_smoothing=smooth, lse_square_scale=1e-3)(logits, labels)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def _naive_rope(x, positions, theta, rope_dim, interleaved):
    """Rotation of each (pair) of channels by angle pos * theta^(-2i/d), written out per pair."""
    out = x.clone()
    for t, pos in enumerate(positions.tolist()):
        for i in range(rope_dim // 2):
            angle = pos * theta ** (-2 * i / rope_dim)
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + rope_dim // 2)
            xa, xb = x[t, :, a], x[t, :, b]
            out[t, :, a] = xa * math.cos(angle) - xb * math.sin(angle)
            out[t, :, b] = xb * math.cos(angle) + xa * math.sin(angle)
    return out


@pytest.mark.parametrize("interleaved,rope_dim", [(False, 16), (True, 16), (False, 8), (True, 8)])
def test_rope_matches_pairwise_rotation(interleaved, rope_dim):
    torch.manual_seed(0)
    x = torch.randn(7, 3, 16, dtype=torch.float64)
    positions = torch.tensor([0, 1, 2, 0, 1, 5, 100])
    cos, sin = rope_tables(positions, rope_dim, 500.0, torch.float64)
    got = apply_rope(x, cos, sin, interleaved)
    # angles are computed in fp32 (as transformers does), hence 1e-5 rather than float64 precision
    torch.testing.assert_close(got, _naive_rope(x, positions, 500.0, rope_dim, interleaved), atol=1e-5, rtol=0)


def test_rope_makes_attention_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 16, dtype=torch.float64), torch.randn(1, 2, 16, dtype=torch.float64)

    def score(pq, pk):
        cq, sq = rope_tables(torch.tensor([pq]), 16, 10000.0, torch.float64)
        ck, sk = rope_tables(torch.tensor([pk]), 16, 10000.0, torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum(-1)

    torch.testing.assert_close(score(3, 7), score(103, 107), atol=1e-5, rtol=0)
    assert not torch.allclose(score(3, 7), score(3, 9), atol=1e-3)
