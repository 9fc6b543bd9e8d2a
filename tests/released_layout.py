"""A checkpoint in exactly the layout of the released ModernBERT checkpoints, from a tiny model.

Released files (`answerdotai/ModernBERT-*-training-checkpoints`) were written by Composer 0.24,
torch 2.4, numpy 1.26 and an optimi 0.2 StableAdamW. What this reproduces, independently of Composer 0.32's writer:
- `state.model`: `model.`-prefixed FlexBERT names, the tied `model.decoder.weight` included;
- `state.optimizers.StableAdamW`: torch 2.4's `get_optimizer_state_dict` form, keyed by parameter name
  (`model.bert...`), per-tensor `exp_avg`, `exp_avg_sq`, `eps_sq`, param groups listing names under `params`
  (no `param_names`; no `triton` / `gradient_release`, which optimi added later);
- `state.schedulers.LambdaLR` (torch 2.4 fields incl. `verbose`), `timestamp.Timestamp` with
  `datetime.timedelta` wall-clock fields, callbacks, `rank_zero_seed`, `run_name`, `dataset_state`,
  `metadata` with a `TorchVersion`, and `integrations.huggingface` holding the reference's BertConfig-style
  model config (`model_type: "bert"`, BERT keys) and the tokenizer files;
- `rng`: one entry per rank (8), with numpy's MT19937 state (a numpy uint32 array) -- pickled under numpy 1.x
  names: `numpy.core.multiarray._reconstruct` (numpy 2 writes `numpy._core...`). The pickler below writes the
  numpy 1.x module path explicitly (protocol 2 `GLOBAL` opcode), as numpy 1.26 did.
"""

from __future__ import annotations

import datetime
import json
import pickle
import random
import tempfile
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from numpy._core import multiarray

NUMPY1_GLOBALS = {
    multiarray._reconstruct: b"numpy.core.multiarray\n_reconstruct\n",
    multiarray.scalar: b"numpy.core.multiarray\nscalar\n",
}


class _Numpy1Pickler(pickle._Pickler):
    """Pure-Python pickler that names numpy's array rebuilders by their numpy 1.x module path."""

    def save_global(self, obj, name=None):
        path = NUMPY1_GLOBALS.get(obj) if callable(obj) else None
        if path is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + path)
        self.memoize(obj)


NUMPY1_PICKLE = types.SimpleNamespace(Pickler=_Numpy1Pickler, __name__="numpy1_pickle")


