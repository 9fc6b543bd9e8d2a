"""Tokenize documents into MDS shards (mosaicml-streaming) for pretraining.

    python data_prep/tokenize_to_mds.py --input demo_data/corpus --tokenizer demo_data/tokenizer \\
        --out demo_data/mds --max-seq-len 1024 [--workers 2] [--long-docs split|truncate] [--skip-bad]

Output (read it back with `streaming.LocalDataset(local=OUT, split="train")`):
- OUT/train and OUT/validation: MDS shards written by `streaming.MDSWriter`, one sample per
  (piece of a) document, single column `input_ids` of type `ndarray:uint16` (`ndarray:uint32` when
  the vocabulary does not fit in 16 bits). Every sample is `[CLS] tokens [SEP]`, at most
  --max-seq-len long. A split with no samples gets no folder.
- OUT/manifest.json: tokenizer, vocab size, the tokenizer's identity (hash of its vocabulary and special
  tokens, checked by training), dtype, max_seq_len and counts per split.

Rules:
- Splits: an input file named `train*` (or inside a folder `train/`) goes to train, one named
  `validation*`/`valid*`/`val*` (or inside `validation/`, `valid/`, `val/`) to validation; every
  other document goes to validation when hash(seed, document index) < --val-fraction, else train.
- Long documents (more than max_seq_len - 2 tokens) are split into consecutive pieces, each with its
  own [CLS]/[SEP] (`--long-docs split`, default), or truncated keeping [SEP] last (`truncate`).
- Empty (whitespace-only) documents are skipped and counted.
- Special-token strings inside the text ("[MASK]" in a document about BERT) are tokenized as plain
  text (`split_special_tokens=True`); only the framing [CLS]/[SEP] are special.
- --workers N tokenizes batches in N processes; results are consumed in input order, so the shards
  are byte-identical for every N.
- Bad input fails with `file:line: message` and exit code 2; with --skip-bad bad records are
  skipped, counted and the first few reported. Input formats: see `data_prep/_io.py`.
- OUT is built as `OUT.tmp-<pid>` and renamed at the end; an existing non-empty OUT is only
  replaced with --overwrite. OUT may not equal, contain or lie inside an input or the tokenizer folder.
- OUT may be `s3://BUCKET/PREFIX` (endpoint from S3_ENDPOINT_URL, credentials from AWS_*): the location is
  checked first, the output is built in a temporary folder and uploaded, each split's index.json after its
  shards and manifest.json last; a prefix that holds objects is only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from data_prep._io import (
    BadRecords,
    DataError,
    add_input_arguments,
    argument_parser,
    expand_inputs,
    folder_size,
    human_bytes,
    iter_documents,
    progress,
    run_main,
)
from data_prep._object_store import output_folder
from flexbert.tokenizer_identity import IDENTITY_KEY, tokenizer_identity

PROG = "tokenize_to_mds"
SPLITS = ("train", "validation")
BATCH_DOCS = 256  # documents per tokenization task
BATCH_CHARS = 1 << 20  # ...or fewer when they are long, to bound memory per task
_TRAIN_NAME = re.compile(r"^train([-_.\d]|$)")
_VALID_NAME = re.compile(r"^(validation|valid|val)([-_.\d]|$)")


# --------------------------------------------------------------------------------------------------
# Splits


def split_from_name(path: Path) -> Optional[str]:
    """'train' / 'validation' when the file (or its folder) is named for a split, else None."""
    for name in (path.name, path.parent.name):
        if _TRAIN_NAME.match(name):
            return "train"
        if _VALID_NAME.match(name):
            return "validation"
    return None


def hashed_split(doc_index: int, seed: int, val_fraction: float) -> str:
    """Deterministic split of an unnamed document: independent of batching and worker count."""
    digest = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "little") / 2**64 < val_fraction else "train"


# --------------------------------------------------------------------------------------------------
# Tokenizer and samples


def load_tokenizer(name_or_dir: str):
    """Load a fast Hugging Face tokenizer that has [CLS]/[SEP]; problems become DataError."""
    from flexbert.tokenizer_source import TokenizerSourceError, load_tokenizer

    try:
        tokenizer = load_tokenizer(name_or_dir)
    except TokenizerSourceError as err:
        raise DataError(str(err)) from None
    if not tokenizer.is_fast:
        raise DataError(f"tokenizer '{name_or_dir}' has no fast (Rust) version; tokenize_to_mds needs one")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise DataError(f"tokenizer '{name_or_dir}' has no cls_token/sep_token; samples are [CLS] text [SEP]")
    return tokenizer


def to_samples(ids: np.ndarray, cls_id: int, sep_id: int, max_seq_len: int, long_docs: str) -> List[np.ndarray]:
    """`[CLS] ids [SEP]` pieces of at most max_seq_len tokens: consecutive pieces, or one truncated."""
    inner = max_seq_len - 2  # room left by [CLS] and [SEP]
    starts = range(0, len(ids), inner) if long_docs == "split" else [0]
    cls, sep = np.array([cls_id], ids.dtype), np.array([sep_id], ids.dtype)
    return [np.concatenate([cls, ids[s : s + inner], sep]) for s in starts]


_WORKER_TOKENIZER = None  # the `tokenizers.Tokenizer` of this process (set by _init_encoder)


def _init_encoder(tokenizer_json: str, parallel: bool) -> None:
    global _WORKER_TOKENIZER
    if not parallel:
        # N pool processes each running a Rust thread pool would oversubscribe the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)
    _WORKER_TOKENIZER.no_truncation()
    _WORKER_TOKENIZER.no_padding()
    # A literal "[MASK]" or "[CLS]" in the data is text, not a control token (docs about BERT exist).
    _WORKER_TOKENIZER.encode_special_tokens = True


def _encode_batch(texts: List[str]) -> List[np.ndarray]:
    """Token ids of each text, without special tokens (they are added per piece)."""
    encodings = _WORKER_TOKENIZER.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]


def _start_pool_worker(init: Callable, *init_args) -> None:
    """A forked worker inherits the parent's signal handlers (Composer's, when it is imported): SIGTERM from
    `Pool.terminate` must end it even when it waits on the task queue's lock, and Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init(*init_args)


