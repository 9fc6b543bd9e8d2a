"""The BEIR-layout and training-pair readers: a good folder reads as BEIR's loader would; every broken file fails
with one line naming the file, the line and the field."""

import json
from pathlib import Path

import pytest

from flexbert.errors import DataError
from flexbert.eval.beir_data import Document, read_beir_folder, read_training_pairs

CORPUS = [{"_id": "d1", "title": "Sorting", "text": "sorted returns a new list"},
          {"_id": "d2", "text": "list.sort sorts in place"},
          {"_id": 3, "title": "", "text": "heapq keeps a heap"}]
QUERIES = [{"_id": "q1", "text": "how to sort a list"}, {"_id": "q2", "text": "priority queue"},
           {"_id": "q3", "text": "a query of another split"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq2\t3\t1\n"


def _jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def beir_folder(root: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    _jsonl(root / "corpus.jsonl", corpus)
    _jsonl(root / "queries.jsonl", queries)
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_reads_a_beir_folder(tmp_path):
    split = read_beir_folder(beir_folder(tmp_path / "task"), "test")
    assert split.corpus == {"d1": Document("Sorting", "sorted returns a new list"),
                            "d2": Document("", "list.sort sorts in place"), "3": Document("", "heapq keeps a heap")}
    assert split.corpus["d1"].full_text == "Sorting sorted returns a new list"
    assert split.corpus["d2"].full_text == "list.sort sorts in place"
    assert split.queries == {"q1": "how to sort a list", "q2": "priority queue"}  # q3 has no judgment in this split
    assert split.qrels == {"q1": {"d1": 2, "d2": 1}, "q2": {"3": 1}}


@pytest.mark.parametrize("case, expected", [
    ("corpus_missing_text", r"corpus\.jsonl:2: field 'text' is missing"),
    ("corpus_missing_id", r"corpus\.jsonl:3: field '_id' is missing"),
    ("corpus_duplicate_id", r"corpus\.jsonl:3: field '_id': duplicate id 'd1' \(first at .*corpus\.jsonl:1\)"),
    ("queries_duplicate_id", r"queries\.jsonl:2: field '_id': duplicate id 'q1'"),
    ("queries_missing_text", r"queries\.jsonl:1: field 'text' is missing"),
    ("qrels_unknown_doc", r"test\.tsv:3: field 'corpus-id': 'd9' is not an _id of corpus\.jsonl"),
    ("qrels_unknown_query", r"test\.tsv:2: field 'query-id': 'q9' is not an _id of queries\.jsonl"),
    ("qrels_bad_score", r"test\.tsv:5: field 'score': 'high' is not an integer"),
    ("qrels_missing_score", r"test\.tsv:2: field 'score' is missing"),
    ("qrels_repeated_pair", r"test\.tsv:3: query 'q1' judges document 'd1' a second time"),
    ("qrels_bad_header", r"test\.tsv:1: the header must be query-id<TAB>corpus-id<TAB>score"),
    ("empty_corpus", r"corpus\.jsonl: no documents \(the file is empty\)"),
    ("empty_queries", r"queries\.jsonl: no queries \(the file is empty\)"),
    ("empty_qrels", r"test\.tsv: no judgments \(the file is empty"),
    ("header_only_qrels", r"test\.tsv: no judgments \(the file has only its header\)"),
    ("not_json", r"corpus\.jsonl:2: not a JSON object"),
])
def test_broken_folder_fails_with_file_line_and_field(tmp_path, case, expected):
    corpus, queries, qrels = list(CORPUS), list(QUERIES), QRELS
    header = "query-id\tcorpus-id\tscore\n"
    if case == "corpus_missing_text":
        corpus[1] = {"_id": "d2", "title": "no text"}
    elif case == "corpus_missing_id":
        corpus[2] = {"text": "no id"}
    elif case == "corpus_duplicate_id":
        corpus[2] = {"_id": "d1", "text": "again"}
    elif case == "queries_duplicate_id":
        queries[1] = {"_id": "q1", "text": "again"}
    elif case == "queries_missing_text":
        queries[0] = {"_id": "q1", "query": "wrong field"}
    elif case == "qrels_unknown_doc":
        qrels = header + "q1\td1\t1\nq1\td9\t1\n"
    elif case == "qrels_unknown_query":
        qrels = header + "q9\td1\t1\n"
    elif case == "qrels_bad_score":
        qrels = QRELS + "q2\td1\thigh\n"
    elif case == "qrels_missing_score":
        qrels = header + "q1\td1\n"
    elif case == "qrels_repeated_pair":
        qrels = header + "q1\td1\t1\nq1\td1\t2\n"
    elif case == "qrels_bad_header":
        qrels = "qid\tdocid\trel\nq1\td1\t1\n"
    elif case in ("empty_corpus", "empty_queries"):
        corpus, queries = ([], queries) if case == "empty_corpus" else (corpus, [])
    elif case == "empty_qrels":
        qrels = ""
    elif case == "header_only_qrels":
        qrels = header
    folder = beir_folder(tmp_path / "task", corpus, queries, qrels)
    if case == "not_json":
        (folder / "corpus.jsonl").write_text(json.dumps(CORPUS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected) as err:
        read_beir_folder(folder, "test")
    assert "\n" not in str(err.value)


def test_missing_folder_and_split(tmp_path):
    with pytest.raises(DataError, match="no such retrieval data folder"):
        read_beir_folder(tmp_path / "nowhere", "test")
    with pytest.raises(DataError, match=r"dev\.tsv: no such qrels file"):
        read_beir_folder(beir_folder(tmp_path / "task"), "dev")


def test_training_pairs(tmp_path):
    path = tmp_path / "train.jsonl"
    _jsonl(path, [{"query": "sort a list", "positive": "sorted(xs)"},
                  {"query": "heap", "positive": "heapq.heappush", "negative": "list.sort"}])
    pairs = read_training_pairs(path)
    assert [(p.query, p.positive, p.negative) for p in pairs] == [
        ("sort a list", "sorted(xs)", None), ("heap", "heapq.heappush", "list.sort")]

    _jsonl(path, [{"query": "sort a list", "positive": "sorted(xs)"}, {"query": "heap"}])
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'positive' is missing"):
        read_training_pairs(path)
    _jsonl(path, [{"query": "q", "positive": "p", "negative": ["a", "b"]}])
    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'negative' must be text, got list"):
        read_training_pairs(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl: no training pairs \(the file is empty\)"):
        read_training_pairs(path)
