"""Retrieval tasks from the Python standard library's sources (real text that ships with every Python, no download):
code search and long-document retrieval, in the BEIR layout.

    python data_prep/build_retrieval_tasks.py --out demo_data/retrieval [--source DIR] [--seed 0]
        [--max-queries 300] [--max-train-pairs 5000] [--tokenizer DIR]

code_search: docstring -> function. Every function and method with a docstring is read with `ast` (nothing is
imported); the query is the first paragraph of its docstring, the document the function's source without the
docstring. Modules (a file is a module) are split in a seeded order into train / dev / test (80 / 10 / 10 %), so no
module is in two splits -- a function's neighbours, helpers and naming habits never leak from training into
scoring. Docstrings shared by several functions ("Return repr(self).") are ambiguous queries and are left out.
Output: OUT/code_search/corpus.jsonl (every function of the dev and test modules; --max-queries of each split
are queries), queries.jsonl, qrels/{dev,test}.tsv,
and train.jsonl with (query, positive) pairs of the train modules (fields `module` name the source of each).

long_documents: each module whose source, docstrings removed, is long is a document; its queries are docstrings of
functions whose body starts past token LONG_ANSWER_START of the document, so a model that reads only the first 1024
tokens cannot see the answer and one that reads 8192 can. Documents are cut at --long-doc-words words. Token
positions are counted in whitespace-separated words unless --tokenizer names a tokenizer: a tokenizer that splits at
whitespace first (BPE, WordPiece: ModernBERT's, BERT's) gives every word at least one token, so "past 1024 words"
means "past 1024 tokens" for it too. The builder asserts every answer's position on the written documents.
Output: OUT/long_documents/corpus.jsonl, queries.jsonl, qrels/{dev,test}.tsv (dev/test split by module).

Note: `build_demo_corpus` puts the standard library's sources and docstrings into the demo's pretraining corpus, so
these tasks score text the demo model has read (the paper's code-search data, too, overlaps web-scale pretraining).
Deterministic for a given seed and Python installation.
"""

from __future__ import annotations

import ast
import bisect
import inspect
import json
import random
import re
import sys
import sysconfig
import textwrap
import tokenize
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from data_prep._io import DataError, argument_parser, atomic_output_dir, progress, run_main
from data_prep.build_demo_corpus import stdlib_files

PROG = "build_retrieval_tasks"
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}
MIN_QUERY_WORDS = 4  # shorter first paragraphs ("Return x.") say too little to retrieve by
MIN_BODY_LINES = 2  # the def line and at least one line of code
MAX_QUERIES = 300  # per scored split: keeps zero-shot scoring of a split within a minute or two on 2 CPU cores
MAX_TRAIN_PAIRS = 5000
LONG_ANSWER_START = 1024  # tokens before an answer's first token: past what a 1024-token model reads
LONG_DOC_WORDS = 6000  # documents are cut here; an answer must end before the cut
LONG_QUERIES_PER_DOC = 3


@dataclass
class Function:
    module: str
    name: str  # qualified within the module: Class.method
    line: int  # the def line
    end_line: int
    query: str
    code: str

    @property
    def doc_id(self) -> str:
        return f"{self.module}:{self.name}:{self.line}"


def module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_source(path: Path) -> Optional[str]:
    """The file's text (its coding cookie honoured), or None when it is not readable Python source."""
    try:
        with tokenize.open(path) as handle:
            return handle.read()
    except (SyntaxError, UnicodeDecodeError):
        return None


def first_paragraph(docstring: str) -> str:
    return " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())


def _docstring_node(node) -> Optional[ast.Expr]:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def functions_of(module: str, source: str) -> List[Function]:
    """Functions and methods with a docstring, their source without it (dedented), in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    found = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = _docstring_node(child)
                if docstring is not None:
                    kept = lines[child.lineno - 1:docstring.lineno - 1] + lines[docstring.end_lineno:child.end_lineno]
                    code = textwrap.dedent("\n".join(kept)).strip("\n")
                    found.append(Function(module, prefix + child.name, child.lineno, child.end_lineno,
                                          first_paragraph(docstring.value.value), code))
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def read_modules(source_root: Path, quiet: bool = False) -> Dict[str, str]:
    """{module name: source} of the .py files under `source_root` (tests and codec tables left out)."""
    files = [p for p in stdlib_files(source_root) if p.suffix == ".py"]
    if not files:
        raise DataError(f"{source_root}: no Python sources found; give --source a folder of .py files")
    modules = {}
    with progress(f"{PROG}: reading", "file", quiet, total=len(files)) as bar:
        for relative in files:
            source = read_source(source_root / relative)
            if source is not None:
                modules[module_name(relative)] = source
            bar.update(1)
    return modules


def split_modules(names: List[str], seed: int) -> Dict[str, str]:
    """{module: split}: a seeded order of the sorted names, cut by SPLIT_FRACTIONS."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    dev_start = round(len(order) * SPLIT_FRACTIONS["train"])
    test_start = dev_start + round(len(order) * SPLIT_FRACTIONS["dev"])
    return {name: "train" if i < dev_start else "dev" if i < test_start else "test" for i, name in enumerate(order)}


