"""Tests for the corpus-preparation tools in data_prep/ (demo corpus, tokenizer training, MDS shards).

References are independent of the code under test: the Hugging Face tokenizer's own encoding
(with its template post-processor) for what a sample must hold, the input text for round trips,
the stdlib files for the demo corpus, and formulas (ceil, multiples of 64) for sizes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import build_demo_corpus, tokenize_to_mds, train_tokenizer
from tests.helpers import ROOT as REPO


ROUND_TRIP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n\n\tindented with a tab  \n",
    "Unicode: caf\u00e9, na\u0131ve, \u4e2d\u6587\u5b57, emoji \U0001f600, combining e\u0301 (not normalized)",
    "  leading and trailing spaces  ",
    "windows\r\nline endings\r\n",
    "[brackets] that look like [tokens] but are not [CLS]-like",
]


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def read_split(out: Path, split: str):
    from streaming import LocalDataset

    dataset = LocalDataset(local=str(out), split=split)
    return [dataset[i]["input_ids"] for i in range(len(dataset))]


def files_of(folder: Path):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_leftovers(out: Path):
    """Neither OUT nor any OUT.tmp-* sibling exists."""
    return not out.exists() and not list(out.parent.glob(out.name + ".tmp-*"))


# --------------------------------------------------------------------------------------------------
# Shared fixtures: a small demo corpus and a tokenizer trained on it (built once per module)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "demo"
    assert build_demo_corpus.main(["--out", str(out), "--max-docs", "300", "--val-fraction", "0.1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    argv = ["--input", str(corpus / "train.jsonl"), "--vocab-size", "300", "--out", str(out), "--quiet"]
    assert train_tokenizer.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def hf_tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def run_mds(inputs, tokenizer_dir, out, *extra):
    argv = ["--input", *map(str, inputs), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--quiet", *extra]
    return tokenize_to_mds.main(argv)


# --------------------------------------------------------------------------------------------------
# build_demo_corpus


@pytest.mark.slow
def test_demo_corpus_has_text_and_code_from_the_stdlib(corpus, tmp_path):
    import sysconfig

    train, val = read_jsonl(corpus / "train.jsonl"), read_jsonl(corpus / "validation.jsonl")
    assert (len(train), len(val)) == (300 - round(300 * 0.1), round(300 * 0.1))
    docs = train + val
    assert all(isinstance(d["text"], str) and d["text"].strip() and d["source"] for d in docs)
    assert {d["kind"] for d in docs} == {"text", "code"}
    # Code chunks are verbatim pieces of the stdlib file their source names.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for doc in [d for d in docs if d["kind"] == "code"][:20]:
        rel = doc["source"].split(":", 1)[1].rsplit("#", 1)[0]
        assert doc["text"] in (stdlib / rel).read_text(encoding="utf-8")
    # Deterministic for a seed, different for another seed.
    again, other = tmp_path / "again", tmp_path / "other"
    assert build_demo_corpus.main(["--out", str(again), "--max-docs", "300", "--val-fraction", "0.1", "--quiet"]) == 0
    assert files_of(again) == files_of(corpus)
    assert build_demo_corpus.main(["--out", str(other), "--max-docs", "300", "--seed", "1", "--quiet"]) == 0
    assert files_of(other) != files_of(corpus)


def test_scripts_run_by_path_with_help():
    for script in ("build_demo_corpus.py", "train_tokenizer.py", "tokenize_to_mds.py"):
        result = subprocess.run(
            [sys.executable, str(REPO / "data_prep" / script), "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "--out" in result.stdout


# --------------------------------------------------------------------------------------------------
# train_tokenizer


def test_tokenizer_special_tokens_template_and_padding(hf_tok, tokenizer_dir):
    tok = hf_tok
    assert type(tok).__name__ == "PreTrainedTokenizerFast"
    specials = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
    assert [tok.cls_token, tok.sep_token, tok.pad_token, tok.mask_token, tok.unk_token] == specials
    assert tok.convert_tokens_to_ids(specials) == [0, 1, 2, 3, 4]
    # Vocab: the 300 requested rounded up to a multiple of 64, ids contiguous, the rest [unusedN].
    assert len(tok) == math.ceil(300 / 64) * 64
    assert sorted(tok.get_vocab().values()) == list(range(len(tok)))
    unused = [f"[unused{i}]" for i in range(len(tok) - 300)]
    assert all(t in tok.get_vocab() for t in unused) and f"[unused{len(unused)}]" not in tok.get_vocab()
    assert tok.model_max_length == 8192
    # Template: [CLS] A [SEP] and [CLS] A [SEP] B [SEP], no token type ids.
    a = tok("hello world", add_special_tokens=False)["input_ids"]
    b = tok("def f(): pass", add_special_tokens=False)["input_ids"]
    enc = tok("hello world")
    assert enc["input_ids"] == [0] + a + [1]
    assert "token_type_ids" not in enc
    assert tok("hello world", "def f(): pass")["input_ids"] == [0] + a + [1] + b + [1]
    # [MASK] swallows the space on its left, as in ModernBERT.
    assert tok("x is [MASK]", add_special_tokens=False)["input_ids"] == tok("x is", add_special_tokens=False)[
        "input_ids"
    ] + [3]
    # Byte-level BPE: exact round trip, and no unknown tokens even for unseen scripts.
    for text in ROUND_TRIP_TEXTS:
        ids = tok(text, split_special_tokens=True)["input_ids"]  # "[CLS]" inside the text stays text
        assert 4 not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_pad_multiple_and_txt_input(tmp_path):
    from transformers import AutoTokenizer

    # .txt, one document per line; the corpus is rich enough to learn all 280 requested tokens.
    lines = [f"line {i}: the {'cat' if i % 2 else 'dog'} sat on mat number {i * 7}" for i in range(200)]
    (tmp_path / "a.txt").write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "tok"
    argv = ["--input", str(tmp_path / "a.txt"), "--vocab-size", "280", "--pad-multiple", "128", "--out", str(out)]
    assert train_tokenizer.main(argv + ["--quiet"]) == 0
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 384  # 280 rounded up to a multiple of 128
    assert tok.decode(tok(lines[3])["input_ids"], skip_special_tokens=True) == lines[3]


def test_tokenizer_refuses_existing_output_and_reports_bad_input(tmp_path, capsys):
    good = write_jsonl(tmp_path / "docs.jsonl", ["some text here"] * 10)
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert train_tokenizer.main(["--input", str(good), "--vocab-size", "270", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    out2 = tmp_path / "tok2"
    assert train_tokenizer.main(["--input", str(bad), "--vocab-size", "270", "--out", str(out2), "--quiet"]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert no_leftovers(out2)


# --------------------------------------------------------------------------------------------------
# tokenize_to_mds


def test_round_trip_text_to_mds_and_back(tmp_path, tokenizer_dir, hf_tok):
    src = write_jsonl(tmp_path / "docs.jsonl", ROUND_TRIP_TEXTS)
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0", "--max-seq-len", "4096") == 0
    samples = read_split(out, "train")
    assert not (out / "validation").exists()
    assert len(samples) == len(ROUND_TRIP_TEXTS)
    for sample, text in zip(samples, ROUND_TRIP_TEXTS):
        assert sample.dtype == np.uint16
        # [CLS] ... [SEP] via the HF template; special-token strings inside the text stay text.
        assert sample.tolist() == hf_tok(text, split_special_tokens=True)["input_ids"]
        assert hf_tok.decode(sample, skip_special_tokens=True) == text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == len(hf_tok)
    assert manifest["splits"]["train"]["documents"] == len(ROUND_TRIP_TEXTS)
    assert manifest["splits"]["train"]["tokens"] == sum(len(s) for s in samples)


def test_long_documents_split_into_framed_pieces(tmp_path, tokenizer_dir, hf_tok):
    text = " ".join(f"word{i} and some more text" for i in range(60))
    whole = hf_tok(text, add_special_tokens=False)["input_ids"]
    src = write_jsonl(tmp_path / "docs.jsonl", [text])
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0", "--max-seq-len", "16") == 0
    pieces = read_split(out, "train")
    assert len(pieces) == math.ceil(len(whole) / 14)
    for piece in pieces:
        assert len(piece) <= 16 and piece[0] == hf_tok.cls_token_id and piece[-1] == hf_tok.sep_token_id
    assert [t for p in pieces for t in p[1:-1].tolist()] == whole


def test_truncate_mode_keeps_sep_last(tmp_path, tokenizer_dir, hf_tok):
    long_text = " ".join(f"token{i}" for i in range(100))
    whole = hf_tok(long_text, add_special_tokens=False)["input_ids"]
    src = write_jsonl(tmp_path / "docs.jsonl", [long_text, "short one"])
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0", "--max-seq-len", "16", "--long-docs", "truncate") == 0
    samples = read_split(out, "train")
    assert [s.tolist() for s in samples] == [[0] + whole[:14] + [1], hf_tok("short one")["input_ids"]]
    stats = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert stats["truncated_tokens"] == len(whole) - 14 and stats["long_documents"] == 1


def test_empty_documents_are_skipped_and_counted(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "docs.jsonl", ["", "real doc one", "   ", "\n\t", "real doc two"])
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0") == 0
    assert len(read_split(out, "train")) == 2
    assert json.loads((out / "manifest.json").read_text())["empty_documents"] == 3


def test_worker_count_does_not_change_the_shards(tmp_path, corpus, tokenizer_dir):
    # One unnamed file (hashed split) with more documents than one tokenization batch.
    docs = [d["text"] for d in read_jsonl(corpus / "train.jsonl")] * 2
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    assert run_mds([src], tokenizer_dir, out1, "--max-seq-len", "64", "--workers", "1", "--val-fraction", "0.2") == 0
    assert run_mds([src], tokenizer_dir, out2, "--max-seq-len", "64", "--workers", "2", "--val-fraction", "0.2") == 0
    assert files_of(out1) == files_of(out2)
    assert (out1 / "train").is_dir() and (out1 / "validation").is_dir()


def test_named_files_keep_their_split_and_hashed_split_is_seeded(tmp_path, tokenizer_dir, hf_tok):
    train_texts = [f"train document {i}" for i in range(7)]
    val_texts = [f"validation document {i}" for i in range(3)]
    named = [write_jsonl(tmp_path / "train.jsonl", train_texts), write_jsonl(tmp_path / "validation.jsonl", val_texts)]
    out = tmp_path / "named"
    assert run_mds(named, tokenizer_dir, out, "--val-fraction", "0.5") == 0
    decode = lambda samples: [hf_tok.decode(s, skip_special_tokens=True) for s in samples]  # noqa: E731
    assert decode(read_split(out, "train")) == train_texts
    assert decode(read_split(out, "validation")) == val_texts

    texts = [f"document number {i}" for i in range(200)]
    src = write_jsonl(tmp_path / "docs.jsonl", texts)
    splits = {}
    for seed in ("0", "1"):
        o = tmp_path / f"seed{seed}"
        assert run_mds([src], tokenizer_dir, o, "--val-fraction", "0.5", "--seed", seed) == 0
        splits[seed] = decode(read_split(o, "validation"))
        train = decode(read_split(o, "train"))
        assert sorted(train + splits[seed]) == sorted(texts)  # every document once
        assert 40 < len(splits[seed]) < 160  # ~Binomial(200, 0.5)
    assert splits["0"] != splits["1"]


def test_bad_json_line_reports_file_and_line(tmp_path, tokenizer_dir, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken\n{"other": "x"}\n')
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out) == 2
    err = capsys.readouterr().err
    assert f"{src}:3:" in err and "invalid JSON" in err and "Traceback" not in err
    assert no_leftovers(out)
    # Missing field is the next problem once line 3 is fixed.
    src.write_text('{"text": "fine"}\n{"other": "x"}\n')
    assert run_mds([src], tokenizer_dir, out) == 2
    assert f"{src}:2: missing field 'text'" in capsys.readouterr().err


def test_undecodable_bytes_and_unknown_tokenizer_fail_cleanly(tmp_path, tokenizer_dir, capsys):
    src = tmp_path / "docs.txt"
    src.write_bytes(b"good line\nbad \xff\xfe line\n")
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out) == 2
    assert f"{src}:2:" in capsys.readouterr().err and no_leftovers(out)
    good = write_jsonl(tmp_path / "docs.jsonl", ["hello"])
    assert run_mds([good], tmp_path / "no_such_tokenizer", out) == 2
    assert f"tokenizer folder '{tmp_path / 'no_such_tokenizer'}' does not exist" in capsys.readouterr().err
    empty_dir = tmp_path / "empty_tok"
    empty_dir.mkdir()
    assert run_mds([good], empty_dir, out) == 2
    assert f"tokenizer folder '{empty_dir}' holds no tokenizer" in capsys.readouterr().err and no_leftovers(out)


def test_skip_bad_counts_bad_records(tmp_path, tokenizer_dir, hf_tok, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_bytes(b'{"text": "one"}\n{broken\n{"text": "two"}\n{"text": 5}\n{"text": "bad \xff"}\n{"text": "three"}\n')
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--skip-bad", "--val-fraction", "0") == 0
    texts = [hf_tok.decode(s, skip_special_tokens=True) for s in read_split(out, "train")]
    assert texts == ["one", "two", "three"]
    assert json.loads((out / "manifest.json").read_text())["bad_records_skipped"] == 3
    assert f"{src}:2:" in capsys.readouterr().err


def test_failure_mid_run_leaves_no_output(tmp_path, corpus, tokenizer_dir, monkeypatch):
    calls = {"n": 0}
    real = tokenize_to_mds.to_samples

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 50:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenize_to_mds, "to_samples", failing)
    out = tmp_path / "mds"
    with pytest.raises(RuntimeError, match="injected"):
        run_mds([corpus], tokenizer_dir, out)
    assert calls["n"] == 50 and no_leftovers(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenize_to_mds, "to_samples", interrupted)
    assert run_mds([corpus], tokenizer_dir, out) == 130
    assert no_leftovers(out)


def test_existing_output_needs_overwrite(tmp_path, tokenizer_dir, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl", ["a document"])
    out = tmp_path / "mds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert run_mds([src], tokenizer_dir, out) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "old.txt").exists()
    assert run_mds([src], tokenizer_dir, out, "--overwrite", "--val-fraction", "0") == 0
    assert not (out / "old.txt").exists() and len(read_split(out, "train")) == 1
    assert not list(tmp_path.glob("mds.*"))


def test_parquet_folder_and_glob_inputs(tmp_path, tokenizer_dir, hf_tok, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data" / "sub"
    data.mkdir(parents=True)
    pq.write_table(pa.table({"content": ROUND_TRIP_TEXTS[:3], "n": [1, 2, 3]}), data / "part0.parquet")
    write_jsonl(data / "part1.jsonl", ROUND_TRIP_TEXTS[3:], field="content")
    (data / "ignored.csv").write_text("not,read\n")
    expected = ROUND_TRIP_TEXTS[:3] + ROUND_TRIP_TEXTS[3:]  # sorted file order: part0, part1
    for inputs in ([tmp_path / "data"], [str(tmp_path / "data" / "**" / "part*")]):
        out = tmp_path / f"mds{len(list(tmp_path.glob('mds*')))}"
        assert run_mds(inputs, tokenizer_dir, out, "--text-field", "content", "--val-fraction", "0") == 0
        assert [hf_tok.decode(s, skip_special_tokens=True) for s in read_split(out, "train")] == expected
    # A null value is reported with the file and row; a missing column names the columns.
    pq.write_table(pa.table({"text": ["ok", None]}), tmp_path / "nulls.parquet")
    assert run_mds([tmp_path / "nulls.parquet"], tokenizer_dir, tmp_path / "x") == 2
    assert f"{tmp_path / 'nulls.parquet'}:2:" in capsys.readouterr().err
    assert run_mds([data / "part0.parquet"], tokenizer_dir, tmp_path / "x") == 2
    assert "no column 'text' (columns: content, n)" in capsys.readouterr().err


def test_large_vocab_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level tokenizer with 70,000 words: ids beyond uint16 without any training.
    specials = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": len(specials) + i for i in range(70_000)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
        unk_token="[UNK]",
    )
    tok.save_pretrained(str(tmp_path / "tok"))
    src = write_jsonl(tmp_path / "docs.jsonl", ["w69999 w0 w65536"])
    out = tmp_path / "mds"
    assert run_mds([src], tmp_path / "tok", out, "--val-fraction", "0") == 0
    (sample,) = read_split(out, "train")
    assert sample.dtype == np.uint32
    assert sample.tolist() == [0, vocab["w69999"], vocab["w0"], vocab["w65536"], 1]
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "uint32"


def test_zstd_compression_reads_back(tmp_path, tokenizer_dir, hf_tok):
    import zstd

    src = write_jsonl(tmp_path / "docs.jsonl", ROUND_TRIP_TEXTS)
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0", "--compression", "zstd") == 0
    # Only compressed shards are written; decompress them (what StreamingDataset does on first use).
    shards = json.loads((out / "train" / "index.json").read_text())["shards"]
    for shard in shards:
        assert not (out / "train" / shard["raw_data"]["basename"]).exists()
        packed = (out / "train" / shard["zip_data"]["basename"]).read_bytes()
        (out / "train" / shard["raw_data"]["basename"]).write_bytes(zstd.decompress(packed))
    assert [hf_tok.decode(s, skip_special_tokens=True) for s in read_split(out, "train")] == ROUND_TRIP_TEXTS


@pytest.mark.parametrize("layout", ["out_is_input", "out_contains_input", "out_inside_input", "out_contains_tokenizer"])
def test_output_overlapping_an_input_is_refused_and_nothing_is_deleted(tmp_path, tokenizer_dir, layout, capsys):
    import shutil

    data = tmp_path / "D"
    (data / "corpus").mkdir(parents=True)
    write_jsonl(data / "corpus" / "docs.jsonl", ["a document", "another one"])
    (data / "notes.txt.keep").write_text("unrelated file")
    tokenizer = tokenizer_dir
    if layout == "out_contains_tokenizer":
        tokenizer = shutil.copytree(tokenizer_dir, data / "tok")
    inputs, out = {
        "out_is_input": ([f"{data}/"], data),
        "out_contains_input": ([data / "corpus"], data),
        "out_inside_input": ([data], data / "mds"),
        "out_contains_tokenizer": ([tmp_path / "elsewhere.jsonl"], data),
    }[layout]
    write_jsonl(tmp_path / "elsewhere.jsonl", ["text"])
    before = files_of(tmp_path)
    assert run_mds(inputs, tokenizer, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--out {out}" in err, err
    assert files_of(tmp_path) == before and not (data / "mds").exists()


def test_tokenizer_output_overlapping_its_input_is_refused(tmp_path, capsys):
    data = tmp_path / "D"
    data.mkdir()
    write_jsonl(data / "train.jsonl", ["some text"] * 20)
    argv = ["--input", str(data), "--vocab-size", "300", "--out", str(data), "--overwrite", "--quiet"]
    assert train_tokenizer.main(argv) == 2
    assert "is the input" in capsys.readouterr().err and (data / "train.jsonl").exists()


KILL_DURING_SWAP = """
import os, signal, sys
from pathlib import Path
real_rename, calls = Path.rename, [0]
def rename(self, target):  # the swap's second rename (new output into place) never happens: SIGKILL first
    calls[0] += 1
    if calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(self, target)
Path.rename = rename
from data_prep import tokenize_to_mds
sys.exit(tokenize_to_mds.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_between_the_swaps_renames_is_recovered_by_the_next_run(tmp_path, tokenizer_dir, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl", ["first version"])
    out = tmp_path / "mds"
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0") == 0
    old = files_of(out)
    write_jsonl(src, ["second version", "two documents"])
    argv = ["--input", str(src), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--quiet", "--overwrite",
            "--val-fraction", "0"]
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SWAP, *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and list(tmp_path.glob("mds.old-*")) and list(tmp_path.glob("mds.tmp-*"))

    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0") == 2  # no --overwrite: the old output is back
    assert "recovered" in capsys.readouterr().err and files_of(out) == old
    assert not list(tmp_path.glob("mds.*-*"))
    assert run_mds([src], tokenizer_dir, out, "--val-fraction", "0", "--overwrite") == 0
    assert len(read_split(out, "train")) == 2
