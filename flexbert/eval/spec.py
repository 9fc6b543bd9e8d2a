"""The evaluation file: which pretrained model, which tasks, which seeds, how to fine-tune.

Follows the reference framework's evaluation schema where it applies here:

    base_run_name: my-eval                 # names the output folder and each run (<base>-<task>-seed<seed>)
    default_seed: 19                       # seeds of a task that gives none
    precision: fp32                        # amp_bf16 on GPU
    parallel: false                        # true: each task in its own process (one GPU each)
    tokenizer_name: tok/                   # default: the checkpoint's embedded tokenizer, or the HF folder's
    max_seq_len: 128
    starting_checkpoint_load_path: ckpt.pt # a Composer checkpoint (ours or released layout), or a HF ModernBERT folder
    local_pretrain_checkpoint_folder: runs/   # optional: folder the starting path is relative to
    save_finetune_checkpoint_folder: evals/my-eval   # output folder (default eval_runs/<base_run_name>)
    save_model: none                       # best_seed: OUT/models/<task>, the task's best seed as a Hugging Face
                                           # folder (transformers' text-classification pipeline loads it; a
                                           # fine-tuned retrieval task's: sentence_transformers.SentenceTransformer);
                                           # all: OUT/runs/<task>/seed<N>/model for every seed
    model:
      name: flex_bert
      use_pretrained: true                 # false: the same architecture from random initialization
      model_config: {head_class_act: gelu} # overrides of the checkpoint's model_config
    optimizer: {...}                       # as in run files; default decoupled_adamw lr 5e-5
    scheduler: {...}                       # default linear_decay_with_warmup, 6% warmup
    trainer_kwargs: {...}                  # defaults of every task's trainer_kwargs
    callbacks: {...}; loggers: {...}; algorithms: {...}
    tasks:
      NAME:
        seeds: [19, 8364]
        trainer_kwargs: {max_duration: 2ep, global_train_batch_size: 32, ...}
        model_config: {problem_type: multi_label_classification}
        data: {train: a.jsonl, validation: b.jsonl, text_field: text, label_field: label, ...}   # or a GLUE name
      NAME:                                # zero-shot retrieval: the starting point's encoder, no training
        type: retrieval                    # default: classification
        data: {folder: DIR, split: test}   # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
        pooling: mean                      # or cls: one vector per text (the embedder's pooling)
        similarity: cosine                 # or dot
        max_seq_len: 512                   # tokens read of each query and document (default: the file's max_seq_len)
        batch_size: 32                     # texts encoded at once
        metrics: [ndcg@10, mrr@10, recall@100]   # ndcg@K, mrr@K, recall@K for any K
        seeds: [19]                        # zero-shot from a pretrained checkpoint: only the first seed runs
                                           # (nothing is random in encoding and scoring)
        # fine-tuned instead of zero-shot: data.train names (query, positive[, negative]) JSONL pairs; the loss is
        # in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss), logits = similarity / temperature
        temperature: 0.05                  # only with data.train
        trainer_kwargs: {max_duration: 1ep, global_train_batch_size: 32}   # only with data.train

Unknown keys fail naming the closest valid one; the reference's keys that have no meaning here
(`model.pretrained_checkpoint`, ...) fail saying why. `model_config.sparse_prediction` is the old name of
`masked_prediction`, read as such (as in run files): it concerns the MLM head, so fine-tuning, which uses the
classification head, runs the same with either value (the reference's classifier ignores it too).
`trainer_kwargs.eval_subset_num_batches` scores each evaluation on that many batches, as in the reference.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from flexbert.eval.metrics import DEFAULT_METRICS, MULTI, REGRESSION, SINGLE
from flexbert import schema
from flexbert.config import check_model_config, read_old_names
from flexbert.registry import closest
from flexbert.yaml_file import load_config_file


TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class EvalConfigError(schema.ConfigError):
    """An evaluation-file problem; the message names the key and the fix."""


TOP_LEVEL = {
    "base_run_name": None, "default_seed": 19, "precision": "fp32", "parallel": False, "tokenizer_name": None,
    "max_seq_len": 128, "starting_checkpoint_load_path": None, "local_pretrain_checkpoint_folder": None,
    "save_finetune_checkpoint_prefix": None, "save_finetune_checkpoint_folder": None, "model": {},
    "optimizer": {"name": "decoupled_adamw", "lr": 5.0e-5, "betas": [0.9, 0.98], "eps": 1.0e-6, "weight_decay": 1.0e-5},
    "scheduler": {"name": "linear_decay_with_warmup", "t_warmup": "0.06dur", "alpha_f": 0.0},
    "trainer_kwargs": {}, "callbacks": {}, "loggers": {}, "algorithms": {}, "tasks": None,
    "save_model": "none",
}
# Which fine-tuned models are kept as Hugging Face folders (opt-in: the reference saves none).
SAVE_MODEL = ("none", "best_seed", "all")
MODEL_KEYS = ("name", "use_pretrained", "pretrained_model_name", "tokenizer_name", "model_config")
TASK_KEYS = ("type", "seeds", "trainer_kwargs", "model_config", "data", "metrics")
TASK_TYPES = ("classification", "retrieval")
# A retrieval task is zero-shot (the starting point's encoder as it is) unless `data.train` names training pairs;
# `trainer_kwargs` and `temperature` belong to fine-tuning and are refused without them.
RETRIEVAL_TASK_KEYS = ("type", "seeds", "model_config", "data", "pooling", "similarity", "max_seq_len", "batch_size",
                       "metrics", "trainer_kwargs", "temperature")
RETRIEVAL_DATA_KEYS = ("folder", "split", "train")
RETRIEVAL_TRAINING_KEYS = ("trainer_kwargs", "temperature")
RETRIEVAL_DEFAULTS = {"split": "test", "pooling": "mean", "similarity": "cosine", "batch_size": 32,
                      "temperature": 0.05, "metrics": ["ndcg@10", "mrr@10", "recall@100"]}
RETRIEVAL_METRIC = re.compile(r"(ndcg|mrr|recall)@([1-9][0-9]*)")
TRAINER_DEFAULTS = {
    "max_duration": "3ep", "global_train_batch_size": 32, "device_train_microbatch_size": None,
    "device_eval_batch_size": 64, "eval_interval": "1ep", "max_seq_len": None, "precision": None,
    "save_num_checkpoints_to_keep": 0, "optimizer": None, "scheduler": None, "console_log_interval": "50ba",
}
# Composer Trainer settings the reference passes through from trainer_kwargs; set only when the file sets them
# (a default here would change the fingerprint of every finished run).
OPTIONAL_TRAINER_KEYS = ("eval_subset_num_batches",)
DATA_KEYS = ("train", "validation", "text_field", "text_pair_field", "label_field", "label_separator", "labels",
             "problem_type", "dataset")
PROBLEM_TYPES = (SINGLE, REGRESSION, MULTI)
WHY_NOT = {
    "model.pretrained_checkpoint": "use starting_checkpoint_load_path",
}
# Run files -- pretraining ones, and the reference's single-task fine-tuning ones (its sequence_classification.py,
# with `model.num_labels`) -- have these instead of `tasks`.
RUN_FILE_KEYS = ("run_name", "train_loader", "eval_loader")


@dataclass
class TaskSpec:
    name: str
    seeds: list[int]
    trainer: dict[str, Any]
    model_config: dict[str, Any]
    data: dict[str, Any]
    metrics: Optional[list[str]]
    type: str = "classification"
    retrieval: Optional[dict[str, Any]] = None  # pooling, similarity, max_seq_len, batch_size of a retrieval task


@dataclass
class EvalSpec:
    source: str
    base_run_name: str
    precision: str
    parallel: bool
    tokenizer_name: Optional[str]
    max_seq_len: int
    starting_point: Optional[str]
    use_pretrained: bool
    model_config: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    callbacks: dict[str, Any]
    loggers: dict[str, Any]
    algorithms: dict[str, Any]
    out_dir: Path
    save_model: str = "none"
    tasks: list[TaskSpec] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    pretrained_model_name: Optional[str] = None  # the preset under model_config (None: bert-base-uncased)
    notes: list[str] = field(default_factory=list)  # said once when the evaluation runs

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise EvalConfigError(f"{self.source}: no task '{name}'{closest(name, [t.name for t in self.tasks])}")


def _check_keys(section: Mapping[str, Any], valid: Sequence[str], prefix: str) -> None:
    """The project's one unknown-key check, after the keys of reference files that are refused with a reason."""
    if not isinstance(section, Mapping):
        raise EvalConfigError(f"`{prefix.rstrip('.')}` must be a mapping, got {section!r}")
    for key in section:
        if f"{prefix}{key}" in WHY_NOT and key not in valid:
            raise EvalConfigError(f"`{prefix}{key}` is not supported here: {WHY_NOT[f'{prefix}{key}']}")
    schema.check_keys(section, valid, prefix.rstrip("."), EvalConfigError)


