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
from tests.conftest import TINY_MODERNBERT, mixed_length_batch


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
    assert compiled == [(layer, {"dynamic": True}) for layer in layers]  # layers only: loss and packing stay eager
    assert [m for m in model.modules() if getattr(m, "_fsdp_wrap", False)] == layers


def test_compiled_layers_trace_without_graph_breaks_in_model_code_and_match_eager():
    """Under torch.compile the layers use plain ops (the eager-mode in-place RoPE, fused GLU and norm + projection
    break dynamo's graph). Checked with backend aot_eager (dynamo + AOTAutograd, no inductor codegen, so it runs on
    this CPU): the only graph breaks left are in the CPU attention kernels' packing index, which the GPU flash-attn
    path never builds; loss and gradients equal eager mode."""
    import torch._dynamo

    from flexbert.model.modeling import pack_inputs

    ids, mask = mixed_length_batch(3, 40, 128, [40, 17, 29])
    labels = torch.where((torch.arange(40) % 3 == 0) & (mask == 1), ids, -100)
    model = tiny_model()
    packed, flat = pack_inputs(ids, mask, None, None, None)
    hidden = model.bert.embeddings(flat, packed.position_ids)
    for layer in list(model.bert.encoder.layers)[:2]:  # a global and a local layer
        explained = torch._dynamo.explain(layer)(hidden, packed)
        places = {reason.user_stack[-1].filename.split("/")[-1] for reason in explained.break_reasons}
        assert places <= {"attention_kernels.py"}, [r.reason for r in explained.break_reasons]

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
