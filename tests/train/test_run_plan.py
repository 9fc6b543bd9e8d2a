"""A run is resolved once: `validate_run` -> `RunPlan`, and `build_trainer` constructs from the plan only.

Counted constructions, where the save-folder lock is taken, what `--dry-run` prints, and the mask rates each loader
ends up with (measured on the batches the built trainer's loaders produce).
"""

import collections
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from tests.tiny_setup import tiny_run_overrides
from flexbert.train.run_config import load_run_config
from flexbert.train.trainer import build_trainer, main
from tests.helpers import ROOT

DEMO = ROOT / "yamls" / "demo.yaml"
CLIPPING = ["algorithms.gradient_clipping.clipping_type=norm", "algorithms.gradient_clipping.clipping_threshold=1.0"]


def _count_constructions(monkeypatch, counts, name, cls):
    original = cls.__init__

    def counted(self, *args, **kwargs):
        if type(self) is cls:  # a subclass's super().__init__ is the subclass's construction, not another one
            counts[name] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counted)


def test_one_start_constructs_each_object_once(tiny_corpus, tmp_path, monkeypatch):
    import composer.algorithms

    import flexbert.tokenizer_source as tokenizer_source
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.optim.builders import build_scheduler
    from flexbert.train.callbacks import CALLBACKS
    from flexbert.train.loggers import EvalSummary, MetricsJsonl

    cfg = load_run_config(DEMO, [*tiny_run_overrides(tiny_corpus, tmp_path / "run"), *CLIPPING])
    counts = collections.Counter()
    for name, cls in [("model", FlexBertForMaskedLM), ("scheduler", type(build_scheduler(cfg.scheduler))),
                      ("speed_monitor callback", CALLBACKS.get("speed_monitor")),
                      ("packing_efficiency callback", CALLBACKS.get("packing_efficiency")),
                      ("gradient_clipping algorithm", composer.algorithms.GradientClipping),
                      ("eval_summary logger", EvalSummary), ("metrics.jsonl logger", MetricsJsonl)]:
        _count_constructions(monkeypatch, counts, name, cls)
    load_tokenizer = tokenizer_source.load_tokenizer

    def counted_load_tokenizer(*args, **kwargs):
        counts["tokenizer"] += 1
        return load_tokenizer(*args, **kwargs)

    monkeypatch.setattr(tokenizer_source, "load_tokenizer", counted_load_tokenizer)

    trainer, _ = build_trainer(cfg)
    try:
        assert dict(counts) == {name: 1 for name in ("model", "scheduler", "speed_monitor callback",
                                                     "packing_efficiency callback", "gradient_clipping algorithm",
                                                     "eval_summary logger", "metrics.jsonl logger", "tokenizer")}
        # the one model is the Trainer's, with real weights
        weights = trainer.state.model.model.bert.embeddings.tok_embeddings.weight
        assert weights.device.type != "meta" and torch.isfinite(weights).all()
    finally:
        trainer.close()


def _corrupt_train_index(tiny_corpus, tmp_path):
    """Shards that pass validation (folders, manifest, tokenizer) but whose train index cannot be read: the start
    is refused while the loaders are built, after validation."""
    data = tmp_path / "mds"
    shutil.copytree(tiny_corpus / "mds", data)
    (data / "train" / "index.json").write_text('{"version": 2, "shards": [')
    return {"data_local": str(data)}


@pytest.mark.parametrize("refusal", ["validation", "loader"])
def test_a_refused_start_leaves_no_lock_and_no_files(tiny_corpus, tmp_path, capsys, refusal):
    folder = tmp_path / "run"
    if refusal == "validation":  # refused by validate_run: a schedule key with a typo
        extra, overrides = {}, ["scheduler.t_wramup=0.1dur"]
    else:
        extra, overrides = _corrupt_train_index(tiny_corpus, tmp_path), []
    argv = [str(DEMO), *tiny_run_overrides(tiny_corpus, folder, **extra), *overrides]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (folder / ".lock").exists() and not folder.exists()