def ordered_map(
    fn: Callable, items: Iterable[Tuple[Any, Any]], workers: int, init: Callable, init_args: tuple
) -> Iterator[Tuple[Any, Any]]:
    """Yield (meta, fn(payload)) for (meta, payload) items, in input order, using `workers` processes.

    At most 4 tasks per worker are in flight, so memory stays bounded whatever the input size
    (Pool.imap would read the whole input ahead).
    """
    if workers <= 1:
        init(*init_args, True)
        for meta, payload in items:
            yield meta, fn(payload)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, _start_pool_worker, (init, *init_args, False)) as pool:
        pending: collections.deque = collections.deque()
        for meta, payload in items:
            pending.append((meta, pool.apply_async(fn, (payload,))))
            if len(pending) >= 4 * workers:
                meta_done, result = pending.popleft()
                yield meta_done, result.get()
        while pending:
            meta_done, result = pending.popleft()
            yield meta_done, result.get()
        pool.close()  # every task done: the workers end on their own; terminate (on errors) is the exception
        pool.join()


# --------------------------------------------------------------------------------------------------
# Main loop


@dataclass
class SplitCounts:
    documents: int = 0
    samples: int = 0
    tokens: int = 0  # including [CLS]/[SEP]
    long_documents: int = 0  # documents longer than max_seq_len (split or truncated)
    truncated_tokens: int = 0  # tokens dropped by --long-docs truncate


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argument_parser(PROG, __doc__)
    parser.add_argument("--input", nargs="+", required=True, help="files, folders or globs (.txt/.md/.rst/.jsonl/.parquet)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (train_tokenizer.py) or HF name")
    parser.add_argument("--out", required=True, help="output folder (gets train/, validation/, manifest.json), or "
                                                     "s3://BUCKET/PREFIX (built locally, then uploaded)")
    parser.add_argument("--max-seq-len", type=int, default=1024, help="max tokens per sample incl. [CLS]/[SEP] [1024]")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="validation share of unnamed inputs [0.05]")
    parser.add_argument("--long-docs", choices=("split", "truncate"), default="split", help="long documents [split]")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes [1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hashed split [0]")
    parser.add_argument("--compression", choices=("none", "zstd"), default="none", help="shard compression [none]")
    parser.add_argument("--shard-size-mb", type=int, default=64, help="max shard size in MB [64]")
    add_input_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.max_seq_len < 3:
        parser.error(f"--max-seq-len must be >= 3 ([CLS] + 1 token + [SEP]), got {args.max_seq_len}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if not 1 <= args.shard_size_mb < 4096:
        parser.error("--shard-size-mb must be in [1, 4095] (MDS stores offsets as uint32)")
    return args


def tokenize(args: argparse.Namespace, out_tmp: Path) -> Tuple[Dict[str, Any], BadRecords]:
    """Tokenize every input document into MDS shards under `out_tmp`; returns the manifest and bad records."""
    from streaming import MDSWriter

    files = expand_inputs(args.input)
    tokenizer = load_tokenizer(args.tokenizer)
    vocab_size = len(tokenizer)
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    bad = BadRecords(skip=args.skip_bad)
    counts = {split: SplitCounts() for split in SPLITS}
    empty = 0

    def batches() -> Iterator[Tuple[List[str], List[str]]]:
        nonlocal empty
        splits, texts, chars = [], [], 0
        for index, doc in enumerate(iter_documents(files, args.text_field, args.txt_doc, bad)):
            if not doc.text.strip():
                empty += 1
                continue
            splits.append(split_from_name(doc.path) or hashed_split(index, args.seed, args.val_fraction))
            texts.append(doc.text)
            chars += len(doc.text)
            if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield splits, texts
                splits, texts, chars = [], [], 0
        if texts:
            yield splits, texts

    writers: Dict[str, Any] = {}
    try:
        encoded = ordered_map(
            _encode_batch, batches(), args.workers, _init_encoder, (tokenizer.backend_tokenizer.to_str(),)
        )
        with progress("tokenizing", "doc", args.quiet) as bar:
            for splits, id_lists in encoded:
                for split, ids in zip(splits, id_lists):
                    if len(ids) == 0:  # whitespace some tokenizers drop entirely
                        empty += 1
                        continue
                    if split not in writers:  # created lazily: an empty split gets no folder
                        writers[split] = MDSWriter(
                            out=str(out_tmp / split),
                            columns={"input_ids": f"ndarray:{dtype}"},
                            compression=None if args.compression == "none" else args.compression,
                            size_limit=args.shard_size_mb << 20,
                        )
                    c = counts[split]
                    c.documents += 1
                    if len(ids) > args.max_seq_len - 2:
                        c.long_documents += 1
                        if args.long_docs == "truncate":
                            c.truncated_tokens += len(ids) - (args.max_seq_len - 2)
                    for sample in to_samples(ids, cls_id, sep_id, args.max_seq_len, args.long_docs):
                        writers[split].write({"input_ids": sample.astype(dtype)})
                        c.samples += 1
                        c.tokens += len(sample)
                bar.update(len(splits))
    except BaseException:
        # Stop the writers' threads; their (partial) output is deleted with the temporary folder.
        for writer in writers.values():
            with contextlib.suppress(Exception):
                writer.finish()
        raise
    for writer in writers.values():
        writer.finish()

    if not writers:
        raise DataError(f"no non-empty documents in {', '.join(map(str, files))}")
    tokenizer_ref = str(Path(args.tokenizer).resolve()) if Path(args.tokenizer).is_dir() else args.tokenizer
    return {
        "tokenizer": tokenizer_ref,
        "vocab_size": vocab_size,
        IDENTITY_KEY: tokenizer_identity(tokenizer),  # training refuses shards made with another tokenizer
        "column": "input_ids",
        "dtype": dtype,
        "max_seq_len": args.max_seq_len,
        "long_docs": args.long_docs,
        "special_token_ids": {
            "cls": cls_id,
            "sep": sep_id,
            "pad": tokenizer.pad_token_id,
            "mask": tokenizer.mask_token_id,
        },
        "splits": {split: asdict(c) for split, c in counts.items() if split in writers},
        "empty_documents": empty,
        "bad_records_skipped": bad.count,
        "split_rule": "file name (train*/validation*), else hash(seed, doc index) < val_fraction",
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "compression": args.compression,
        "inputs": [str(f) for f in files],
    }, bad


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        start = time.time()
        local_tokenizer = [args.tokenizer] if Path(args.tokenizer).expanduser().exists() else []
        with output_folder(args.out, args.overwrite, inputs=[*args.input, *local_tokenizer], tool=PROG) as tmp:
            manifest, bad = tokenize(args, tmp)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            size = folder_size(tmp)
        bad.print_examples(PROG)
        per_split = "; ".join(
            f"{split} {c['documents']:,} docs -> {c['samples']:,} samples / {c['tokens'] / 1e6:.2f}M tokens"
            for split, c in manifest["splits"].items()
        )
        missing = [s for s in SPLITS if s not in manifest["splits"]]
        print(
            f"{PROG}: {per_split}; {manifest['empty_documents']:,} empty, {bad.count:,} bad skipped; "
            f"{manifest['dtype']}, max_seq_len {args.max_seq_len}"
            + (f"; no {'/'.join(missing)} split" if missing else "")
            + f"; {human_bytes(size)} -> {args.out} in {time.time() - start:.1f}s"
        )
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())
