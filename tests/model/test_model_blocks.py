"""Every registered block combination builds, trains a step on CPU, and padded vs packed execution agree."""

import itertools
import math

import pytest
import torch

from flexbert import FlexBertConfig, FlexBertForMaskedLM
from flexbert.model import registries
from flexbert.model.attention_kernels import ATTENTION_KERNELS
from tests.helpers import TINY_MODERNBERT, mixed_length_batch


def _valid_combinations():
    for layer, attention, mlp in itertools.product(
        registries.names("layer"), registries.names("attention"), registries.names("mlp")
    ):
        try:
            registries.check_layer_combination(layer, attention, mlp)
        except ValueError:
            continue
        yield layer, attention, mlp


# triton_* norms are the same math as their PyTorch twins on CPU: one combination each keeps the suite short.
COMBINATIONS = [
    (emb, norm, *blocks)
    for emb, norm, blocks in itertools.product(registries.names("embedding"), ["layernorm", "rmsnorm"], list(_valid_combinations()))
] + [("sans_pos", norm, "prenorm", "rope", "glu") for norm in registries.names("norm") if norm.startswith("triton_")]


def test_combination_count_covers_every_name():
    used = {kind: {c[i] for c in COMBINATIONS} for i, kind in enumerate(["embedding", "norm", "layer", "attention", "mlp"])}
    for kind, names in used.items():
        assert names == set(registries.names(kind)), kind


def _packed_from_padded(ids, mask):
    lengths = mask.sum(1).tolist()
    row = torch.cat([ids[i, :n] for i, n in enumerate(lengths)] + [torch.zeros(5, dtype=torch.long)])[None]
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)
    return row, cu


@pytest.mark.parametrize("embedding,norm,layer,attention,mlp", COMBINATIONS)
def test_block_combination_trains_and_packs(embedding, norm, layer, attention, mlp):
    torch.manual_seed(0)
    config = FlexBertConfig(**{
        **TINY_MODERNBERT, "num_hidden_layers": 2, "global_attn_every_n_layers": 2, "max_position_embeddings": 64,
        "embedding_layer": embedding, "normalization": norm, "bert_layer": layer, "attention_layer": attention,
        "mlp_layer": mlp, "skip_first_prenorm": layer != "postnorm",
    })
    model = FlexBertForMaskedLM(config)
    ids, mask = mixed_length_batch(3, 20, 128, lengths=[20, 7, 13], seed=0)
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 20, 128) and math.isfinite(out.loss.item())
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"

    model.eval()
    row, cu = _packed_from_padded(ids, mask)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        packed = model(input_ids=row, cu_seqlens=cu, max_seqlen=20).logits
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)


def test_padding_never_influences_real_tokens():
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**TINY_MODERNBERT)).eval()
    ids, mask = mixed_length_batch(2, 24, 128, lengths=[24, 10], seed=4)
    other = ids.clone()
    other[1, 10:] = torch.randint(5, 128, (14,))  # garbage in the padding
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=other, attention_mask=mask).logits
    torch.testing.assert_close(a[1, :10], b[1, :10], atol=0, rtol=0)


@pytest.mark.parametrize("method", registries.names("init"))
def test_init_schemes_follow_their_std(method):
    torch.manual_seed(0)
    kwargs = {**TINY_MODERNBERT, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 384, "init_method": method,
              "tie_word_embeddings": False}
    config = FlexBertConfig(**kwargs)
    model = FlexBertForMaskedLM(config)
    layers, hidden, std0 = config.num_hidden_layers, config.hidden_size, config.init_std
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)  # standard normal density at 2
    trunc = math.sqrt(1 - 4 * phi2 / math.erf(2 / math.sqrt(2)))  # std of a standard normal truncated at +-2
    expected = {  # (embedding, Wqkv in, attn Wo out, decoder final_out) before truncation, from the scheme's definition
        "default": (std0, std0, std0, std0),
        "normal": (std0, std0, std0 / math.sqrt(2 * layers), std0),
        "mitchell": (hidden**-0.5, hidden**-0.5, (2 * hidden * 2) ** -0.5, hidden**-0.5),  # layer 1: (layer+1) = 2
        "kaiming_normal": (None, hidden**-0.5, hidden**-0.5, hidden**-0.5),
        "fan_in": (hidden**-0.5, hidden**-0.5, hidden**-0.5, hidden**-0.5),
        "full_megatron": (std0, std0, std0 / math.sqrt(2 * layers), hidden**-0.5),
    }[method]
    factor = 1.0 if method == "kaiming_normal" else trunc
    tensors = (
        model.bert.embeddings.tok_embeddings.weight[1:],
        model.bert.encoder.layers[1].attn.Wqkv.weight,
        model.bert.encoder.layers[1].attn.Wo.weight,
        model.decoder.weight,
    )
    for tensor, std in zip(tensors, expected):
        if std is None:  # kaiming: embeddings (fan_in = hidden in torch's convention for [V, H]) -> 1/sqrt(H)
            std = hidden**-0.5
        assert tensor.std().item() == pytest.approx(std * factor, rel=0.08)
    assert torch.all(model.bert.encoder.layers[1].attn_norm.weight == 1)


@pytest.mark.parametrize("kernel", ["eager", "sdpa", "sliding_window"])
def test_kernels_give_the_same_model_output(kernel):
    """The model's output does not depend on which (CPU) kernel computes attention."""
    torch.manual_seed(0)
    reference = FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, "attn_kernel": "eager"})).eval()
    other = FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, "attn_kernel": kernel})).eval()
    other.load_state_dict(reference.state_dict())
    ids, mask = mixed_length_batch(3, 32, 128, lengths=[32, 3, 19], seed=5)
    with torch.no_grad():
        torch.testing.assert_close(
            other(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            reference(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            atol=1e-5, rtol=1e-5,
        )
    assert set(ATTENTION_KERNELS.names()) >= {"eager", "sdpa", "sliding_window", "flash_attn2", "flash_attn3"}
