"""What the trainer applies to a built model (flexbert/train/parallelism.py): FSDP units and activation
checkpointing marks, checked through the rules Composer applies (`_fsdp_wrap` / `_activation_checkpointing` module
attributes) and torch's checkpoint wrapper on CPU -- a checkpointed model gives the same loss and gradients as the
plain one and keeps its parameter names -- and per-layer compile (CUDA only)."""

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from flexbert import FlexBertConfig
from flexbert.model.modeling import FlexBertForMaskedLM
from flexbert.train.parallelism import mark_fsdp_units, prepare_model
from flexbert.train.run_config import load_run_config
from tests.helpers import TINY_MODERNBERT, mixed_length_batch


def tiny_model(**overrides):
    torch.manual_seed(0)
    return FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, **overrides}))


def test_each_encoder_layer_is_one_unit_and_tied_weights_stay_in_the_root():
    model = tiny_model()
    layers = mark_fsdp_units(model)
    wrapped = [m for m in model.modules() if getattr(m, "_fsdp_wrap", False)]
    assert wrapped == list(model.bert.encoder.layers) == layers and len(layers) == TINY_MODERNBERT["num_hidden_layers"]
    assert [m for m in model.modules() if getattr(m, "_activation_checkpointing", False)] == layers
    in_units = {id(p) for layer in layers for p in layer.parameters()}
    assert id(model.decoder.weight) == id(model.bert.embeddings.tok_embeddings.weight)  # tied ...
    assert id(model.decoder.weight) not in in_units  # ... and outside every layer unit


