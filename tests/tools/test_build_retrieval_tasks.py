"""data_prep/build_retrieval_tasks.py on a dozen real standard-library modules: BEIR folders the reader accepts, no
module in two code-search splits, long-document answers past token 1024, the same output for the same seed."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from data_prep import build_retrieval_tasks
from flexbert.eval.beir_data import read_beir_folder, read_training_pairs
from tests.eval_fixtures import build_tokenizer

MODULES = ["heapq", "argparse", "typing", "textwrap", "shlex", "fractions", "statistics", "calendar", "difflib",
           "configparser", "string", "functools", "ipaddress"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stdlib")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in MODULES:
        shutil.copy(stdlib / f"{name}.py", folder / f"{name}.py")
    return folder


def build(sources: Path, out: Path, *extra: str) -> Path:
    assert build_retrieval_tasks.main(["--source", str(sources), "--out", str(out), "--quiet", *extra]) == 0
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_code_search_splits_by_module(sources, tmp_path, capsys):
    out = build(sources, tmp_path / "tasks")
    closing = capsys.readouterr().out
    assert "code_search" in closing and str(out / "long_documents") in closing
    folder = out / "code_search"
    module_of = {d["_id"]: d["module"] for d in _jsonl(folder / "corpus.jsonl")}
    modules = {"train": {r["module"] for r in _jsonl(folder / "train.jsonl")}}
    for split in ("dev", "test"):
        data = read_beir_folder(folder, split)
        assert data.queries
        modules[split] = {module_of[d] for judged in data.qrels.values() for d in judged}
        for query_id, judged in data.qrels.items():
            (doc_id,) = judged
            code = data.corpus[doc_id].text
            assert code.startswith(("def ", "async def ")) and data.queries[query_id] not in code  # docstring removed
    assert all(modules.values())
    assert not (modules["train"] & modules["dev"] or modules["train"] & modules["test"] or modules["dev"] & modules["test"])
    assert set(module_of.values()) == modules["dev"] | modules["test"]  # train functions are not in the corpus
    assert len(read_training_pairs(folder / "train.jsonl")) > 100


@pytest.mark.parametrize("counted_by", ["words", "tokenizer"])
def test_long_document_answers_sit_past_token_1024(sources, tmp_path, counted_by):
    extra = []
    count = lambda text: len(text.split())  # noqa: E731
    if counted_by == "tokenizer":
        tokenizer = build_tokenizer(tmp_path / "tokenizer")  # splits at whitespace and punctuation: >= words
        extra = ["--tokenizer", str(tmp_path / "tokenizer")]
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    folder = build(sources, tmp_path / "tasks", *extra) / "long_documents"
    answers = {q["_id"]: q["answer_start"] for q in _jsonl(folder / "queries.jsonl")}
    checked = 0
    for split in ("dev", "test"):
        data = read_beir_folder(folder, split)
        for query_id, judged in data.qrels.items():
            (doc_id,) = judged
            name = query_id.split(":")[2].rsplit(".", 1)[-1]  # q:module:Class.method:line
            text = data.corpus[doc_id].text
            start = answers[query_id]
            assert text[start:].lstrip().startswith((f"def {name}(", f"async def {name}("))
            assert count(text[:start]) >= 1024
            checked += 1
    assert checked >= 10


def test_same_seed_same_output_and_bad_source(sources, tmp_path, capsys):
    first, second = build(sources, tmp_path / "a"), build(sources, tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)

    (tmp_path / "empty").mkdir()
    assert build_retrieval_tasks.main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Python sources found" in err and "\n" not in err and not (tmp_path / "c").exists()


def test_too_few_sources_fail_before_writing(sources, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(sources / "heapq.py", few / "heapq.py")
    assert build_retrieval_tasks.main(["--source", str(few), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "too few documented functions or long modules: no queries for code_search" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
