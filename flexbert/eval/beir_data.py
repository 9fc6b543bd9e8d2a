"""Retrieval task files: the BEIR folder layout and training pairs, checked record by record before any model is built.

A BEIR folder holds
- `corpus.jsonl`: one document per line, `_id` (text; a JSON number is read as its text), `text`, optional `title`;
- `queries.jsonl`: one query per line, `_id`, `text` (the queries of every split);
- `qrels/{split}.tsv`: a header `query-id<TAB>corpus-id<TAB>score`, then one judgment per line, score an integer
  (graded relevance; > 0 is relevant).
As BEIR's `GenericDataLoader` does, a split's queries are those its qrels judge. Unlike it, a broken folder fails
at once with one line `file:line: field 'x': problem` -- a missing field, a duplicate `_id`, a qrels row naming a
query or document the folder does not have, a score that is not an integer, an empty file -- instead of a KeyError
in the middle of an evaluation.

Training pairs (`.jsonl`): `query`, `positive` and optionally `negative` (a hard negative), all text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flexbert.errors import DataError
from flexbert.eval.task_data import _text, read_records

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class Document:
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """What an encoder reads: the title, a space, the text (BEIR's sentence-transformers models do the same)."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass
class RetrievalSplit:
    corpus: dict[str, Document]
    queries: dict[str, str]  # only the queries the split's qrels judge
    qrels: dict[str, dict[str, int]]  # query id -> {document id: relevance}


@dataclass(frozen=True)
class TrainingPair:
    query: str
    positive: str
    negative: Optional[str] = None


def _id(record: dict, where: str) -> str:
    value = record.get("_id")
    if value is None or value == "":
        raise DataError(f"{where}: field '_id' is missing (fields: {', '.join(map(str, record)) or 'none'})")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field '_id' must be text, got {type(value).__name__}")
    return str(value)


def _records_by_id(path: Path, what: str) -> dict[str, tuple[str, dict]]:
    """{_id: (where, record)} of a corpus or queries file; a repeated `_id` or an empty file fails."""
    found: dict[str, tuple[str, dict]] = {}
    for where, record in read_records(path):
        key = _id(record, where)
        if key in found:
            raise DataError(f"{where}: field '_id': duplicate id {key!r} (first at {found[key][0]}); ids must be unique")
        found[key] = (where, record)
    if not found:
        raise DataError(f"{path}: no {what} (the file is empty)")
    return found


def read_corpus(path: Path) -> dict[str, Document]:
    corpus = {}
    for key, (where, record) in _records_by_id(path, "documents").items():
        title = _text(record, "title", where) if record.get("title") is not None else ""
        corpus[key] = Document(title, _text(record, "text", where))
    return corpus


def read_queries(path: Path) -> dict[str, str]:
    return {key: _text(record, "text", where) for key, (where, record) in _records_by_id(path, "queries").items()}


def _check_qrels_header(path: Path) -> None:
    with open(path, encoding="utf-8") as handle:
        header = tuple(handle.readline().rstrip("\r\n").split("\t"))
    if header == ("",):
        raise DataError(f"{path}: no judgments (the file is empty; it needs the header {' '.join(QRELS_HEADER)})")
    if header != QRELS_HEADER:
        raise DataError(f"{path}:1: the header must be {'<TAB>'.join(QRELS_HEADER)}, got {'<TAB>'.join(header)!r}")


def read_qrels(path: Path, queries: dict[str, str], corpus: dict[str, Document]) -> dict[str, dict[str, int]]:
    if path.suffix != ".tsv":
        raise DataError(f"{path}: qrels must be a .tsv file (header {' '.join(QRELS_HEADER)})")
    if not path.is_file():
        raise DataError(f"{path}: no such qrels file")
    _check_qrels_header(path)
    qrels: dict[str, dict[str, int]] = {}
    for where, record in read_records(path):
        query_id, doc_id, raw = (_text(record, field, where) for field in QRELS_HEADER)
        if query_id not in queries:
            raise DataError(f"{where}: field 'query-id': {query_id!r} is not an _id of queries.jsonl")
        if doc_id not in corpus:
            raise DataError(f"{where}: field 'corpus-id': {doc_id!r} is not an _id of corpus.jsonl")
        try:
            score = int(raw)
        except ValueError:
            raise DataError(f"{where}: field 'score': {raw!r} is not an integer (graded relevance: 0, 1, 2, ...)") from None
        if doc_id in qrels.get(query_id, {}):
            raise DataError(f"{where}: query {query_id!r} judges document {doc_id!r} a second time")
        qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise DataError(f"{path}: no judgments (the file has only its header)")
    return qrels


def read_beir_folder(folder: Path, split: str) -> RetrievalSplit:
    """The corpus, the `split` queries and their qrels of a BEIR folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such retrieval data folder (expected corpus.jsonl, queries.jsonl, qrels/)")
    corpus = read_corpus(folder / "corpus.jsonl")
    queries = read_queries(folder / "queries.jsonl")
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv", queries, corpus)
    return RetrievalSplit(corpus, {key: queries[key] for key in qrels}, qrels)


def read_training_pairs(path: Path) -> list[TrainingPair]:
    """(query, positive[, negative]) records of a JSONL file."""
    pairs = []
    for where, record in read_records(Path(path)):
        negative = _text(record, "negative", where) if record.get("negative") is not None else None
        pairs.append(TrainingPair(_text(record, "query", where), _text(record, "positive", where), negative))
    if not pairs:
        raise DataError(f"{path}: no training pairs (the file is empty)")
    return pairs


__all__ = ["Document", "RetrievalSplit", "TrainingPair", "read_beir_folder", "read_corpus", "read_queries",
           "read_qrels", "read_training_pairs"]
