"""One zero-shot retrieval (task, seed): the starting point's encoder embeds a BEIR folder's split and is scored.

The encoder is the one a classification run starts from (starting_point.py: the checkpoint's or Hugging Face
folder's `bert.*` weights, or, with `model.use_pretrained: false`, the same architecture initialized under the
seed); nothing is trained. Queries and documents are embedded by the packed embedder, every (query, document) pair
is scored (exact search) and nDCG@k / MRR@k / Recall@k are averaged over the split's judged queries. Encoding runs
in fp32 (on the GPU when there is one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch


def read_retrieval_task(task):
    """The task's split of its BEIR folder (a broken file fails with file:line: field)."""
    from flexbert.eval.beir_data import read_beir_folder

    return read_beir_folder(Path(task.data["folder"]), task.data["split"])


def metric_depths(metrics: list[str]) -> dict[str, tuple[int, ...]]:
    """{"ndcg_at": (10,), "mrr_at": (...), "recall_at": (...)} of metric names such as `ndcg@10`."""
    depths: dict[str, list[int]] = {"ndcg": [], "mrr": [], "recall": []}
    for name in metrics:
        kind, k = name.split("@")
        depths[kind].append(int(k))
    return {f"{kind}_at": tuple(ks) for kind, ks in depths.items()}


def build_encoder(spec, task, tokenizer):
    """The starting point's encoder (a FlexBertModel), or its architecture freshly initialized."""
    from flexbert.config import FlexBertConfig
    from flexbert.eval.starting_point import load_into, pretrained_weights
    from flexbert.model.modeling import FlexBertModel
    from flexbert.pretrained_configs import resolve_model_config

    state, start_config = pretrained_weights(spec, int(tokenizer.pad_token_id))
    values = resolve_model_config({**spec.model_config, **task.model_config}, spec.pretrained_model_name,
                                  start_config or None)
    values["pad_token_id"] = int(tokenizer.pad_token_id)
    model = FlexBertModel(FlexBertConfig(**values))
    if state is not None and spec.use_pretrained:
        load_into(model, state, spec.starting_point)  # FlexBertModel's weights are the `bert.*` tensors
    return model


def score_retrieval(spec, task, seed: int, run_dir: Path) -> dict[str, Any]:
    """Embed and score one (task, seed); returns the result record (metrics and the split's sizes)."""
    from composer.utils import reproducibility

    from flexbert.eval.retrieval_zero_shot import score_zero_shot
    from flexbert.eval.starting_point import load_tokenizer
    from flexbert.train.validate import effective_precision

    start = time.time()
    split = read_retrieval_task(task)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(spec, run_dir / "tokenizer")
    reproducibility.seed_all(seed)  # decides a random initialization; a pretrained encoder uses no randomness
    model = build_encoder(spec, task, tokenizer).to("cuda" if torch.cuda.is_available() else "cpu")
    settings = task.retrieval
    scores = score_zero_shot(model, tokenizer, split, settings["pooling"], settings["max_seq_len"],
                             settings["batch_size"], settings["similarity"], **metric_depths(task.metrics),
                             precision=effective_precision(spec.precision))
    return {"task": task.name, "seed": seed, "type": "retrieval", "metrics": {m: scores.metrics[m] for m in task.metrics},
            "num_documents": len(split.corpus), "num_queries": scores.queries_scored,
            "queries_without_qrels": scores.queries_without_qrels, "steps": 0, "wall_s": round(time.time() - start, 1)}


__all__ = ["read_retrieval_task", "metric_depths", "build_encoder", "score_retrieval"]
