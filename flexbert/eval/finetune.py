"""One fine-tuning run: a pretrained model, one task, one seed -> the task's metrics on its validation split.

Built from the project's own pieces: the optimizer and schedule builders of pretraining (flexbert.optim), its
callbacks and loggers, Composer's Trainer (precision, DDP across the processes of a launcher, microbatching).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
from composer.core import Callback

log = logging.getLogger(__name__)


def read_task(task):
    """The task's examples: local files from `data:`, else the GLUE / SuperGLUE task of that name."""
    from flexbert.eval.glue_tasks import read_glue_task
    from flexbert.eval.task_data import Fields, read_local_task

    data = task.data
    if data.get("train"):
        fields = Fields(data.get("text_field", "text"), data.get("text_pair_field"), data.get("label_field", "label"),
                        data.get("label_separator", ","))
        return read_local_task(data["train"], data["validation"], fields, data["problem_type"], data.get("labels"))
    return read_glue_task(task.name, data.get("dataset"))


class _Tokenized(torch.utils.data.Dataset):
    def __init__(self, examples, tokenizer, max_seq_len: int, problem_type: str, num_labels: int):
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        self.encodings = tokenizer(texts, pairs, truncation=True, max_length=max_seq_len)
        self.labels = []
        for example in examples:
            if problem_type == "multi_label_classification":
                hot = torch.zeros(num_labels)
                hot[example.label] = 1.0
                self.labels.append(hot)
            elif problem_type == "regression":
                self.labels.append(torch.tensor(float(example.label)))
            else:
                self.labels.append(torch.tensor(int(example.label)))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.encodings["input_ids"][i], "attention_mask": self.encodings["attention_mask"][i],
                "labels": self.labels[i]}


