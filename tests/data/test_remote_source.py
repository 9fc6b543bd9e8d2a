"""Reading MDS shards from an S3 object store (flexbert/data/remote.py, sources.StreamingMDSSource) against a real
S3-protocol server on localhost (conftest's `s3`): the documents equal the local shards' (read by streaming's
LocalDataset, the independent reader), and each way of not reaching the data is one line within seconds, naming the
URI, the endpoint and what to check -- not streaming's retries for minutes."""

import socket
import time

import numpy as np
import pytest
from streaming import LocalDataset

from flexbert.data import open_source
from flexbert.data.remote import PREFLIGHT_TIMEOUT_S, RemoteStoreError

FAST_S = PREFLIGHT_TIMEOUT_S + 5.0  # one attempt, plus the client's start on a busy machine (streaming: minutes)


@pytest.fixture
def uploaded(tiny_corpus_on_s3):
    return tiny_corpus_on_s3


def test_streaming_source_reads_the_documents_of_the_local_shards(uploaded, s3, tiny_corpus, tmp_path):
    cache = tmp_path / "cache"
    source = open_source(str(cache), uploaded, "validation", streaming=True)
    local = LocalDataset(str(tiny_corpus / "mds"), "validation")
    assert len(source) == len(local) > 0
    for doc_id in range(len(local)):
        np.testing.assert_array_equal(source.get(doc_id), local[doc_id]["input_ids"])
    assert (cache / "validation" / "index.json").is_file()  # the local folder is the cache it downloaded into


def _refusal(cache, uri, split="train") -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(RemoteStoreError) as err:
        open_source(str(cache), uri, split, streaming=True)
    return str(err.value), time.monotonic() - start


def test_missing_bucket_is_one_line_in_seconds(s3, tmp_path):
    line, seconds = _refusal(tmp_path / "cache", "s3://no-such-bucket/mds")
    assert seconds < FAST_S
    assert "s3://no-such-bucket/mds" in line and s3.endpoint in line and "bucket 'no-such-bucket' does not exist" in line
    assert "\n" not in line


@pytest.mark.parametrize("variable, value, code", [("AWS_SECRET_ACCESS_KEY", "wrong-secret", "SignatureDoesNotMatch"),
                                                   ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN", "InvalidAccessKeyId")])
def test_wrong_credentials_are_one_line_in_seconds(uploaded, s3, tmp_path, monkeypatch, variable, value, code):
    monkeypatch.setenv(variable, value)
    line, seconds = _refusal(tmp_path / "cache", uploaded)
    assert seconds < FAST_S
    assert uploaded in line and s3.endpoint in line and code in line and "AWS_SECRET_ACCESS_KEY" in line
    assert "\n" not in line


def test_refused_connection_is_one_line_in_seconds(s3, tmp_path, monkeypatch):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    line, seconds = _refusal(tmp_path / "cache", f"s3://{s3.bucket}/mds")
    assert seconds < FAST_S
    assert f"s3://{s3.bucket}/mds" in line and endpoint in line and "cannot reach" in line and "S3_ENDPOINT_URL" in line


def test_endpoint_that_never_answers_is_one_line_in_seconds(s3, tmp_path, monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
        line, seconds = _refusal(tmp_path / "cache", f"s3://{s3.bucket}/mds")
    assert seconds < FAST_S
    assert endpoint in line and "cannot reach" in line and "ReadTimeoutError" in line


def test_missing_split_names_what_is_there(uploaded, s3, tmp_path):
    line, seconds = _refusal(tmp_path / "cache", uploaded, split="test")
    assert seconds < FAST_S
    assert f"{uploaded}/test/index.json" in line and "'train'" in line and "'validation'" in line