def tokenizer_files(tokenizer) -> dict:
    """`integrations.huggingface.tokenizer` as Composer writes it: file name -> {file_extension, content}."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for file in sorted(Path(tmp).iterdir()):
            if file.suffix == ".json":
                content = json.loads(file.read_text())
            elif file.suffix == ".txt":
                content = file.read_text().split("\n")
            else:
                continue
            out[file.name] = {"file_extension": file.suffix, "content": content}
    return out


def reference_config_content(config) -> dict:
    """The model config as the reference FlexBERT stored it: a BertConfig subclass dict with FlexBERT keys."""
    content = {
        # BertConfig keys the reference inherited (not FlexBERT schema keys)
        "architectures": ["FlexBertForMaskedLM"], "model_type": "bert", "type_vocab_size": 2,
        "hidden_dropout_prob": 0.1, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
        "classifier_dropout": None, "use_cache": True, "initializer_range": 0.02, "gradient_checkpointing": False,
        "torch_dtype": "float32", "transformers_version": "4.44.1", "allow_embedding_resizing": True,
        "activation_function": "gelu",
    }
    content.update(config.model_config_dict())
    # ModernBERT's run files trained with flash-attn's fused loss; on CPU the same loss is computed in torch
    content.update({"loss_function": "fa_cross_entropy", "loss_kwargs": {"reduction": "mean"}})
    content["pad_token_id"] = config.pad_token_id
    return content


def _optimizer_state(model, optimizer) -> dict:
    names = {p: "model." + n for n, p in model.named_parameters()}
    state = {}
    for param, values in optimizer.state.items():
        state[names[param]] = {k: values[k].clone() for k in ("exp_avg", "exp_avg_sq", "eps_sq") if k in values}
    groups = []
    for group in optimizer.param_groups:
        saved = {k: v for k, v in group.items() if k not in ("params", "param_names", "triton", "gradient_release")}
        saved["params"] = [names[p] for p in group["params"]]
        groups.append(saved)
    return {"StableAdamW": {"state": state, "param_groups": groups}}


def _timestamp(batch: int, samples_per_batch: int, tokens_per_batch: int) -> dict:
    wct = datetime.timedelta(seconds=61.5 * batch)
    return {"Timestamp": {
        "iteration": 0, "epoch": 0, "batch": batch, "sample": batch * samples_per_batch, "token": batch * tokens_per_batch,
        "epoch_in_iteration": 0, "token_in_iteration": batch * tokens_per_batch, "batch_in_epoch": batch,
        "sample_in_epoch": batch * samples_per_batch, "token_in_epoch": batch * tokens_per_batch,
        "total_wct": wct, "iteration_wct": wct, "epoch_wct": wct, "batch_wct": datetime.timedelta(seconds=0.61),
    }}


def released_checkpoint(model, *, optimizer=None, batch: int = 4000, tokenizer=None, lr: float = 8e-4,
                        world_size: int = 8, run_name: str = "modernbert-base-pretrain") -> dict:
    """The dict a released checkpoint unpickles to, for `model` (a FlexBertForMaskedLM) and its optimizer."""
    groups = len(optimizer.param_groups) if optimizer is not None else 2
    rng_state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state(),
                 "cuda": torch.zeros(16, dtype=torch.uint8)}
    state = {
        "model": OrderedDict(("model." + k, v.detach().clone()) for k, v in model.state_dict().items()),
        "schedulers": {"LambdaLR": {"base_lrs": [lr] * groups, "last_epoch": batch, "verbose": False,
                                    "_step_count": batch + 1, "_get_lr_called_within_step": False,
                                    "_last_lr": [lr] * groups, "lr_lambdas": [None] * groups}},
        "algorithms": [],
        "callbacks": {"SpeedMonitor": {"total_eval_wct": 12.25}, "LRMonitor": {}, "OptimizerMonitor": {},
                      "RuntimeEstimator": {}, "CheckpointSaver": {"all_saved_checkpoints_to_timestamp": []}},
        "timestamp": _timestamp(batch, samples_per_batch=4608, tokens_per_batch=4608 * 1024),
        "rank_zero_seed": 17,
        "run_name": run_name,
        "dataset_state": {"train": None, "eval": {}},
        "integrations": {"huggingface": {
            "model": {"config": {"file_extension": ".json", "content": reference_config_content(model.config),
                                 "class": "src.bert_layers.model.FlexBertForMaskedLM"}},
            "tokenizer": tokenizer_files(tokenizer) if tokenizer is not None else {},
        }},
        "metadata": {
            "composer_env_info": {"composer_version": "0.24.1", "composer_commit_hash": None, "cpu_model": "AMD EPYC 9654",
                                  "cpu_count": 192, "num_nodes": 1, "gpu_model": "NVIDIA H100 80GB HBM3",
                                  "num_gpus_per_node": 8, "num_gpus": 8, "cuda_device_count": 8},
            "torch_version": torch.torch_version.TorchVersion("2.4.0+cu124"),
            "device": "gpu", "precision": "amp_bf16", "world_size": world_size,
            "device_train_microbatch_size": 96, "train_dataloader_batch_size": 576,
        },
    }
    if optimizer is not None:
        state["optimizers"] = _optimizer_state(model, optimizer)
    return {"state": state, "rng": [rng_state] * world_size}


def write_released_checkpoint(path, model, **kwargs) -> Path:
    """Write `released_checkpoint(model, ...)` to `path` with numpy 1.x pickle names; returns the path."""
    torch.save(released_checkpoint(model, **kwargs), path, pickle_module=NUMPY1_PICKLE)
    return Path(path)


def pickle_globals(path) -> set[str]:
    """`module.name` of every GLOBAL opcode in the checkpoint's pickle (protocol 2 writes GLOBAL only)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