@pytest.mark.parametrize("impl", [CheckpointImpl.REENTRANT, CheckpointImpl.NO_REENTRANT])
def test_checkpointed_layers_give_the_same_loss_gradients_and_names(impl):
    """Composer's default is the reentrant implementation (fsdp_config.activation_checkpointing_reentrant)."""
    ids, mask = mixed_length_batch(3, 32, 128, [32, 9, 20])
    labels = torch.where((torch.arange(32) % 4 == 1) & (mask == 1), ids, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    results = []
    for checkpointed in (False, True):
        # with dropout on: the recomputed forward must replay the same random masks
        model = tiny_model(embed_dropout_prob=0.1, mlp_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
        if checkpointed:
            mark_fsdp_units(model)
            apply_activation_checkpointing(
                model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=impl),
                check_fn=lambda m: getattr(m, "_activation_checkpointing", False))
            wrappers = [m for m in model.modules() if type(m).__name__ == "CheckpointWrapper"]
            assert len(wrappers) == len(model.bert.encoder.layers)
        torch.manual_seed(1)
        loss = model(**batch, return_logits=False).loss
        loss.backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        results.append((loss.detach(), grads, set(model.state_dict())))
    (loss_a, grads_a, keys_a), (loss_b, grads_b, keys_b) = results
    assert keys_a == keys_b  # checkpoints keep the released layout
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    names_b = {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in grads_b.items()}
    assert names_b.keys() == grads_a.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(names_b[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_prepare_model_marks_only_with_fsdp_and_compiles_each_layer_on_cuda_only(monkeypatch):
    model = tiny_model(compile_model=True)
    compiled = []
    for layer in model.bert.encoder.layers:
        monkeypatch.setattr(layer, "compile", lambda layer=layer, **kw: compiled.append((layer, kw)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="compile_model is ignored on CPU"):
        prepare_model(model, load_run_config(None, base={"model": {"name": "flex_bert"}}))
    assert compiled == [] and not any(hasattr(m, "_fsdp_wrap") for m in model.modules())

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fsdp_run = load_run_config(None, base={"model": {"name": "flex_bert"}, "fsdp_config": {"sharding_strategy": "FULL_SHARD"}})
    prepare_model(model, fsdp_run)
    layers = list(model.bert.encoder.layers)
    assert compiled == [(layer, {"dynamic": True, "backend": "inductor"}) for layer in layers]  # loss, packing: eager
    assert [m for m in model.modules() if getattr(m, "_fsdp_wrap", False)] == layers


def _prepared_batch(model, ids, mask):
    """What the encoder hands its layers: packed hidden states, with kernels and per-batch tables prepared."""
    from flexbert.model.attention import FlexBertAttention
    from flexbert.model.modeling import pack_inputs

    packed, flat = pack_inputs(ids, mask, None, None, None)
    hidden = model.bert.embeddings(flat, packed.position_ids)
    for module in model.modules():
        if isinstance(module, FlexBertAttention):
            module.prepare(packed, hidden.device, hidden.dtype)
    return hidden, packed


@pytest.mark.slow
def test_compiled_layers_trace_without_graph_breaks_and_match_eager():
    """Under torch.compile the layers use plain ops (the eager-mode in-place RoPE, fused GLU and norm + projection
    break dynamo's graph), and read the kernel choice, RoPE tables and packing index the encoder prepared eagerly.
    Checked with backend aot_eager (dynamo + AOTAutograd, no inductor codegen, so it runs on this CPU): no graph
    break at all; loss and gradients equal eager mode."""
    import torch._dynamo

    ids, mask = mixed_length_batch(3, 40, 128, [40, 17, 29])
    labels = torch.where((torch.arange(40) % 3 == 0) & (mask == 1), ids, -100)
    model = tiny_model()
    hidden, packed = _prepared_batch(model, ids, mask)
    for layer in list(model.bert.encoder.layers)[:2]:  # a global and a local layer
        explained = torch._dynamo.explain(layer)(hidden, packed)
        assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]

    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model = tiny_model().train()
        if compiled:
            for layer in model.bert.encoder.layers:
                layer.compile(dynamic=True, backend="aot_eager")
        out = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False)
        out.loss.backward()
        results.append((out.loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (loss, grads), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@torch.library.custom_op("flexbert_test::varlen_attention", mutates_args=())
def _varlen_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, left: int,
               right: int) -> torch.Tensor:
    from tests.varlen_reference import reference_varlen_attention

    return reference_varlen_attention(q, k, v, cu_seqlens, cu_seqlens, q.shape[0], q.shape[0], window_size=(left, right))


@_varlen_op.register_fake
def _(q, k, v, cu_seqlens, left, right):
    return torch.empty_like(q)


def _flash_attn_standin(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                        softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                        deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn 2's published signature over an opaque custom op, as flash-attn >= 2.7 registers its kernels."""
    return _varlen_op(q, k, v, cu_seqlens_q, window_size[0], window_size[1])


def test_kernel_choice_is_made_outside_the_compiled_layers(monkeypatch):
    """On CUDA the automatic choice imports flash-attn (importlib behind caches): traced inside a compiled layer it
    breaks the graph. Here a stand-in `flash_attn` module imports through the real machinery and the CPU is
    treated as CUDA; the compiled layers must hold no graph break and use the flash-attn kernel."""
    import sys
    import types

    import torch._dynamo

    from flexbert.model import attention_kernels as ak
    from flexbert.model import flash_attn_adapter as fa

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = _flash_attn_standin
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    monkeypatch.setattr(ak, "_has_gpu_kernels", lambda device: True)
    fa._import_varlen_func.cache_clear()
    ak._select.cache_clear()
    try:
        torch._dynamo.reset()
        ids, mask = mixed_length_batch(3, 40, 128, [40, 17, 29])
        model = tiny_model().to(torch.bfloat16)
        hidden, packed = _prepared_batch(model, ids, mask)
        chosen = {type(m._prepared[3]).__name__ for m in model.modules() if hasattr(m, "_prepared")}
        assert chosen == {"FlashAttnAdapter"}
        for layer in list(model.bert.encoder.layers)[:2]:
            explained = torch._dynamo.explain(layer)(hidden, packed)
            assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    finally:
        fa._import_varlen_func.cache_clear()
        ak._select.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize("impl", [CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT])
def test_compiled_and_checkpointed_layers_train_over_varying_lengths_and_evaluate(impl, monkeypatch):
    """The trainer's order -- compile each layer, then Composer wraps it in activation checkpointing: the
    recomputation in the backward pass must trace the graph of the first pass (non-reentrant checkpointing
    compares them), 8 steps of different packed lengths plus an evaluation must stay within the compiler's graph
    limit (past it torch falls back to eager mode; here that is made an error), and the result equals eager."""
    import torch._dynamo

    # Past the graph limit torch falls back to eager mode; here that is an error. The patch restores the limit
    # that compile_layers raises.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=torch._dynamo.config.recompile_limit):
        _train_compiled_and_checkpointed(impl, monkeypatch)


def _train_compiled_and_checkpointed(impl, monkeypatch):
    import random

    import torch._dynamo

    from flexbert.train.parallelism import compile_layers

    rng = random.Random(0)
    batches = []
    for step in range(8):
        ids, mask = mixed_length_batch(3, 40, 128, [rng.randint(3, 40) for _ in range(3)], seed=step)
        batches.append((ids, mask, torch.where((torch.arange(40) % 4 == 1) & (mask == 1), ids, -100)))
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model = tiny_model().train()
        if compiled:
            with monkeypatch.context() as cuda:
                cuda.setattr(torch.cuda, "is_available", lambda: True)  # compile_layers compiles on CUDA only
                assert compile_layers(model, backend="aot_eager")
        mark_fsdp_units(model)
        apply_activation_checkpointing(
            model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=impl),
            check_fn=lambda m: getattr(m, "_activation_checkpointing", False))
        losses = []
        for ids, mask, labels in batches:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False).loss
            loss.backward()
            losses.append(loss.detach())
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        results.append((torch.stack(losses), logits, {k: p.grad for k, p in model.named_parameters()}))
    (losses, logits, grads), (losses_c, logits_c, grads_c) = results
    torch.testing.assert_close(losses_c, losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_c, logits, rtol=1e-4, atol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-4, atol=1e-5, msg=name)
