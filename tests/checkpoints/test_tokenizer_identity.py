"""Shards record the tokenizer that made them; training with another tokenizer is refused, naming both."""

import json

import pytest

from benchmarks import fault_injection as fi
from data_prep import train_tokenizer
from flexbert.train.trainer import main


@pytest.fixture(scope="module")
def other_tokenizer(tiny_corpus, tmp_path_factory):
    """Same size (512) as the shards' tokenizer, learned from other text: only its vocabulary differs."""
    out = tmp_path_factory.mktemp("other") / "tokenizer"
    argv = ["--input", str(tiny_corpus / "corpus" / "validation.jsonl"), "--vocab-size", "512", "--out", str(out),
            "--quiet"]
    assert train_tokenizer.main(argv) == 0
    return out


def test_manifest_records_a_tokenizer_identity_that_tells_vocabularies_apart(tiny_corpus, other_tokenizer):
    from transformers import AutoTokenizer

    from flexbert.tokenizer_identity import tokenizer_identity

    manifest = json.loads((tiny_corpus / "mds" / "manifest.json").read_text())
    shards_tok = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    other = AutoTokenizer.from_pretrained(other_tokenizer)
    assert len(other) == len(shards_tok) and other.get_vocab() != shards_tok.get_vocab()
    assert manifest["tokenizer_identity"] == tokenizer_identity(shards_tok)
    assert tokenizer_identity(other) != manifest["tokenizer_identity"]


def test_training_refuses_shards_made_with_another_tokenizer(tiny_corpus, other_tokenizer, tmp_path, capsys):
    argv = ["yamls/demo.yaml", *fi.run_overrides(tiny_corpus, tmp_path / "run", 2, 2, tokenizer_name=other_tokenizer)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert str(tiny_corpus / "tokenizer") in lines[0] and str(other_tokenizer) in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