def _check_not_a_run_file(values: Mapping[str, Any], source: str) -> None:
    model = values.get("model")
    found = [k for k in RUN_FILE_KEYS if k in values]
    found += ["model.num_labels"] if isinstance(model, Mapping) and "num_labels" in model else []
    if not found or "tasks" in values:
        return
    if "model.num_labels" not in found:
        raise EvalConfigError(f"{source}: has {', '.join(found)} and no `tasks`: this is a pretraining run file; run "
                              f"it with `python main.py {source}` (an evaluation file lists its `tasks`)")
    raise EvalConfigError(
        f"{source}: has {', '.join(found)} and no `tasks`: this is a run file of the reference's single-task "
        f"sequence_classification.py, whose data come from a loader written in that script, so it cannot run "
        f"here; write the task as an evaluation file: base_run_name, starting_checkpoint_load_path and "
        f"tasks: {{NAME: {{data: {{train: FILE, validation: FILE}}}}}}")


def load_eval_file(path: str | Path, overrides: Sequence[str] = (), out_dir: Optional[str] = None,
                   require_start: bool = True) -> EvalSpec:
    """Merge defaults <- file <- `key.sub=value` overrides, then check every key. `require_start=False`: the
    starting checkpoint does not exist yet (a sweep checks its `eval:` section before pretraining)."""
    read = load_config_file(path, overrides, kind="evaluation file", error=EvalConfigError)
    values, free = read.values, read.referenced
    _check_not_a_run_file(values, str(path))
    _check_keys({k: v for k, v in values.items() if k not in free}, list(TOP_LEVEL), "")
    cfg = {**copy.deepcopy(TOP_LEVEL), **{k: v for k, v in values.items() if k in TOP_LEVEL}}
    return _build(cfg, str(path), out_dir, require_start)