def _collate(tokenizer):
    pad_id = int(tokenizer.pad_token_id)

    def collate(items):
        """Right-pad to the longest sequence of the batch."""
        length = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
            mask[row, : len(item["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([item["labels"] for item in items])}

    return collate


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, collate, drop_last: bool):
    from composer.utils import dist

    sampler = dist.get_sampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                       drop_last=drop_last)


class ProgressBar(Callback):
    """One tqdm bar per (task, seed) over its training steps, with the last loss (a run takes minutes). Composer's
    own bar needs a real terminal file behind stderr; tqdm writes to any stream."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def fit_start(self, state, logger) -> None:
        from composer.core import TimeUnit
        from composer.utils import dist
        from tqdm.auto import tqdm

        if dist.get_global_rank() != 0:
            return
        total, unit = state.max_duration.value, state.max_duration.unit
        if unit == TimeUnit.EPOCH and state.dataloader_len is not None:
            total = total * int(state.dataloader_len)
        elif unit != TimeUnit.BATCH:
            total = None
        self.bar = tqdm(total=total, desc=self.label, unit="step", dynamic_ncols=True, leave=False)

    def batch_end(self, state, logger) -> None:
        if self.bar is not None:
            loss = state.loss
            self.bar.update(1)
            if isinstance(loss, torch.Tensor):
                self.bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)

    def fit_end(self, state, logger) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def build_model(spec, task, task_data, tokenizer):
    from flexbert.config import FlexBertConfig
    from flexbert.eval.starting_point import load_into, pretrained_weights
    from flexbert.model.classification import FlexBertForSequenceClassification
    from flexbert.pretrained_configs import resolve_model_config

    state, start_config = pretrained_weights(spec, int(tokenizer.pad_token_id))
    given = {**spec.model_config, **task.model_config}
    values = resolve_model_config(given, spec.pretrained_model_name, start_config or None)
    problem = task.data["problem_type"]
    values.update(pad_token_id=int(tokenizer.pad_token_id), num_labels=task_data.num_labels, problem_type=problem)
    if task_data.labels:
        values["id2label"] = {i: str(label) for i, label in enumerate(task_data.labels)}
    model = FlexBertForSequenceClassification(FlexBertConfig(**values))
    if state is not None and spec.use_pretrained:
        load_into(model, state, spec.starting_point)
    return model


def check_exportable(spec, model) -> None:
    """A model kept as a Hugging Face folder must be one transformers' ModernBERT can express: checked before
    training, so a head it has no equivalent for fails at once, not after the fine-tuning it would throw away."""
    from flexbert.eval.spec import EvalConfigError
    from flexbert.hf_interop import NotExpressibleError, modernbert_config_dict

    try:
        modernbert_config_dict(model.config, classifier=True)
    except NotExpressibleError as err:
        raise EvalConfigError(f"`save_model: {spec.save_model}` keeps Hugging Face folders, but {err}; change it in "
                              "the evaluation file's model.model_config, or set save_model: none") from None


def logged_config(spec, task, seed: int, record: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The config a (task, seed)'s W&B run records: the whole resolved evaluation file, plus which task and seed
    the run is and the starting point it fine-tunes, so runs compare by any key."""
    run = {"task": task.name, "seed": seed}
    if record and record.get("start"):
        run["start"] = record["start"]
    return {**spec.raw, **run}


def finetune(spec, task, seed: int, run_dir: Path, save_to: Optional[Path] = None,
             record: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Fine-tune and score one (task, seed); returns {"metrics": {...}, ...}. `save_to`: also keep the fine-tuned
    model there as a Hugging Face folder (with the tokenizer, and `record` + the metrics in flexbert_eval.json)."""
    from composer import Trainer
    from composer.core import Evaluator
    from composer.utils import dist, reproducibility

    from flexbert.eval.composer_model import ClassifierComposerModel
    from flexbert.eval.metrics import build_metrics
    from flexbert.eval.starting_point import load_tokenizer
    from flexbert.optim.builders import build_optimizer, build_scheduler
    from flexbert.train.builders import build_algorithms
    from flexbert.train.callbacks import build_callbacks
    from flexbert.train.loggers import build_loggers
    from flexbert.train.validate import effective_precision

    start = time.time()
    trainer_kwargs = task.trainer
    task_data = read_task(task)
    problem = task.data["problem_type"]
    metrics = build_metrics(task.metrics, problem, task_data.num_labels, f"task {task.name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(spec, run_dir / "tokenizer")
    reproducibility.seed_all(seed)
    model = build_model(spec, task, task_data, tokenizer)
    if save_to is not None:
        check_exportable(spec, model)
    composer_model = ClassifierComposerModel(model, tokenizer, metrics, problem)

    max_seq_len = int(trainer_kwargs.get("max_seq_len") or spec.max_seq_len)
    world = dist.get_world_size()
    global_batch = int(trainer_kwargs["global_train_batch_size"])
    if global_batch % world:
        raise ValueError(f"task {task.name}: global_train_batch_size {global_batch} does not divide by {world} processes")
    device_batch = global_batch // world
    collate = _collate(tokenizer)
    train = _Tokenized(task_data.train, tokenizer, max_seq_len, problem, task_data.num_labels)
    validation = _Tokenized(task_data.validation, tokenizer, max_seq_len, problem, task_data.num_labels)
    train_loader = _loader(train, device_batch, True, seed, collate, drop_last=len(train) > device_batch * world)
    eval_loader = _loader(validation, int(trainer_kwargs["device_eval_batch_size"]), False, seed, collate, drop_last=False)

    optimizer = build_optimizer({**spec.optimizer, **(trainer_kwargs.get("optimizer") or {})}, composer_model)
    scheduler = build_scheduler({**spec.scheduler, **(trainer_kwargs.get("scheduler") or {})})
    keep = int(trainer_kwargs.get("save_num_checkpoints_to_keep") or 0)
    run_name = f"{spec.base_run_name}-{task.name}-seed{seed}"
    trainer = Trainer(
        run_name=run_name,
        seed=seed,
        model=composer_model,
        train_dataloader=train_loader,
        eval_dataloader=Evaluator(label="eval", dataloader=eval_loader, metric_names=list(metrics)),
        eval_interval=trainer_kwargs["eval_interval"],
        eval_subset_num_batches=int(trainer_kwargs.get("eval_subset_num_batches", -1)),
        max_duration=trainer_kwargs["max_duration"],
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        device_train_microbatch_size=int(trainer_kwargs.get("device_train_microbatch_size") or device_batch),
        precision=effective_precision(trainer_kwargs.get("precision") or spec.precision),
        algorithms=build_algorithms(spec.algorithms),
        callbacks=[*build_callbacks(spec.callbacks), ProgressBar(f"{task.name} seed {seed}")],
        loggers=build_loggers(spec.loggers, run_dir / "metrics.jsonl", logged_config(spec, task, seed, record)),
        progress_bar=False,
        log_to_console=False,
        console_log_interval=trainer_kwargs["console_log_interval"],
        save_folder=str(run_dir / "checkpoints") if keep else None,
        save_num_checkpoints_to_keep=keep if keep else -1,
        save_overwrite=True,
    )
    trainer.fit()
    if trainer.state.eval_metrics.get("eval") is None:
        trainer.eval()
    scores = {name: float(metric.compute()) for name, metric in trainer.state.eval_metrics["eval"].items()}
    trainer.close()
    scores = {k: (v if math.isfinite(v) else float("nan")) for k, v in scores.items()}
    if save_to is not None and dist.get_global_rank() == 0:
        from flexbert.eval.saved_model import save_model_folder

        save_model_folder(model, tokenizer, save_to, {**(record or {}), "task": task.name, "seed": seed, "metrics": scores})
    return {"task": task.name, "seed": seed, "metrics": scores, "num_train": len(train), "num_validation": len(validation),
            "steps": int(trainer.state.timestamp.batch), "wall_s": round(time.time() - start, 1)}
