"""Training from an object store, end to end, against a real S3-protocol server on localhost (conftest's `s3`):
data_prep tokenizes the tiny corpus straight to s3://BUCKET/mds; the tiny recipe trains reading only from there (an
empty local cache folder, `streaming: true`), checkpoints, and is resumed (a new empty cache) as a kill after
checkpoint ba4 leaves it.

The reference is the same recipe through the same reader (StreamingDataset; `streaming: true` packs no rows, as in
the reference framework) on the same documents from the local shards, with no remote. Both the S3 run and its resumed
copy must equal it bit for bit (torch.equal on every tensor of the final weights, the same per-step losses): the
object store changes where the bytes come from, never which documents a step trains on.
"""

import time
from pathlib import Path

import pytest

from benchmarks import fault_injection as fi
from flexbert.train.trainer import main
from tests.helpers import ROOT, as_killed_after

pytestmark = pytest.mark.slow  # trains the tiny recipe

DEMO = str(ROOT / "yamls" / "demo.yaml")
STEPS, EVERY, RESUME_AT = 6, 2, 4


def _argv(tiny_corpus, folder, remote, cache) -> list[str]:
    """The tiny recipe (checkpoints every EVERY batches, autoresume) reading through StreamingDataset from `remote`
    (None: the local shards in `cache`)."""
    return [DEMO, *fi.run_overrides(tiny_corpus, folder, STEPS, EVERY, data_remote=remote or "null",
                                    data_local=str(cache), **{"train_loader.dataset.streaming": "true",
                                                              "eval_loader.dataset.streaming": "true"})]


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote_training") / "local_streaming"
    assert main(_argv(tiny_corpus, folder, None, tiny_corpus / "mds")) == 0
    return folder


def _assert_equal_runs(reference: Path, folder: Path) -> None:
    import torch

    a, b = fi.final_model_state(reference), fi.final_model_state(folder)
    assert a.keys() == b.keys()
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"weights differ from the run on local shards: {differ}"
    assert fi.metrics_problems(fi.metrics_lines(reference), fi.metrics_lines(folder)) == []
    assert [r["batch"] for r in fi.metrics_lines(folder)] == list(range(1, STEPS + 1))


@pytest.fixture
def remote(tiny_corpus_on_s3):
    return tiny_corpus_on_s3


def test_prepare_upload_train_resume_from_s3_equals_local_shards(s3, remote, tiny_corpus, reference, tmp_path):

    run, cache = tmp_path / "s3_run", tmp_path / "cache"
    assert main(_argv(tiny_corpus, run, remote, cache)) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["train", "validation"]  # downloaded, not read from elsewhere
    _assert_equal_runs(reference, run)

    resumed, fresh_cache = tmp_path / "s3_resumed", tmp_path / "cache_after_restart"
    as_killed_after(run, resumed, RESUME_AT)
    assert main(_argv(tiny_corpus, resumed, remote, fresh_cache)) == 0
    assert (fresh_cache / "train" / "index.json").is_file()
    _assert_equal_runs(reference, resumed)


def test_missing_bucket_stops_the_run_with_one_line(s3, tiny_corpus, tmp_path, capsys):
    start = time.monotonic()
    assert main(_argv(tiny_corpus, tmp_path / "run", "s3://no-such-bucket/mds", tmp_path / "cache")) == 2
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "s3://no-such-bucket/mds" in lines[0] and s3.endpoint in lines[0], err[-2000:]
    assert seconds < 60  # the whole start (model build included); streaming's own retries would take minutes


def test_shards_of_another_tokenizer_are_refused_from_their_remote_manifest(s3, remote, tiny_corpus, tmp_path,
                                                                             capsys):
    from data_prep import train_tokenizer

    other = tmp_path / "other_tokenizer"  # same vocabulary size, learned from other documents: other ids
    assert train_tokenizer.main(["--input", str(tiny_corpus / "corpus" / "validation.jsonl"), "--vocab-size", "512",
                                 "--out", str(other), "--quiet"]) == 0
    argv = _argv(tiny_corpus, tmp_path / "run", remote, tmp_path / "cache")
    assert main([*argv, f"tokenizer_name={other}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert f"the shards in '{remote}' were made with tokenizer" in lines[0] and str(other) in lines[0]