def _build(cfg: dict[str, Any], source: str, out_dir: Optional[str], require_start: bool = True) -> EvalSpec:
    if not cfg["base_run_name"]:
        raise EvalConfigError(f"{source}: `base_run_name` is required (it names the output folder and the runs)")
    model = cfg["model"] or {}
    _check_keys(model, MODEL_KEYS, "model.")
    if model.get("name", "flex_bert") != "flex_bert":
        raise EvalConfigError(f"{source}: `model.name: {model['name']}` is not supported here: this project fine-tunes "
                              f"FlexBERT encoders (model.name: flex_bert); other model classes have other architectures")
    start = cfg["starting_checkpoint_load_path"]
    if model.get("pretrained_model_name") and model.get("use_pretrained") and not start:
        start = model["pretrained_model_name"]  # the reference's way to start from a Hugging Face model
    if start and cfg["local_pretrain_checkpoint_folder"] and not Path(start).is_absolute():
        start = str(Path(cfg["local_pretrain_checkpoint_folder"]) / start)
    if require_start and start and "://" not in start and not Path(start).exists():
        raise EvalConfigError(f"`starting_checkpoint_load_path`: '{start}' does not exist")
    if require_start and not start and not (model.get("model_config") or {}):
        raise EvalConfigError(f"{source}: give `starting_checkpoint_load_path` (a pretrained model) or a full "
                              "`model.model_config` (random initialization)")
    for section in ("callbacks", "loggers", "algorithms", "optimizer", "scheduler", "trainer_kwargs"):
        if not isinstance(cfg[section] or {}, Mapping):
            raise EvalConfigError(f"`{section}` must be a mapping")
    _check_keys(cfg["trainer_kwargs"] or {}, [*TRAINER_DEFAULTS, *OPTIONAL_TRAINER_KEYS], "trainer_kwargs.")
    tasks = cfg["tasks"]
    if not tasks or not isinstance(tasks, Mapping):
        raise EvalConfigError(f"{source}: `tasks` is required: a mapping of task name -> settings")
    cfg["save_model"] = cfg["save_model"] or "none"
    if cfg["save_model"] not in SAVE_MODEL:
        raise EvalConfigError(f"`save_model: {cfg['save_model']}`{closest(str(cfg['save_model']), SAVE_MODEL)}; "
                              f"choose one of: {', '.join(SAVE_MODEL)}")
    out = Path(out_dir or cfg["save_finetune_checkpoint_folder"] or Path("eval_runs") / cfg["base_run_name"])
    spec = EvalSpec(
        source=source, base_run_name=str(cfg["base_run_name"]), precision=str(cfg["precision"]),
        parallel=bool(cfg["parallel"]), tokenizer_name=cfg["tokenizer_name"] or model.get("tokenizer_name"),
        max_seq_len=int(cfg["max_seq_len"]), starting_point=start, use_pretrained=bool(model.get("use_pretrained", True)),
        model_config=check_model_config(read_old_names(model.get("model_config") or {}, "model.model_config",
                                                       EvalConfigError), "model.model_config", EvalConfigError),
        optimizer=dict(cfg["optimizer"]),
        scheduler=dict(cfg["scheduler"]), callbacks=dict(cfg["callbacks"] or {}), loggers=dict(cfg["loggers"] or {}),
        algorithms=dict(cfg["algorithms"] or {}), out_dir=out, save_model=str(cfg["save_model"]), raw=cfg,
        pretrained_model_name=model.get("pretrained_model_name"),
    )
    for name, task in tasks.items():
        spec.tasks.append(_task(str(name), task or {}, cfg, spec))
    return spec


