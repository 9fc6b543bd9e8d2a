"""FlexBERT vs transformers' ModernBertForMaskedLM (eager attention): same weights, same logits.

transformers' implementation is the independent reference: different code (padded execution, dense
sliding-window masks, its own RoPE), same architecture. Tolerance 1e-4 in fp32.
"""

import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM

from flexbert import FlexBertConfig, FlexBertForMaskedLM
from flexbert.hf_interop import flexbert_to_hf_name, modernbert_config_dict
from tests.helpers import TINY_MODERNBERT, mixed_length_batch

CASES = {
    "window_shorter_than_docs_global_every_3": dict(sliding_window=8, global_attn_every_n_layers=3),
    "global_every_2_distinct_theta": dict(
        sliding_window=6, global_attn_every_n_layers=2, rotary_emb_base=160000.0, local_attn_rotary_emb_base=10000.0
    ),
    "all_global": dict(sliding_window=-1, global_attn_every_n_layers=-1),
    "biases_and_norm_bias": dict(
        attn_qkv_bias=True, attn_out_bias=True, mlp_in_bias=True, mlp_out_bias=True, head_pred_bias=True,
        norm_kwargs={"eps": 1e-6, "bias": True},
    ),
    "untied_silu_head_five_layers": dict(tie_word_embeddings=False, head_pred_act="silu", num_hidden_layers=5, sliding_window=4),
}


def _pair(overrides):
    torch.manual_seed(0)
    config = FlexBertConfig(**{**TINY_MODERNBERT, **overrides})
    ours = FlexBertForMaskedLM(config).eval()
    # perturb norms and biases away from their init so a swapped or skipped one shows
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    hf_config = ModernBertConfig(**modernbert_config_dict(config))
    hf_config._attn_implementation = "eager"
    theirs = ModernBertForMaskedLM(hf_config).eval()
    missing, unexpected = theirs.load_state_dict({flexbert_to_hf_name(k): v for k, v in ours.state_dict().items()}, strict=False)
    assert not unexpected and set(missing) <= {"decoder.weight"}
    if not config.tie_word_embeddings:
        assert torch.equal(theirs.decoder.weight, ours.decoder.weight)
    return ours, theirs


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_modernbert(case):
    ours, theirs = _pair(CASES[case])
    ids, mask = mixed_length_batch(4, 40, 128, lengths=[40, 23, 9, 31], seed=1)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    assert got.shape == expected.shape == (4, 40, 128)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_packed_input_matches_transformers_per_document():
    """The loader's packed row (documents back to back, padding tail) gives each document's own logits."""
    ours, theirs = _pair(CASES["window_shorter_than_docs_global_every_3"])
    lengths = [17, 5, 30]
    ids, mask = mixed_length_batch(3, 30, 128, lengths=lengths, seed=2)
    packed_row = torch.cat([ids[i, :n] for i, n in enumerate(lengths)] + [torch.zeros(8, dtype=torch.long)])[None]
    cu = torch.tensor([0, 17, 22, 52], dtype=torch.int32)
    with torch.no_grad():
        got = ours(input_ids=packed_row, cu_seqlens=cu, max_seqlen=30).logits  # (52, V)
        expected = theirs(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected[mask.bool()], atol=1e-4, rtol=0)


def test_gradients_match_transformers():
    ours, theirs = _pair(CASES["global_every_2_distinct_theta"])
    ids, mask = mixed_length_batch(2, 24, 128, lengths=[24, 13], seed=3)
    labels = ids.masked_fill(mask == 0, -100)
    ours(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    theirs(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_theirs[flexbert_to_hf_name(name)], atol=1e-5, rtol=1e-4)