def _listing(folder):
    """Every entry under `folder` with its bytes (a link: its target), to compare before and after a start."""
    return {str(p.relative_to(folder)): (p.readlink() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


def test_a_start_refused_by_the_resume_check_leaves_no_lock_and_no_files(tiny_corpus, uninterrupted_run, tmp_path,
                                                                           capsys):
    """The save folder holds a run of another architecture (3 layers; this run has 2): autoresume refuses it after
    validation, before the folder is taken -- no lock, nothing written, the earlier run's files untouched."""
    from benchmarks import fault_injection

    folder = tmp_path / "run"
    shutil.copytree(uninterrupted_run, folder, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    before = _listing(folder)
    overrides = fault_injection.run_overrides(tiny_corpus, folder, 6, 2, **{"model.model_config.num_hidden_layers": 2})
    assert "autoresume=true" in overrides
    assert main([str(DEMO), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "another architecture" in err, err
    assert not (folder / ".lock").exists()
    assert _listing(folder) == before


def test_dry_run_prints_the_resolved_numbers(tiny_corpus, tmp_path, capsys):
    overrides = tiny_run_overrides(tiny_corpus, tmp_path / "run", device_eval_batch_size=12,
                                   device_eval_microbatch_size=5, **{"eval_loader.dataset.mlm_probability": 0.2})
    assert main([str(DEMO), *overrides, "--dry-run"]) == 0
    out = capsys.readouterr().out
    # global 16 on one rank in microbatches of 8; eval 12 per rank rounded down to whole microbatches of 5 = 10
    assert "(16 per rank in microbatches of 8, world size 1)" in out, out
    assert "eval batch   10 per rank in microbatches of 5" in out, out
    assert "masking      train 0.3, eval 0.2" in out, out
    from streaming import LocalDataset  # streaming's own reader counts the documents

    for name, split in (("train", "train"), ("eval", "validation")):
        documents = len(LocalDataset(str(tiny_corpus / "mds"), split))
        assert f"data         {name}: {tiny_corpus / 'mds'} (split {split}), {documents:,} documents" in out, out
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.builders import build_tokenizer, model_config_from

    cfg = load_run_config(DEMO, overrides)
    built = FlexBertForMaskedLM(model_config_from(cfg, build_tokenizer(cfg)))  # the plain way, counted directly
    assert f"({sum(p.numel() for p in built.parameters()):,})" in out, out
    assert not (tmp_path / "run").exists()  # a dry-run writes nothing


def _run_file_without_mask_rates(tmp_path):
    """yamls/demo.yaml with every mlm_probability key removed: the defaults decide."""
    raw = OmegaConf.to_container(OmegaConf.load(DEMO))
    raw.pop("mlm_probability")
    for key in ("train_loader", "eval_loader"):
        raw[key]["dataset"].pop("mlm_probability")
    path = tmp_path / "no_rates.yaml"
    OmegaConf.save(OmegaConf.create(raw), path)
    return path


def _masked_fraction(loader, special_ids, batches=6):
    """Selected tokens / maskable (non-special) tokens over the loader's first batches."""
    selected = maskable = 0
    for i, batch in enumerate(loader):
        if i == batches:
            break
        labels, ids = batch["labels"], batch["input_ids"]
        original = torch.where(labels != -100, labels, ids)
        is_maskable = ~torch.isin(original, special_ids)
        selected += int((labels != -100).sum())
        maskable += int(is_maskable.sum())
    return selected / maskable


@pytest.mark.parametrize("overrides,train_rate,eval_rate", [
    ([], 0.3, 0.15),  # the reference's defaults: 30% training, 15% evaluation
    (["mlm_probability=0.2"], 0.2, 0.15),  # the top-level key is the training rate only
    (["train_loader.dataset.mlm_probability=0.5", "eval_loader.dataset.mlm_probability=0.4"], 0.5, 0.4),
])
def test_mask_rates_per_loader(tiny_corpus, tmp_path, overrides, train_rate, eval_rate):
    run = _run_file_without_mask_rates(tmp_path)
    cfg = load_run_config(run, [*tiny_run_overrides(tiny_corpus, tmp_path / "run"), *overrides])
    trainer, _ = build_trainer(cfg)
    try:
        tokenizer = trainer.state.model.tokenizer
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        measured_train = _masked_fraction(trainer.state.train_dataloader, special)
        measured_eval = _masked_fraction(trainer.state.evaluators[0].dataloader.dataloader, special)
    finally:
        trainer.close()
    # ~6 batches of ~1,000 maskable tokens: the standard error of a fraction is under 0.01
    assert abs(measured_train - train_rate) < 0.04, (measured_train, train_rate)
    assert abs(measured_eval - eval_rate) < 0.04, (measured_eval, eval_rate)
