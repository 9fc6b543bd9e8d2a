"""Fixtures of the training tests that several modules share (the session-wide ones are in tests/conftest.py)."""

import pytest

from tests.train import two_rank_run


@pytest.fixture(scope="session")
def fixed_length_data(tiny_corpus, tmp_path_factory):
    return two_rank_run.write_fixed_length_data(tiny_corpus / "tokenizer", tmp_path_factory.mktemp("fixed"))


@pytest.fixture(scope="session")
def two_process_run(tiny_corpus, fixed_length_data, tmp_path_factory):
    """`composer -n 2` (one node, two CPU ranks on gloo) trained on the fixed-length data: the reference of the
    one-process and the two-node comparisons, trained once per session."""
    folder = tmp_path_factory.mktemp("two_process") / "run"
    two_rank_run.run(two_rank_run.single_node_command(two_rank_run.overrides(tiny_corpus, fixed_length_data, folder)))
    return folder
