"""Shared fixtures (helpers to import live in tests/helpers.py). Everything runs on CPU without network."""

import os
import sys

import pytest

from tests.helpers import ROOT, TINY_MODERNBERT, UNINTERRUPTED_EVERY, UNINTERRUPTED_STEPS
from tests.tiny_setup import build_tiny_corpus

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The Python processes the tests start (ranks, main.py, sweeps) inherit this: OpenMP threads that spin while
# waiting take the cores that the other ranks and processes of the test need (the Makefile sets it for pytest).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def prewarmed_processes(tmp_path_factory):
    """Python commands the tests start (main.py, sweeps, launcher ranks) fork from a zygote that has imported torch,
    Composer and flexbert once, instead of each loading them again (see tests/prewarmed.py).
    FLEXBERT_TEST_PREWARM=0 starts every command the ordinary way (to rule the zygote out of a failure); so does a
    system other than Linux (the zygote needs prctl)."""
    if os.environ.get("FLEXBERT_TEST_PREWARM", "1") == "0" or not sys.platform.startswith("linux"):
        yield None
        return
    from tests import prewarmed

    zygote = prewarmed.Zygote(str(tmp_path_factory.mktemp("zygote")), str(ROOT))
    prewarmed.install()
    yield zygote
    zygote.close()


@pytest.fixture
def tiny_modernbert_kwargs():
    return dict(TINY_MODERNBERT)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def uninterrupted_run(tiny_corpus, tmp_path_factory):
    """The tiny recipe trained 6 batches with a checkpoint every 2 (the demo keeps the last two), never interrupted:
    the reference that the resume and damaged-checkpoint tests copy (never change) and compare against. Built once
    per session because every such test needs the same run."""
    from benchmarks import fault_injection
    from flexbert.train.trainer import main

    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    argv = fault_injection.run_overrides(tiny_corpus, folder, UNINTERRUPTED_STEPS, UNINTERRUPTED_EVERY)
    assert main([str(ROOT / "yamls" / "demo.yaml"), *argv]) == 0
    return folder


@pytest.fixture(scope="session")
def gloo_ranks():
    """Two CPU processes in one gloo process group, started once per session (see tests/gloo_ranks.py)."""
    from tests.gloo_ranks import GlooRanks

    ranks = GlooRanks(world_size=2)
    yield ranks
    ranks.close()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on a free localhost port, credential checks on; stopped after the session."""
    from tests.s3_server import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_corpus_on_s3(s3_server, tiny_corpus):
    """The tiny corpus tokenized straight to s3://BUCKET/mds with the shared MDS folder's settings, once per session
    (tests only read it)."""
    from data_prep import tokenize_to_mds

    uri = f"s3://{s3_server.new_bucket()}/mds"
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env().items():
            env.setenv(name, value)
        assert tokenize_to_mds.main(["--input", str(tiny_corpus / "corpus"), "--tokenizer",
                                     str(tiny_corpus / "tokenizer"), "--out", uri, "--max-seq-len", "64",
                                     "--quiet"]) == 0
    return uri


@pytest.fixture
def s3(s3_server, monkeypatch):
    """`s3_server` with this test's environment pointing at it (S3_ENDPOINT_URL, valid AWS_* credentials) and a
    fresh bucket: `s3.bucket`."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3_server.bucket = s3_server.new_bucket()
    return s3_server