def usable(functions: List[Function]) -> List[Function]:
    """Functions with a query that says something, a body, and a docstring no other function shares."""
    counts = Counter(f.query.lower() for f in functions)
    return [f for f in functions if len(f.query.split()) >= MIN_QUERY_WORDS and counts[f.query.lower()] == 1
            and len(f.code.splitlines()) >= MIN_BODY_LINES]


def _write_jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _write_beir(folder: Path, corpus: List[dict], queries: List[dict], qrels: Dict[str, List[tuple]]) -> None:
    (folder / "qrels").mkdir(parents=True)
    _write_jsonl(folder / "corpus.jsonl", corpus)
    _write_jsonl(folder / "queries.jsonl", queries)
    for split, rows in qrels.items():
        with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            handle.writelines(f"{q}\t{d}\t{score}\n" for q, d, score in rows)


def build_code_search(modules: Dict[str, str], seed: int, max_queries: int, max_train_pairs: int) -> dict:
    splits = split_modules(list(modules), seed)
    functions = usable([f for name in sorted(modules) for f in functions_of(name, modules[name])])
    rng = random.Random(seed)
    by_split = {split: [f for f in functions if splits[f.module] == split] for split in SPLIT_FRACTIONS}
    for split, members in by_split.items():
        rng.shuffle(members)
        by_split[split] = members[:max_train_pairs if split == "train" else max_queries]
    seen = {split: {f.module for f in members} for split, members in by_split.items()}
    assert not (seen["train"] & seen["dev"] or seen["train"] & seen["test"] or seen["dev"] & seen["test"]), \
        "a module is in two splits"
    scored = by_split["dev"] + by_split["test"]
    # The corpus holds every function of the dev and test modules: the unqueried ones are distractors.
    corpus = [f for f in functions if splits[f.module] != "train"]
    return {
        "corpus": [{"_id": f.doc_id, "title": "", "text": f.code, "module": f.module} for f in corpus],
        "queries": [{"_id": f"q:{f.doc_id}", "text": f.query} for f in scored],
        "qrels": {split: [(f"q:{f.doc_id}", f.doc_id, 1) for f in by_split[split]] for split in ("dev", "test")},
        "train": [{"query": f.query, "positive": f.code, "module": f.module} for f in by_split["train"]],
    }


def lines_without_docstrings(source: str) -> Optional[List[tuple]]:
    """(line number, line) of the module's source without any docstring (module, class, function); None when the
    source does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    drop = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = _docstring_node(node)
            if docstring is not None:
                drop.update(range(docstring.lineno, docstring.end_lineno + 1))
    return [(number, line) for number, line in enumerate(source.splitlines(), 1) if number not in drop]


def token_starts_function(tokenizer_dir: Optional[str]) -> Callable[[str], List[int]]:
    """text -> the character offset of each of its tokens: whitespace-separated words, or the tokenizer's tokens
    (no special tokens). The tokens before a character are then one bisection away."""
    if tokenizer_dir is None:
        return lambda text: [match.start() for match in re.finditer(r"\S+", text)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return lambda text: [start for start, _ in tokenizer(text, add_special_tokens=False,
                                                         return_offsets_mapping=True)["offset_mapping"]]


def cut_at_words(lines: List[tuple], words: int) -> List[tuple]:
    """The leading lines that hold at most `words` whitespace-separated words."""
    count = 0
    for index, (_, line) in enumerate(lines):
        count += len(line.split())
        if count > words:
            return lines[:index]
    return lines


def dev_test_split(names: List[str], seed: int) -> Dict[str, str]:
    """{name: "dev" | "test"}: a seeded order of the sorted names, cut in half."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    return {name: "dev" if i < len(order) // 2 else "test" for i, name in enumerate(order)}


