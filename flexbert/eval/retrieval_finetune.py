"""Fine-tuning an embedder on (query, positive[, negative]) pairs with in-batch negatives, then scoring it.

The loss is sentence-transformers' MultipleNegativesRankingLoss: for each query of a batch, the batch's positives
(and hard negatives, when the pairs have them) are the candidates, the similarity (cosine or dot) divided by the
`temperature` is a logit, and the query's own positive is the class (cross-entropy). temperature 0.05 is its
default scale of 20. In-batch negatives are those of one process's batch: a batch is never split into
microbatches (that would shrink the candidate set). Optimizer, schedule, precision, algorithms and loggers are pretraining's,
through Composer's Trainer, as for classification.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from composer.models import ComposerModel


def pool_padded(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, length, H) token states -> (batch, H): mean over the mask, or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def contrastive_loss(queries: torch.Tensor, candidates: torch.Tensor, temperature: float, similarity: str) -> torch.Tensor:
    """Cross-entropy of each query against all candidates; candidate i is query i's positive."""
    if similarity == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=-1)
        candidates = torch.nn.functional.normalize(candidates, dim=-1)
    logits = queries.float() @ candidates.float().T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(queries), device=logits.device))


class BiEncoder(ComposerModel):
    """One FlexBertModel embeds queries and documents (shared weights)."""

    def __init__(self, encoder, pooling: str, similarity: str, temperature: float):
        super().__init__()
        self.encoder, self.pooling, self.similarity, self.temperature = encoder, pooling, similarity, temperature

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool_padded(self.encoder(ids, attention_mask=mask), mask, self.pooling)

    def forward(self, batch: dict[str, Any]):
        queries = self.embed(batch["query_ids"], batch["query_mask"])
        candidates = [self.embed(batch["positive_ids"], batch["positive_mask"])]
        if "negative_ids" in batch:
            candidates.append(self.embed(batch["negative_ids"], batch["negative_mask"]))
        return queries, torch.cat(candidates)

    def loss(self, outputs, batch):
        return contrastive_loss(*outputs, self.temperature, self.similarity)

    def eval_forward(self, batch, outputs=None):
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict:
        return {}

    def update_metric(self, batch, outputs, metric) -> None:
        return None


def _collate(tokenizer, max_seq_len: int, with_negatives: bool):
    def collate(pairs):
        batch = {}
        fields = ("query", "positive", "negative") if with_negatives else ("query", "positive")
        for name in fields:
            encoded = tokenizer([getattr(p, name) for p in pairs], truncation=True, max_length=max_seq_len,
                                padding=True, return_tensors="pt")
            batch[f"{name}_ids"], batch[f"{name}_mask"] = encoded["input_ids"], encoded["attention_mask"]
        return batch

    return collate


def read_pairs(task):
    """The task's training pairs; hard negatives are used when every pair has one, and a file that mixes fails."""
    from flexbert.errors import DataError
    from flexbert.eval.beir_data import read_training_pairs

    pairs = read_training_pairs(Path(task.data["train"]))
    with_negatives = sum(p.negative is not None for p in pairs)
    if with_negatives not in (0, len(pairs)):
        raise DataError(f"{task.data['train']}: {with_negatives} of {len(pairs)} pairs have a `negative`; give every "
                        f"pair a hard negative or none")
    return pairs, with_negatives > 0


def check_exportable(spec, encoder) -> None:
    """A kept embedder is a transformers ModernBERT folder: checked before training, so a model_config it cannot
    express fails at once, not after the fine-tuning it would throw away."""
    from flexbert.eval.spec import EvalConfigError
    from flexbert.hf_interop import NotExpressibleError, modernbert_config_dict

    try:
        modernbert_config_dict(encoder.config)
    except NotExpressibleError as err:
        raise EvalConfigError(f"`save_model: {spec.save_model}` keeps sentence-transformers folders, but {err}; change "
                              "it in the evaluation file's model.model_config, or set save_model: none") from None


