"""Document sources (random access to tokenized documents) and the per-rank epoch order.

Configured by the schema's `train_loader.dataset` (`local`, `remote`, `split`,
`streaming`, `shuffle`, `shuffle_seed`). Shards come from data_prep/: MDS, one column `input_ids`
(`ndarray:uint16|uint32`, each document `[CLS] ... [SEP]`) or a `text` column tokenized on the fly.

- `LocalMDSSource` (`streaming: false`): `streaming.LocalDataset` over DIR/split, validated on open so a
  missing folder, a compressed-only shard or a truncated shard fails with the file named.
- `StreamingMDSSource` (`streaming: true`): `streaming.StreamingDataset` (local cache + remote), used only
  for random access `dataset[i]` (it downloads a shard on first touch). An `s3://` remote is checked first
  (`remote.check_s3_location`: bucket, credentials, endpoint, the split's index.json), failing in seconds. Its own shuffle/partition is not
  used: both sources share `EpochOrder`, so resumption works the same way for both.
- `ArraySource`: documents held in memory (tests, benchmark).

Both MDS readers refuse, before any sample is decoded, a shard with a column whose encoding is not plain data
(`DATA_ENCODINGS`): `LocalDataset` decodes every column of a sample, and streaming's `pkl` unpickles it (runs
code); only `StreamingDataset` checks for that, and only for `pkl`.

Every source maps a global document id to a 1-D integer numpy array.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Protocol, Sequence

import numpy as np
from flexbert.data.remote import check_s3_location, join_key
from flexbert.errors import DataError

INDEX_FILE = "index.json"
# mosaicml-streaming's MDS encodings whose decoders only parse data: what data_prep writes (`ndarray:uint16|uint32`
# ids), the reference's `text` (`str`) and plain metadata columns. Not `pkl` (unpickles: runs code), not the image
# codecs (`pil`, `jpeg`, `png`, ...: bytes handed to an image library a text encoder never needs), nothing unknown.
DATA_ENCODINGS = ("bytes", "str", "int", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                  "float16", "float32", "float64", "str_int", "str_float", "str_decimal", "json", "ndarray")
DEFAULT_MAX_BLOCK = 1 << 20  # documents per shuffle block (8 MiB of ids per block permutation)


class DocumentSource(Protocol):
    def __len__(self) -> int: ...

    def get(self, doc_id: int) -> np.ndarray:
        """Tokens of document `doc_id`: (n,) integer array, [CLS] ... [SEP]."""
        ...


class ArraySource:
    """Documents held in memory."""

    def __init__(self, docs: Sequence[np.ndarray]):
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def get(self, doc_id: int) -> np.ndarray:
        return self.docs[doc_id]


class _SampleDecoder:
    """An MDS sample dict -> tokens: the `input_ids` column, or `text` tokenized with [CLS]/[SEP] added."""

    def __init__(self, columns: list[str], where: str, tokenizer=None):
        if "input_ids" in columns:
            self.column = "input_ids"
        elif "text" in columns:
            if tokenizer is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
                raise ValueError(f"{where} has a `text` column: a tokenizer with [CLS] and [SEP] tokens is "
                                 f"needed to tokenize it on the fly")
            self.column = "text"
        else:
            raise ValueError(f"{where} has columns {columns}; expected `input_ids` (token ids) or `text`")
        self.tokenizer = tokenizer

    def __call__(self, sample: dict) -> np.ndarray:
        value = sample[self.column]
        if self.column == "input_ids":
            return np.asarray(value)
        tok = self.tokenizer
        ids = tok(value, add_special_tokens=False)["input_ids"]
        return np.asarray([tok.cls_token_id, *ids, tok.sep_token_id], dtype=np.int64)


def check_column_encodings(shard: str, names: Sequence[str], encodings: Sequence[str]) -> None:
    """Refuse a shard with a column whose encoding is not one of `DATA_ENCODINGS` (`ndarray` with any dtype/shape)."""
    for name, encoding in zip(names, encodings):
        kind, _, options = str(encoding).partition(":")
        if kind in DATA_ENCODINGS and (not options or kind == "ndarray"):
            continue
        why = "unpickles every value (runs code from the file)" if kind == "pkl" else "is not a plain data encoding"
        raise DataError(f"MDS shard '{shard}': column '{name}' has encoding '{encoding}', which {why}; refusing to "
                        f"read it. Rewrite the shards with data_prep/tokenize_to_mds.py (or with only the data "
                        f"encodings {', '.join(DATA_ENCODINGS)})")


def local_size(local: str | None, split: str | None) -> int | None:
    """Documents in a local MDS split, summed from its index.json (None: no readable index there)."""
    if not local:
        return None
    try:
        with open(os.path.join(local, split or "", INDEX_FILE)) as f:
            return sum(int(shard["samples"]) for shard in json.load(f)["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _split_dir(local: str, split: str | None) -> str:
    """DIR/split holding index.json, or a FileNotFoundError naming the path and what exists."""
    if not os.path.isdir(local):
        parent = os.path.dirname(os.path.abspath(local))
        raise FileNotFoundError(f"dataset folder '{local}' (dataset.local) does not exist"
                                + (f"; '{parent}' holds {sorted(os.listdir(parent))}" if os.path.isdir(parent) else ""))
    path = os.path.join(local, split or "")
    if not os.path.isfile(os.path.join(path, INDEX_FILE)):
        splits = sorted(d for d in os.listdir(local) if os.path.isfile(os.path.join(local, d, INDEX_FILE)))
        raise FileNotFoundError(
            f"no MDS split '{split}' in '{local}': '{os.path.join(path, INDEX_FILE)}' not found; "
            f"splits there: {splits or 'none'} (folder holds {sorted(os.listdir(local))[:20]})"
        )
    return path


def _check_shards(path: str) -> list[str]:
    """Validate every shard named in path/index.json; return the column names."""
    index_path = os.path.join(path, INDEX_FILE)
    try:
        with open(index_path) as f:
            shards = json.load(f)["shards"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"'{index_path}' is not a valid MDS index ({e})") from None
    if not shards:
        raise ValueError(f"'{index_path}' lists no shards")
    for info in shards:
        if info.get("format") != "mds":
            raise ValueError(f"'{index_path}': shard format {info.get('format')!r}, expected 'mds'")
        raw = os.path.join(path, info["raw_data"]["basename"])
        check_column_encodings(raw, info.get("column_names", []), info.get("column_encodings", []))
        if not os.path.isfile(raw):
            zipped = info.get("zip_data") and os.path.join(path, info["zip_data"]["basename"])
            hint = (f"only the compressed '{zipped}' exists: use dataset.streaming: true (it decompresses)"
                    if zipped and os.path.isfile(zipped) else "re-run data preparation")
            raise FileNotFoundError(f"MDS shard '{raw}' listed in '{index_path}' is missing; {hint}")
        size, expected = os.path.getsize(raw), info["raw_data"]["bytes"]
        with open(raw, "rb") as f:
            header = np.frombuffer(f.read(4), np.uint32)
        if size != expected or header.size != 1 or int(header[0]) != info["samples"]:
            raise DataError(f"MDS shard '{raw}' is truncated or corrupted: {size} bytes "
                             f"(index.json says {expected}), header sample count "
                             f"{int(header[0]) if header.size else 'missing'} (index.json says {info['samples']})")
    return list(shards[0]["column_names"])


class LocalMDSSource:
    """Random access over local MDS shards (dataset.streaming: false)."""

    def __init__(self, local: str, split: str | None, tokenizer=None):
        from streaming import LocalDataset

        path = _split_dir(local, split)
        self.where = path
        self.decode = _SampleDecoder(_check_shards(path), f"MDS split '{path}'", tokenizer)
        self.dataset = LocalDataset(local, split)

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, doc_id: int) -> np.ndarray:
        try:
            return self.decode(self.dataset.get_item(doc_id))
        except Exception as e:
            shard_id, in_shard = self.dataset.spanner[doc_id]
            shard = os.path.join(self.where, self.dataset.shards[shard_id].raw_data.basename)
            raise DataError(f"cannot read document {doc_id} (sample {in_shard} of MDS shard '{shard}'): "
                             f"{type(e).__name__}: {e}; the shard may be corrupted") from e


class StreamingMDSSource:
    """Random access through streaming.StreamingDataset (dataset.streaming: true; local cache + remote)."""

    def __init__(self, local: str, remote: str | None, split: str | None, tokenizer=None, **streaming_kwargs):
        from streaming import StreamingDataset

        if remote is None:  # purely local: fail early with the same clear messages as LocalMDSSource
            _check_shards(_split_dir(local, split))
        elif urllib.parse.urlparse(remote).scheme == "s3":  # streaming would retry a bad bucket for minutes
            check_s3_location(remote, required=join_key(split or "", INDEX_FILE))
        self.where = f"{remote or local}/{split or ''}"
        try:
            self.dataset = StreamingDataset(local=local, remote=remote, split=split, shuffle=False, **streaming_kwargs)
        except FileExistsError as err:  # its per-host shared memory, taken by another node on this host
            from flexbert.data.streaming_nodes import shared_memory_clash

            raise shared_memory_clash(err, self.where) from None
        except ValueError as err:  # streaming's own `pkl` refusal names neither the shard nor a fix that applies here
            if "unsafe type" not in str(err):
                raise
            raise DataError(f"MDS split '{self.where}': {err}".split(" To proceed")[0] + "; refusing to read it "
                            "(it would unpickle: run code). Rewrite the shards with data_prep/tokenize_to_mds.py") from None
        for shard in self.dataset.shards:  # the index files of a remote split arrive only now
            check_column_encodings(f"{self.where}/{shard.raw_data.basename}", getattr(shard, "column_names", []),
                                   getattr(shard, "column_encodings", []))
        self.decode = _SampleDecoder(list(self.dataset.shards[0].column_names), f"MDS split '{self.where}'",
                                     tokenizer)

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, doc_id: int) -> np.ndarray:
        try:
            return self.decode(self.dataset[doc_id])
        except Exception as e:
            shard_id, in_shard = self.dataset.spanner[doc_id]
            name = self.dataset.shards[shard_id].raw_data.basename
            raise DataError(f"cannot read document {doc_id} (sample {in_shard} of MDS shard "
                             f"'{self.where}/{name}'): {type(e).__name__}: {e}") from e


def open_source(local: str, remote: str | None, split: str | None, *, streaming: bool, tokenizer=None,
                streaming_kwargs: dict | None = None):
    if streaming:
        return StreamingMDSSource(local, remote, split, tokenizer, **(streaming_kwargs or {}))
    if remote is not None:
        raise ValueError(f"dataset.remote='{remote}' needs dataset.streaming: true (the local reader reads "
                         f"only '{local}')")
    return LocalMDSSource(local, split, tokenizer)


class EpochOrder:
    """The document ids rank `rank` reads in epoch `epoch`, in order; random access by position.

    Ids are cut into nb = world_size * ceil(N / (world_size * max_block)) blocks of consecutive ids,
    of near-equal sizes (block k = [k*N//nb, (k+1)*N//nb)). With shuffle, the block order is permuted
    by (seed, epoch) and each block is permuted by (seed, epoch, block); unshuffled, blocks keep their
    order. Blocks are dealt round-robin to ranks, so ranks are disjoint, hold the same number of blocks
    (document counts differ by at most nb / world_size), and together read every document exactly once
    per epoch. Blocks keep reads local to a few consecutive shards (friendly to StreamingDataset's
    cache) while needing one block permutation in memory; any position is reachable without replay.
    """

    def __init__(self, num_docs: int, *, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
                 max_block: int = DEFAULT_MAX_BLOCK):
        if num_docs < world_size:
            raise ValueError(f"the dataset has {num_docs} documents, fewer than the {world_size} ranks reading it")
        if seed < 0 or epoch < 0:
            raise ValueError(f"shuffle_seed and epoch must be >= 0, got {seed}, {epoch}")
        self.num_docs, self.epoch, self.seed, self.shuffle = num_docs, epoch, seed, shuffle
        num_blocks = world_size * -(-num_docs // (world_size * max_block))
        self.bounds = np.arange(num_blocks + 1, dtype=np.int64) * num_docs // num_blocks  # (nb+1,)
        blocks = np.arange(num_blocks)
        if shuffle:
            blocks = np.random.default_rng([seed, epoch]).permutation(blocks)
        self.blocks = blocks[rank::world_size]  # (b,) this rank's blocks in reading order
        sizes = self.bounds[self.blocks + 1] - self.bounds[self.blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes)])  # (b+1,) first position of each block
        self._cached = (-1, None)  # (block slot, ids of that block in reading order)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _block_ids(self, slot: int) -> np.ndarray:
        if self._cached[0] != slot:
            b = int(self.blocks[slot])
            ids = np.arange(self.bounds[b], self.bounds[b + 1])
            if self.shuffle:
                ids = np.random.default_rng([self.seed, self.epoch, b]).permutation(ids)
            self._cached = (slot, ids)
        return self._cached[1]

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} outside this rank's epoch of {len(self)} documents")
        slot = int(np.searchsorted(self.starts, position, side="right")) - 1
        return int(self._block_ids(slot)[position - self.starts[slot]])