def _task(name: str, task: Mapping[str, Any], cfg: Mapping[str, Any], spec: EvalSpec) -> TaskSpec:
    from flexbert.eval.glue_tasks import GLUE_TASKS, UNSUPPORTED

    if not TASK_NAME.fullmatch(name):  # it names the task's folder under the output folder: `../x` would escape it
        raise EvalConfigError(f"{spec.source}: task name {name!r} is not a plain folder name; use letters, digits, "
                              f"'_', '-' and '.', starting with a letter or digit")
    prefix = f"tasks.{name}."
    if not isinstance(task, Mapping):
        raise EvalConfigError(f"`{prefix.rstrip('.')}` must be a mapping, got {task!r}")
    kind = task.get("type", "classification")
    if kind not in TASK_TYPES:
        raise EvalConfigError(f"`{prefix}type: {kind}`{closest(str(kind), TASK_TYPES)}; choose one of: "
                              f"{', '.join(TASK_TYPES)}")
    _check_keys(task, RETRIEVAL_TASK_KEYS if kind == "retrieval" else TASK_KEYS, prefix)
    seeds = task.get("seeds", [cfg["default_seed"]])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise EvalConfigError(f"`{prefix}seeds` must be a non-empty list of integers, got {seeds!r}")
    if kind == "retrieval":
        return _retrieval_task(name, task, seeds, spec)
    trainer = {**TRAINER_DEFAULTS, **(cfg["trainer_kwargs"] or {})}
    _check_keys(task.get("trainer_kwargs") or {}, [*TRAINER_DEFAULTS, *OPTIONAL_TRAINER_KEYS], f"{prefix}trainer_kwargs.")
    trainer.update(task.get("trainer_kwargs") or {})
    subset = trainer.get("eval_subset_num_batches", -1)
    if isinstance(subset, bool) or not isinstance(subset, int) or not (subset == -1 or subset > 0):
        raise EvalConfigError(f"`{prefix}trainer_kwargs.eval_subset_num_batches` must be a positive number of batches "
                              f"or -1 (the whole validation set), got {subset!r}")
    data = dict(task.get("data") or {})
    _check_keys(data, DATA_KEYS, f"{prefix}data.")
    model_config = check_model_config(read_old_names(task.get("model_config") or {}, f"{prefix}model_config",
                                                     EvalConfigError), f"{prefix}model_config", EvalConfigError)
    if name in UNSUPPORTED:
        raise EvalConfigError(f"task `{name}` is not supported: {UNSUPPORTED[name]}, not sequence classification")
    if not data.get("train") and name not in GLUE_TASKS:
        known = ", ".join(GLUE_TASKS)
        raise EvalConfigError(f"`{prefix}data` needs `train` and `validation` files: nothing is downloaded from the "
                              f"Hub here (or name the task after a GLUE/SuperGLUE task: {known}){closest(name, GLUE_TASKS)}")
    if data.get("train") and not data.get("validation"):
        raise EvalConfigError(f"`{prefix}data.validation` is required: the file the task is scored on")
    glue = GLUE_TASKS.get(name) if not data.get("train") else None
    problem = data.get("problem_type") or model_config.get("problem_type") or (glue.problem_type if glue else SINGLE)
    if problem not in PROBLEM_TYPES:
        raise EvalConfigError(f"`{prefix}data.problem_type`: '{problem}'{closest(problem, PROBLEM_TYPES)}; "
                              f"choose one of: {', '.join(PROBLEM_TYPES)}")
    data["problem_type"] = problem
    metrics = task.get("metrics") or (list(glue.metrics) if glue else DEFAULT_METRICS[problem])
    if not isinstance(metrics, list):
        raise EvalConfigError(f"`{prefix}metrics` must be a list of metric names")
    return TaskSpec(name, seeds, trainer, model_config, data, list(metrics))


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvalConfigError(f"`{key}` must be a positive integer, got {value!r}")
    return value


