"""data_prep writing to an object store (`--out s3://bucket/prefix`, data_prep/_object_store.py) against a real
S3-protocol server on localhost (conftest's `s3`): the objects equal the files of a local run (same tool, same
arguments, a local --out), index files are uploaded after the shards they list, an existing prefix is never replaced
without --overwrite, and a failed upload leaves no readable split."""

import time
from pathlib import Path

from botocore.exceptions import EndpointConnectionError

from data_prep import tokenize_to_mds


def _argv(tiny_corpus, out, *extra, documents="") -> list[str]:
    """tokenize_to_mds on the tiny corpus (train.jsonl and validation.jsonl), or on one of its files."""
    return ["--input", str(tiny_corpus / "corpus" / documents), "--tokenizer", str(tiny_corpus / "tokenizer"),
            "--out", str(out), "--max-seq-len", "64", "--shard-size-mb", "1", "--quiet",
            *extra]


def _objects(s3, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    return {key[len(prefix) + 1:]: client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            for key in s3.keys(s3.bucket, prefix + "/")}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_upload_equals_the_local_output(s3, tiny_corpus, tmp_path):
    assert tokenize_to_mds.main(_argv(tiny_corpus, tmp_path / "local")) == 0
    assert tokenize_to_mds.main(_argv(tiny_corpus, f"s3://{s3.bucket}/data/mds")) == 0
    local = _files(tmp_path / "local")
    assert {"manifest.json", "train/index.json", "validation/index.json"} <= set(local)
    assert _objects(s3, "data/mds") == local


def test_index_files_are_uploaded_after_their_shards(s3, tiny_corpus, monkeypatch):
    from streaming.base.storage.upload import S3Uploader

    order, real_upload = [], S3Uploader.upload_file
    monkeypatch.setattr(S3Uploader, "upload_file", lambda self, name: (order.append(name), real_upload(self, name)))
    assert tokenize_to_mds.main(_argv(tiny_corpus, f"s3://{s3.bucket}/mds")) == 0
    assert order[-1] == "manifest.json"
    for split in ("train", "validation"):
        shards = [i for i, name in enumerate(order) if name.startswith(f"{split}/") and name.endswith(".mds")]
        assert shards and order.index(f"{split}/index.json") > max(shards)


def test_existing_prefix_is_refused_unless_overwrite(s3, tiny_corpus, capsys):
    uri = f"s3://{s3.bucket}/mds"
    assert tokenize_to_mds.main(_argv(tiny_corpus, uri, documents="validation.jsonl")) == 0
    s3.client().put_object(Bucket=s3.bucket, Key="mds/validation/shard.99999.mds", Body=b"stale")
    before = _objects(s3, "mds")
    capsys.readouterr()

    assert tokenize_to_mds.main(_argv(tiny_corpus, uri, "--max-seq-len", "32", documents="validation.jsonl")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and uri in err and "--overwrite" in err
    assert _objects(s3, "mds") == before  # untouched

    assert tokenize_to_mds.main(_argv(tiny_corpus, uri, "--max-seq-len", "32", "--overwrite",
                                      documents="validation.jsonl")) == 0
    after = _objects(s3, "mds")
    assert b'"max_seq_len": 32' in after["manifest.json"]
    assert "validation/shard.99999.mds" not in after  # what the new output does not have is gone


def test_bucket_root_is_refused(s3, tiny_corpus, capsys):
    assert tokenize_to_mds.main(_argv(tiny_corpus, f"s3://{s3.bucket}", "--overwrite")) == 2
    assert "give a prefix inside the bucket" in capsys.readouterr().err


def test_missing_bucket_fails_before_any_work(s3, tiny_corpus, capsys):
    start = time.monotonic()
    assert tokenize_to_mds.main(_argv(tiny_corpus, "s3://no-such-bucket/mds")) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bucket 'no-such-bucket' does not exist" in err and s3.endpoint in err


def test_failed_upload_leaves_no_readable_split(s3, tiny_corpus, monkeypatch, capsys):
    from streaming.base.storage.upload import S3Uploader

    real_upload, uploaded = S3Uploader.upload_file, []

    def upload_then_lose_the_network(self, name):
        if name.endswith("index.json"):
            raise EndpointConnectionError(endpoint_url=s3.endpoint)
        uploaded.append(name)
        real_upload(self, name)

    monkeypatch.setattr(S3Uploader, "upload_file", upload_then_lose_the_network)
    assert tokenize_to_mds.main(_argv(tiny_corpus, f"s3://{s3.bucket}/mds", documents="validation.jsonl")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach" in err and "--overwrite" in err
    keys = s3.keys(s3.bucket, "mds/")
    assert uploaded and keys and not [k for k in keys if k.endswith(("index.json", "manifest.json"))]


def test_prepare_uploads_the_shards_and_writes_a_streaming_run_file(s3, tiny_corpus, tmp_path):
    import yaml

    from data_prep import prepare

    uri, out = f"s3://{s3.bucket}/prepared", tmp_path / "prepared"
    assert prepare.main(["--input", str(tiny_corpus / "corpus"), "--out", str(out), "--vocab-size",
                         "512", "--upload", uri, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["run.yaml", "tokenizer"]  # the shards live in the store only
    keys = s3.keys(s3.bucket, "prepared/")
    assert {"prepared/manifest.json", "prepared/train/index.json", "prepared/validation/index.json"} <= set(keys)
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["data_remote"] == uri and run["data_local"] == str((out / "mds_cache").resolve())
    assert run["train_loader"]["dataset"]["streaming"] is True and run["eval_loader"]["dataset"]["streaming"] is True