def build_long_documents(modules: Dict[str, str], seed: int, max_queries: int, doc_words: int,
                         token_starts: Callable[[str], List[int]]) -> dict:
    """Long module sources as documents, and queries answered only past LONG_ANSWER_START tokens."""
    rng = random.Random(seed)
    corpus, answers_of = [], {}
    for name in sorted(modules):
        lines = lines_without_docstrings(modules[name])
        if lines is None or sum(len(line.split()) for _, line in lines) <= LONG_ANSWER_START + 200:
            continue
        lines = cut_at_words(lines, doc_words)
        index_of = {number: index for index, (number, _) in enumerate(lines)}
        last_line = lines[-1][0] if lines else 0
        document = "\n".join(line for _, line in lines)
        starts = token_starts(document)
        answers = []
        for function in usable(functions_of(name, modules[name])):
            if function.line not in index_of or function.end_line > last_line:  # the whole answer must be in the document
                continue
            start = len("\n".join(line for _, line in lines[:index_of[function.line]])) + (index_of[function.line] > 0)
            if bisect.bisect_left(starts, start) >= LONG_ANSWER_START:
                answers.append((function, start))
        if answers:
            rng.shuffle(answers)
            corpus.append({"_id": name, "title": "", "text": document})
            answers_of[name] = answers[:LONG_QUERIES_PER_DOC]
    split_of = dev_test_split(list(answers_of), seed)
    queries, qrels = [], {"dev": [], "test": []}
    for name, answers in answers_of.items():
        for function, start in answers:
            queries.append({"_id": f"q:{function.doc_id}", "text": function.query, "answer_start": start})
            qrels[split_of[name]].append((f"q:{function.doc_id}", name, 1))
    for split in qrels:
        rng.shuffle(qrels[split])
        qrels[split] = sorted(qrels[split][:max_queries])
    kept = {q for rows in qrels.values() for q, _, _ in rows}
    queries = [q for q in queries if q["_id"] in kept]
    text_of = {d["_id"]: d["text"] for d in corpus}
    document_of = {q: d for rows in qrels.values() for q, d, _ in rows}
    for query in queries:  # the promise of the task, checked on what is written
        before = text_of[document_of[query["_id"]]][:query["answer_start"]]
        assert len(token_starts(before)) >= LONG_ANSWER_START, f"{query['_id']}: answer before token {LONG_ANSWER_START}"
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(PROG, __doc__)
    parser.add_argument("--out", required=True, help="output folder (gets code_search/ and long_documents/)")
    parser.add_argument("--source", default=None, help="folder of Python sources [the standard library]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-queries", type=int, default=MAX_QUERIES, help=f"queries per scored split [{MAX_QUERIES}]")
    parser.add_argument("--max-train-pairs", type=int, default=MAX_TRAIN_PAIRS,
                        help=f"code-search training pairs [{MAX_TRAIN_PAIRS}]")
    parser.add_argument("--long-doc-words", type=int, default=LONG_DOC_WORDS,
                        help=f"long documents are cut at this many words [{LONG_DOC_WORDS}]")
    parser.add_argument("--tokenizer", default=None,
                        help="count token positions with this tokenizer folder [whitespace-separated words]")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def body() -> int:
        source = Path(args.source) if args.source else Path(sysconfig.get_paths()["stdlib"])
        if not source.is_dir():
            raise DataError(f"{source}: no such source folder")
        modules = read_modules(source, args.quiet)
        code = build_code_search(modules, args.seed, args.max_queries, args.max_train_pairs)
        long = build_long_documents(modules, args.seed, args.max_queries, args.long_doc_words,
                                    token_starts_function(args.tokenizer))
        empty = [f"{task} {split}" for task, built in (("code_search", code), ("long_documents", long))
                 for split, rows in built["qrels"].items() if not rows] + ([] if code["train"] else ["code_search train"])
        if empty:  # an empty split would be a qrels file the reader refuses
            raise DataError(f"{source}: too few documented functions or long modules: no queries for "
                            f"{', '.join(empty)}; give --source more Python files")
        inputs = [source] + ([args.tokenizer] if args.tokenizer else [])
        with atomic_output_dir(args.out, args.overwrite, inputs=inputs, tool=PROG) as tmp:
            _write_beir(tmp / "code_search", code["corpus"], code["queries"], code["qrels"])
            _write_jsonl(tmp / "code_search" / "train.jsonl", code["train"])
            _write_beir(tmp / "long_documents", long["corpus"], long["queries"], long["qrels"])
        print(f"{PROG}: code_search: {len(code['train'])} train pairs, {len(code['qrels']['dev'])} dev / "
              f"{len(code['qrels']['test'])} test queries over {len(code['corpus'])} functions; long_documents: "
              f"{len(long['qrels']['dev'])} dev / {len(long['qrels']['test'])} test queries over "
              f"{len(long['corpus'])} documents, answers past token {LONG_ANSWER_START} -> "
              f"{args.out}/code_search, {args.out}/long_documents")
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())