def finetune_retrieval(spec, task, seed: int, run_dir: Path, save_to: Optional[Path] = None,
                       record: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Train the starting point's encoder on the task's pairs, then score it on the BEIR split. `save_to`: also
    keep the fine-tuned embedder there as a sentence-transformers folder (embedder_folder.py), with `record` (the
    starting point, the fingerprint) and the metrics in its flexbert_eval.json."""
    from composer import Trainer
    from composer.utils import dist, reproducibility

    from flexbert.eval.finetune import ProgressBar, _loader, logged_config
    from flexbert.eval.retrieval_task import build_encoder, metric_depths, read_retrieval_task
    from flexbert.eval.retrieval_zero_shot import score_zero_shot
    from flexbert.eval.starting_point import load_tokenizer
    from flexbert.optim.builders import build_optimizer, build_scheduler
    from flexbert.train.builders import build_algorithms
    from flexbert.train.callbacks import build_callbacks
    from flexbert.train.loggers import build_loggers
    from flexbert.train.validate import effective_precision

    start = time.time()
    settings, trainer_kwargs = task.retrieval, task.trainer
    pairs, with_negatives = read_pairs(task)
    split = read_retrieval_task(task)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(spec, run_dir / "tokenizer")
    reproducibility.seed_all(seed)
    model = BiEncoder(build_encoder(spec, task, tokenizer), settings["pooling"], settings["similarity"],
                      settings["temperature"])
    if save_to is not None:
        check_exportable(spec, model.encoder)
    world = dist.get_world_size()
    global_batch = int(trainer_kwargs["global_train_batch_size"])
    if global_batch % world:
        raise ValueError(f"task {task.name}: global_train_batch_size {global_batch} does not divide by {world} processes")
    device_batch = global_batch // world
    collate = _collate(tokenizer, settings["max_seq_len"], with_negatives)
    loader = _loader(pairs, device_batch, True, seed, collate, drop_last=len(pairs) > global_batch)
    precision = effective_precision(trainer_kwargs.get("precision") or spec.precision)
    trainer = Trainer(
        run_name=f"{spec.base_run_name}-{task.name}-seed{seed}", seed=seed, model=model, train_dataloader=loader,
        max_duration=trainer_kwargs["max_duration"],
        optimizers=build_optimizer({**spec.optimizer, **(trainer_kwargs.get("optimizer") or {})}, model),
        schedulers=build_scheduler({**spec.scheduler, **(trainer_kwargs.get("scheduler") or {})}),
        step_schedulers_every_batch=True, device_train_microbatch_size=device_batch,
        precision=precision,
        algorithms=build_algorithms(spec.algorithms),
        callbacks=[*build_callbacks(spec.callbacks), ProgressBar(f"{task.name} seed {seed}")],
        loggers=build_loggers(spec.loggers, run_dir / "metrics.jsonl", logged_config(spec, task, seed)),
        progress_bar=False, log_to_console=False,
        console_log_interval=trainer_kwargs["console_log_interval"],
    )
    trainer.fit()
    steps = int(trainer.state.timestamp.batch)
    trainer.close()
    scores = score_zero_shot(model.encoder, tokenizer, split, settings["pooling"], settings["max_seq_len"],
                             settings["batch_size"], settings["similarity"], **metric_depths(task.metrics),
                             precision=precision)
    metrics = {m: scores.metrics[m] for m in task.metrics}
    if save_to is not None and dist.get_global_rank() == 0:
        from flexbert.eval.embedder_folder import save_embedder_folder

        save_embedder_folder(model.encoder, tokenizer, save_to, settings,
                             {**(record or {}), "task": task.name, "seed": seed, "metrics": metrics})
    return {"task": task.name, "seed": seed, "type": "retrieval", "metrics": metrics,
            "num_train": len(pairs), "num_documents": len(split.corpus), "num_queries": scores.queries_scored,
            "queries_without_qrels": scores.queries_without_qrels, "steps": steps, "wall_s": round(time.time() - start, 1)}


__all__ = ["pool_padded", "contrastive_loss", "BiEncoder", "read_pairs", "check_exportable", "finetune_retrieval"]