def _retrieval_task(name: str, task: Mapping[str, Any], seeds: list[int], spec: EvalSpec) -> TaskSpec:
    """A zero-shot retrieval task: every key checked here; the folder's files are read by the runner's check,
    before anything runs."""
    from flexbert.eval.embedder import POOLINGS
    from flexbert.eval.retrieval_zero_shot import SIMILARITIES

    prefix = f"tasks.{name}."
    data = dict(task.get("data") or {})
    _check_keys(data, RETRIEVAL_DATA_KEYS, f"{prefix}data.")
    if not data.get("folder"):
        raise EvalConfigError(f"`{prefix}data.folder` is required: a BEIR folder (corpus.jsonl, queries.jsonl, "
                              f"qrels/<split>.tsv)")
    train = data.get("train")
    data = {"folder": str(data["folder"]), "split": str(data.get("split") or RETRIEVAL_DEFAULTS["split"]),
            **({"train": str(train)} if train else {})}
    for key in RETRIEVAL_TRAINING_KEYS:
        if key in task and not train:
            raise EvalConfigError(f"`{prefix}{key}` is a fine-tuning setting: give `{prefix}data.train` (a JSONL file of "
                                  f"query / positive [/ negative] pairs) or remove it for zero-shot scoring")
    settings = {key: task.get(key, RETRIEVAL_DEFAULTS.get(key)) for key in ("pooling", "similarity", "batch_size")}
    for key, choices in (("pooling", POOLINGS), ("similarity", SIMILARITIES)):
        if settings[key] not in choices:
            raise EvalConfigError(f"`{prefix}{key}: {settings[key]}`{closest(str(settings[key]), choices)}; "
                                  f"choose one of: {', '.join(choices)}")
    settings["max_seq_len"] = _positive_int(task.get("max_seq_len", spec.max_seq_len), f"{prefix}max_seq_len")
    _positive_int(settings["batch_size"], f"{prefix}batch_size")
    trainer: dict[str, Any] = {}
    if train:
        temperature = task.get("temperature", RETRIEVAL_DEFAULTS["temperature"])
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise EvalConfigError(f"`{prefix}temperature` must be a positive number (logits = similarity / "
                                  f"temperature; 0.05 is sentence-transformers' scale 20), got {temperature!r}")
        settings["temperature"] = float(temperature)
        _check_keys(task.get("trainer_kwargs") or {}, [*TRAINER_DEFAULTS, *OPTIONAL_TRAINER_KEYS],
                    f"{prefix}trainer_kwargs.")
        trainer = {**TRAINER_DEFAULTS, **(spec.raw.get("trainer_kwargs") or {}), **(task.get("trainer_kwargs") or {})}
    metrics = task.get("metrics") or list(RETRIEVAL_DEFAULTS["metrics"])
    if not isinstance(metrics, list):
        raise EvalConfigError(f"`{prefix}metrics` must be a list of metric names such as ndcg@10, mrr@10, recall@100")
    for metric in metrics:
        if not isinstance(metric, str) or not RETRIEVAL_METRIC.fullmatch(metric):
            raise EvalConfigError(f"`{prefix}metrics`: {metric!r} is not a retrieval metric; write ndcg@K, mrr@K or "
                                  f"recall@K with K a positive integer (e.g. ndcg@10)")
    if len(set(metrics)) != len(metrics):
        raise EvalConfigError(f"`{prefix}metrics` names a metric twice: {metrics}")
    model_config = check_model_config(read_old_names(task.get("model_config") or {}, f"{prefix}model_config",
                                                     EvalConfigError), f"{prefix}model_config", EvalConfigError)
    if not train and spec.starting_point and spec.use_pretrained and len(seeds) > 1:
        # Encoding and exact search use no randomness: every seed of a pretrained encoder gives the same scores,
        # and a std over copies would claim a variance there is none of.
        spec.notes.append(f"{name}: zero-shot retrieval from a pretrained checkpoint is deterministic; only seed "
                          f"{seeds[0]} runs (seeds {', '.join(map(str, seeds[1:]))} would repeat it)")
        seeds = seeds[:1]
    if not train and spec.save_model != "none":
        spec.notes.append(f"{name}: zero-shot retrieval trains nothing, so `save_model: {spec.save_model}` keeps no "
                          f"folder for it (the starting point is the model)")
    return TaskSpec(name, seeds, trainer, model_config, data, list(metrics), type="retrieval", retrieval=settings)
