"""The resumable packed MLM loader, its typed config, its Composer DataSpec and checkpoint callback.

Configured by the schema's `train_loader` / `eval_loader` sections.

`PackedLoader` is an iterable of device batches (see packing.py for the format): documents in
`EpochOrder` -> `BestFitPacker` rows -> MLM masking per row -> R rows per step (R from `BatchSizeWarmup`).
- Training loaders are endless: epochs roll over inside (each reshuffled, rows never span epochs), so
  Composer durations must be in `tok`/`ba`/`sp`. Eval loaders make one deterministic pass per iter().
- State (`state_dict()`) is taken right after the last batch handed to the consumer, never what the
  prefetch thread has read ahead: epoch, cursor into this rank's order (+ offset inside a long
  document), the segments (doc id, start, end) of the rows still open in the packer and of rows packed
  but not yet batched, row/batch/token counters. `load_state_dict` rebuilds those rows by random access,
  so the next batch is exactly the one that would have come next; nothing is replayed.
- `num_workers > 0` runs reading/packing/masking in ONE background thread holding up to
  max(2, num_workers) batches; any exception there is re-raised in the consumer (no hang). No worker
  processes: the work is numpy-heavy (the GIL is released) and one producer keeps the state exact.
- Composer saves dataset state only for torch DataLoaders: `LoaderStateCallback` puts the loader
  state of every rank into the checkpoint (rank 0 writes it) and gives each rank its own back. A checkpoint
  of another world size resumes elastically (elastic.py): the state then also holds the pieces to repack
  (`pending`), the resized epochs' remainder levels (`remainders`) and the global counts before the resize
  (`before_resize`).
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import numpy as np
from composer.core import Callback, DataSpec

from flexbert.data.elastic import TO_DOCUMENT_END, remainder_order, resize_states
from flexbert.data.masking import EVAL_MLM_PROBABILITY, MaskingSpec, default_mlm_probability, mask_row, row_rng
from flexbert.data.mixture import StreamConfig, check_weights, open_mixture, parse_epoch_size
from flexbert.data.packing import (BestFitPacker, Row, SlotPacker, assemble_row, collate_rows, count_rows,
                                   count_tokens, split_packed_batch)
from flexbert.data.seq_len_warmup import SeqLenWarmup
from flexbert.data.sources import DEFAULT_MAX_BLOCK, EpochOrder, open_source
from flexbert.data.warmup import BatchSizeWarmup
from flexbert import schema
from flexbert.registry import Registry, closest

DATA_LOADERS: Registry = Registry("data loader", "train_loader.name")
STATE_VERSION = 1
SPECIAL_TOKEN_ROLES = ("bos", "eos", "sep", "pad", "mask")


# ----------------------------------------------------------------------------------------- config
@dataclass
class DatasetConfig:
    """`train_loader.dataset` / `eval_loader.dataset`."""

    local: Optional[str] = schema.field(None, doc="local MDS folder (the cache folder when streaming); default: "
                                                  "top-level data_local; required unless every stream has its own")
    remote: Optional[str] = schema.field(None, doc="object-store URI to stream from; default: top-level data_remote")
    split: Optional[str] = schema.field(None, doc="sub-folder of local (default: train / validation)")
    tokenizer_name: Optional[str] = schema.field(None, doc="informational: the run's tokenizer is used")
    max_seq_len: Optional[int] = schema.field(None, doc="must equal the top-level max_seq_len if given")
    shuffle: bool = schema.field(False, doc="shuffle documents each epoch")
    shuffle_seed: int = schema.field(9176, doc="seed of the document order")
    shuffle_block_size: Optional[int] = schema.field(None, doc="documents per shuffle block (default 1M)")
    mlm_probability: Optional[float] = schema.field(None, doc=f"mask rate (default: top-level mlm_probability for "
                                                              f"training, {EVAL_MLM_PROBABILITY} for evaluation)")
    streaming: bool = schema.field(True, doc="read through StreamingDataset (needed for remote object stores); "
                                             "false: read the local shards directly (same documents)")
    # StreamingDataset settings, used when streaming
    predownload: Optional[int] = schema.field(None, doc="streaming: samples to download ahead")
    download_retry: int = schema.field(2, doc="streaming: download attempts per shard")
    download_timeout: float = schema.field(60.0, doc="streaming: seconds per shard download")
    validate_hash: Optional[str] = schema.field(None, doc="streaming: hash algorithm to check shards with")
    keep_zip: bool = schema.field(False, doc="streaming: keep compressed shards after decompressing")
    cache_limit: Optional[Union[int, str]] = schema.field(None, doc="streaming: local cache size limit")
    # StreamingDataset's own partitioning and shuffling: documents are ordered here instead (see EpochOrder)
    num_canonical_nodes: Optional[int] = schema.field(None, doc="no effect: the document order is this loader's")
    partition_algo: Optional[str] = schema.field(None, doc="no effect: the document order is this loader's")
    shuffle_algo: Optional[str] = schema.field(None, doc="no effect: the document order is this loader's")
    streams: Optional[dict[str, StreamConfig]] = schema.field(None, doc="a mixture: stream name -> section; "
                                                                        "local / remote / split default to the "
                                                                        "dataset's")
    epoch_size: Optional[Union[int, str]] = schema.field(None, doc="samples per epoch of the mixture (e.g. 10M), "
                                                                   "shared out by proportion (default: every "
                                                                   "document once)")
    # not supported: a value other than null is an error
    group_method: Optional[str] = schema.field(None, doc="not supported")

    def _check_streams(self) -> None:
        parse_epoch_size(self.epoch_size, "epoch_size")
        if self.streams is None:
            if self.local is None:
                raise schema.ConfigError("`local` is required: local MDS folder (set data_local, dataset.local, or "
                                         "dataset.streams)")
            return
        if not self.streams:
            raise schema.ConfigError("`streams` is empty: name at least one stream (or remove the key)")
        for name, stream in self.streams.items():
            if not (stream.local or stream.remote or self.local or self.remote):
                raise schema.ConfigError(f"`streams.{name}` has neither `local` nor `remote` (nor has the dataset "
                                         f"a default): set streams.{name}.local to its MDS folder")
        check_weights(self.streams, parse_epoch_size(self.epoch_size, "epoch_size"), "streams")

    def streaming_kwargs(self) -> dict[str, Any]:
        """The StreamingDataset settings this section sets."""
        out = {"download_retry": self.download_retry, "download_timeout": self.download_timeout,
               "keep_zip": self.keep_zip}
        for key in ("predownload", "validate_hash", "cache_limit"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def __post_init__(self):
        if self.group_method is not None:
            raise schema.ConfigError("`group_method` is not supported here (documents are packed, not grouped); "
                                     "remove it")
        self._check_streams()
        moot = [k for k in ("num_canonical_nodes", "partition_algo", "shuffle_algo") if getattr(self, k) is not None]
        if not self.streaming:
            moot += [k for k in ("predownload", "validate_hash", "cache_limit") if getattr(self, k) is not None]
        if moot:
            warnings.warn(f"dataset keys without effect here: {', '.join(moot)} (the document order and sharding "
                          f"across ranks are this loader's own; streaming settings apply only with streaming: true)")
        if self.shuffle_seed < 0:
            raise schema.ConfigError(f"`shuffle_seed` must be >= 0, got {self.shuffle_seed}")
        if self.mlm_probability is not None and not 0.0 <= self.mlm_probability < 1.0:
            raise schema.ConfigError(f"`mlm_probability` must be in [0, 1), got {self.mlm_probability}")


@dataclass
class LoaderConfig:
    """`train_loader` / `eval_loader`."""

    dataset: DatasetConfig = schema.field(doc="where the documents come from")
    name: str = schema.field("text", doc="loader (`python -m flexbert.list_registries`)")
    drop_last: bool = schema.field(True, doc="eval pass only: drop a last batch with fewer rows (training never ends)")
    num_workers: int = schema.field(0, doc="0: produce inline; > 0: one prefetch thread holding max(2, n) batches")
    sequence_packing: bool = schema.field(False, doc="pack several documents per sequence slot row (best fit); "
                                                     "false: one document per slot, padded")
    split_long_documents: bool = schema.field(False, doc="documents longer than max_seq_len continue in the next "
                                                         "slots (true) or are truncated (false)")
    batch_size_warmup_min_size: Optional[int] = schema.field(None, doc="batch-size warmup: first batch, sequences per "
                                                                       "device (packed loaders only)")
    batch_size_warmup_tokens: Optional[Union[int, str]] = schema.field(None, doc="batch-size warmup length, e.g. "
                                                                                 "50_000_000_000tok (packed loaders only)")
    # Special-token ids for tokenizers that lack a role (Gemma has no mask token); the run's tokenizer takes them.
    bos_token_id: Optional[int] = schema.field(None, doc="id of the beginning-of-sequence token (also [CLS]'s role "
                                                         "when the tokenizer has no cls token); default: the tokenizer's")
    eos_token_id: Optional[int] = schema.field(None, doc="id of the end-of-sequence token; default: the tokenizer's")
    sep_token_id: Optional[int] = schema.field(None, doc="id of the separator ([SEP]) token; default: the tokenizer's")
    pad_token_id: Optional[int] = schema.field(None, doc="id of the padding token; default: the tokenizer's")
    mask_token_id: Optional[int] = schema.field(None, doc="id written at masked positions; default: the tokenizer's")
    # torch DataLoader settings: this loader has no worker processes (one prefetch thread), so they do nothing
    pin_memory: Optional[bool] = schema.field(None, doc="no effect: no worker processes")
    prefetch_factor: Optional[int] = schema.field(None, doc="no effect: the prefetch thread holds max(2, num_workers) batches")
    persistent_workers: Optional[bool] = schema.field(None, doc="no effect: no worker processes")
    timeout: Optional[float] = schema.field(None, doc="no effect: no worker processes")

    def __post_init__(self):
        moot = [k for k in ("pin_memory", "prefetch_factor", "persistent_workers", "timeout") if getattr(self, k) is not None]
        if self.sequence_packing and self.dataset.streaming:
            warnings.warn("sequence_packing: true has no effect with dataset.streaming: true (as in the reference, "
                          "which packs local shards only): batches are padded; set dataset.streaming: false to pack")
        if not self.packs and (self.batch_size_warmup_min_size is not None or self.batch_size_warmup_tokens is not None):
            warnings.warn("loader keys without effect here: batch_size_warmup_min_size, batch_size_warmup_tokens (the "
                          "batch-size warmup is part of sequence packing, as in the reference)")
        if moot:
            warnings.warn(f"loader keys without effect here: {', '.join(moot)} (no DataLoader worker processes: one "
                          f"prefetch thread, sized by num_workers)")
        DATA_LOADERS.get(self.name)
        if self.num_workers < 0:
            raise schema.ConfigError(f"`num_workers` must be >= 0, got {self.num_workers}")

    @property
    def packs(self) -> bool:
        """Documents are packed (best fit) and the batch-size warmup applies: the reference does both only for
        local shards (`streaming: false`)."""
        return self.sequence_packing and not self.dataset.streaming

    def special_token_ids(self) -> dict[str, int]:
        """The special-token roles this section sets: role (`mask_token`, ...) -> id."""
        return {f"{role}_token": getattr(self, f"{role}_token_id") for role in SPECIAL_TOKEN_ROLES
                if getattr(self, f"{role}_token_id") is not None}

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "train_loader") -> "LoaderConfig":
        return read_loader_config(data, where)


def read_loader_config(data: Any, where: str) -> LoaderConfig:
    """A loader section from YAML; errors name `where.key`."""
    if isinstance(data, LoaderConfig):
        return data
    try:
        return schema.read_section(LoaderConfig, data, where)
    except KeyError as err:  # unknown loader name from the registry
        raise schema.ConfigError(f"{err.args[0]}") from None


@dataclass(frozen=True)
class LoaderSettings:
    """Everything a PackedLoader needs besides the source and the masking spec."""

    max_seq_len: int
    microbatch_size: int  # sequence slots per packed row
    warmup: BatchSizeWarmup  # rows per step (its full_rows is the full device batch in rows)
    seed: int  # masking seed
    pad_token_id: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    shuffle_seed: int = 9176
    shuffle_block_size: int = DEFAULT_MAX_BLOCK
    endless: bool = True  # training: epochs roll over; eval: one pass per iter()
    drop_last: bool = False
    sequence_packing: bool = True
    split_long_documents: bool = True  # False: a document longer than max_seq_len keeps only its first piece
    count_padding_tokens: bool = False
    prefetch: int = 0  # batches held by the background thread; 0 = no thread
    max_open_rows: int = 8
    seq_len_warmup: Optional[SeqLenWarmup] = None  # training only: sequences grow to max_seq_len

    def __post_init__(self):
        if self.seed < 0 or self.max_seq_len <= 0 or self.microbatch_size <= 0:
            raise ValueError(f"seed must be >= 0 and max_seq_len, microbatch_size > 0; got seed={self.seed}, "
                             f"max_seq_len={self.max_seq_len}, microbatch_size={self.microbatch_size}")

    @property
    def row_len(self) -> int:
        return self.microbatch_size * self.max_seq_len

    def fingerprint(self, num_docs: int) -> dict:
        """What a saved state must agree on to be resumable here."""
        out = {"num_docs": num_docs, "max_seq_len": self.max_seq_len, "row_len": self.row_len,
               "rank": self.rank, "world_size": self.world_size, "shuffle": self.shuffle,
               "shuffle_seed": self.shuffle_seed, "shuffle_block_size": self.shuffle_block_size,
               "sequence_packing": self.sequence_packing, "max_open_rows": self.max_open_rows}
        if self.seq_len_warmup is not None:  # saved rows hold pieces cut by this schedule
            out["seq_len_warmup"] = self.seq_len_warmup.fingerprint()
        return out


def epoch_order(source, s: LoaderSettings, epoch: int):
    """Rank s.rank's global document ids of `epoch`: `EpochOrder` over the documents, or, for a mixture (a source
    with `.mixture`), over the epoch's samples read through the mixture's layout."""
    mixture = getattr(source, "mixture", None)
    order = EpochOrder(len(source) if mixture is None else mixture.epoch_size, epoch=epoch, seed=s.shuffle_seed,
                       shuffle=s.shuffle, rank=s.rank, world_size=s.world_size, max_block=s.shuffle_block_size)
    return order if mixture is None else mixture.order(order, epoch)


def data_fingerprint(source, s: LoaderSettings) -> dict:
    """What a saved state must agree on: the settings' fingerprint, and a mixture's streams and counts."""
    out = s.fingerprint(len(source))
    if getattr(source, "mixture", None) is not None:
        out["mixture"] = source.mixture.fingerprint()
    return out


# ---------------------------------------------------------------------------------------- producer
def _flat(segments) -> list[int]:
    return list(itertools.chain.from_iterable(segments))


class _Producer:
    """Single-threaded state machine: state -> batches. Owned by one thread at a time."""

    def __init__(self, source, masking: MaskingSpec, s: LoaderSettings, state: dict):
        self.source, self.masking, self.s = source, masking, s
        for key in ("epoch", "cursor", "piece", "rows_in_epoch", "batches", "tokens", "real_tokens", "slots",
                    "exhausted"):
            setattr(self, key, state[key])
        self.rows = state.get("rows", self.slots // s.row_len)  # states saved before the counter: full rows only
        # After a resume with another world size (see elastic.py): pieces to repack first, the epochs whose order is
        # a remainder, and the global counts handed out before the resize.
        self.pending = [list(p) for p in state.get("pending", [])]
        self.remainders = dict(state.get("remainders", {}))
        self.before_resize = dict(state.get("before_resize", {}))
        self.order = self._epoch_order(self.epoch)
        self._doc: tuple[int, np.ndarray | None] = (-1, None)
        # The sequence length of the next batch, and the row length it implies. Saved rows are rebuilt at this
        # length, which is what an uninterrupted run has grown them to by the start of the next batch.
        self.seq_len = self._seq_len_now()
        self.row_len = s.microbatch_size * self.seq_len
        self.packer = (BestFitPacker(self.row_len, s.max_open_rows) if s.sequence_packing
                       else SlotPacker(self.row_len, s.microbatch_size))
        self.packer.open = [self._rebuild(flat) for flat in state["open_rows"]]
        self.ready: list[tuple[int, int, Row]] = [(e, i, self._rebuild(flat)) for e, i, flat in state["ready_rows"]]

    def _seq_len_now(self) -> int:
        warmup = self.s.seq_len_warmup
        if warmup is None:
            return self.s.max_seq_len
        clock = {"ba": self.batches, "sp": self._global("rows") * self.s.microbatch_size,
                 "tok": self._global("tokens")}[warmup.unit]
        return warmup.length_at(clock)  # capped at the run's max_seq_len by the schedule

    def _global(self, counter: str) -> int:
        """A counter over all ranks: this rank's count x world size, plus what was handed out before a resize."""
        return self.before_resize.get(counter, 0) + getattr(self, counter) * self.s.world_size

    def _order(self, epoch: int, rank: int | None = None, world_size: int | None = None):
        """The global document ids rank `rank` of `world_size` (default: this rank's) reads in `epoch`, in reading
        order (random access)."""
        s = self.s if rank is None else dataclasses.replace(self.s, rank=rank, world_size=world_size)
        return epoch_order(self.source, s, epoch)

    def _epoch_order(self, epoch: int):
        """This rank's order in `epoch`: its share of the remainder in an epoch resized by an elastic resume."""
        levels = self.remainders.get(epoch)
        if levels is None:
            return self._order(epoch)
        return remainder_order(levels, self.s.rank, lambda rank, world_size: self._order(epoch, rank, world_size))

    def _limit(self, tokens: np.ndarray) -> int:
        """Where reading a document stops: its end, or its first piece unless split_long_documents."""
        return len(tokens) if self.s.split_long_documents else min(len(tokens), self.s.max_seq_len)

    def _read(self, doc_id: int) -> np.ndarray:
        if self._doc[0] != doc_id:
            tokens = self.source.get(doc_id)
            if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
                raise ValueError(f"document {doc_id}: expected a 1-D integer token array, got "
                                 f"{tokens.dtype} {tokens.shape}")
            self._doc = (doc_id, tokens)
        return self._doc[1]

    def _rebuild(self, flat: list[int]) -> Row:
        row = Row(self.row_len)
        for doc_id, start, end in zip(flat[0::3], flat[1::3], flat[2::3]):
            row.append((doc_id, start, end), self._read(doc_id)[start:end])
        return row

    def _emit(self, rows: list[Row]) -> None:
        for row in rows:
            self.ready.append((self.epoch, self.rows_in_epoch, row))
            self.rows_in_epoch += 1

    def _step(self) -> None:
        """Feed one document piece to the packer, or close the epoch."""
        if self.pending and self.pending[0][0] == self.epoch:  # pieces an elastic resume put back: repacked first
            epoch, doc_id, start, end = self.pending[0]
            tokens = self._read(doc_id)
            limit = self._limit(tokens) if end == TO_DOCUMENT_END else end
            nxt = self._feed(doc_id, tokens, start, limit)
            if nxt >= limit:
                self.pending.pop(0)
            else:
                self.pending[0] = [epoch, doc_id, nxt, end]
            return
        if self.cursor >= len(self.order):
            self._emit(self.packer.flush())
            if self.rows_in_epoch == 0 and self.epoch not in self.remainders:  # a remainder's share may be empty
                raise ValueError(f"epoch {self.epoch} of rank {self.s.rank} produced no tokens: are all "
                                 f"{len(self.order)} of its documents empty?")
            if not self.s.endless:
                self.exhausted = True
                return
            self.epoch, self.cursor, self.piece, self.rows_in_epoch = self.epoch + 1, 0, 0, 0
            self.order = self._epoch_order(self.epoch)
            return
        doc_id = self.order[self.cursor]
        tokens = self._read(doc_id)
        limit = self._limit(tokens)
        nxt = self._feed(doc_id, tokens, self.piece, limit)
        if nxt >= limit:
            self.cursor, self.piece = self.cursor + 1, 0
        else:
            self.piece = nxt

    def _feed(self, doc_id: int, tokens: np.ndarray, start: int, limit: int) -> int:
        """Pack the next piece of a document from `start`; return where the one after it starts."""
        # The document is read in max_seq_len pieces (only the first one unless split_long_documents). During a
        # sequence-length warmup a sequence holds at most seq_len tokens of a piece: with truncate the rest of the
        # piece is dropped, without it the document continues in seq_len chunks.
        piece_end = min(start + self.s.max_seq_len, limit)
        truncate = self.s.seq_len_warmup is None or self.s.seq_len_warmup.truncate
        end = min(start + self.seq_len, piece_end if truncate else limit)
        if end > start:  # empty documents are skipped
            self._emit(self.packer.add((doc_id, start, end), tokens[start:end]))
        return piece_end if truncate else end

    def next_batch(self) -> tuple[dict, dict] | None:
        """(batch, state right after it), or None when an eval pass is over."""
        # The warmup clock is the global slot count, not this rank's token count (which depends on the documents
        # it happened to read): every rank takes the same number of rows at every step, so `slots` is the same on
        # every rank and so is every decision -- without any communication, resumably (slots are in the state).
        seq_len = self._seq_len_now()
        if seq_len != self.seq_len:  # the warmup only grows: rows packed so far get the extra room
            self.seq_len, self.row_len = seq_len, self.s.microbatch_size * seq_len
            self.packer.resize(self.row_len)
        want = self.s.warmup.rows_at(self._global("slots"))
        while len(self.ready) < want and not self.exhausted:
            self._step()
        if not self.ready or (len(self.ready) < want and self.s.drop_last):
            return None
        taken, self.ready = self.ready[:want], self.ready[want:]
        rows = []
        for epoch, index, row in taken:
            r = assemble_row(row.arrays, self.row_len, self.s.pad_token_id)
            # a resized epoch's rows draw streams of their own level (see elastic.py): row indices restart there
            level = len(self.remainders[epoch]) - 1 if epoch in self.remainders else 0
            rng = row_rng(self.s.seed, epoch, index * self.s.world_size + self.s.rank, level)
            r["input_ids"], r["labels"] = mask_row(r["input_ids"], self.masking, rng)
            rows.append(r)
        real, slots = sum(r["num_tokens"] for r in rows), len(rows) * self.row_len
        self.tokens += slots if self.s.count_padding_tokens else real
        self.real_tokens, self.slots, self.batches = self.real_tokens + real, self.slots + slots, self.batches + 1
        self.rows += len(rows)
        return collate_rows(rows), self.snapshot()

    def snapshot(self) -> dict:
        oldest = min([self.epoch] + [e for e, _, _ in self.ready])  # older resized epochs are done with
        return {
            "version": STATE_VERSION, "fingerprint": data_fingerprint(self.source, self.s),
            "epoch": self.epoch, "cursor": self.cursor, "piece": self.piece, "rows_in_epoch": self.rows_in_epoch,
            # the document a long-document split is in the middle of: an elastic resume repacks its tail
            "piece_doc": self.order[self.cursor] if self.piece else None,
            "batches": self.batches, "tokens": self.tokens, "real_tokens": self.real_tokens, "slots": self.slots,
            "rows": self.rows, "exhausted": self.exhausted,
            "open_rows": [_flat(row.segments) for row in self.packer.open],
            "ready_rows": [(e, i, _flat(row.segments)) for e, i, row in self.ready],
            "pending": [list(p) for p in self.pending],
            "remainders": {e: levels for e, levels in self.remainders.items() if e >= oldest},
            "before_resize": dict(self.before_resize),
        }


def _initial_state(fingerprint: dict) -> dict:
    return {"version": STATE_VERSION, "fingerprint": fingerprint, "epoch": 0, "cursor": 0, "piece": 0,
            "rows_in_epoch": 0, "batches": 0, "tokens": 0, "real_tokens": 0, "slots": 0, "rows": 0,
            "exhausted": False,
            "open_rows": [], "ready_rows": []}


class _Prefetcher:
    """Runs `produce()` in a daemon thread; results and exceptions travel through one bounded queue."""

    def __init__(self, produce: Callable[[], Any], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True, name="flexbert-data")
        self._thread.start()

    def _run(self, produce) -> None:
        try:
            while not self._stop.is_set():
                item = produce()
                self._put(("item", item))
                if item is None:
                    return
        except BaseException as e:  # noqa: BLE001 -- every failure must reach the consumer
            self._put(("error", e))

    def _put(self, message) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self):
        while True:
            try:
                kind, value = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive():  # cannot happen unless the interpreter is shutting down
                    raise RuntimeError("the data prefetch thread ended without a result") from None
                continue
            if kind == "error":
                if hasattr(value, "add_note"):
                    value.add_note("(raised in the data loader's prefetch thread)")
                raise value
            return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


# ------------------------------------------------------------------------------------------ loader
class PackedLoader:
    """Iterable of packed, masked device batches; resumable with state_dict()/load_state_dict()."""

    def __init__(self, source, masking: MaskingSpec, settings: LoaderSettings):
        self.source, self.masking, self.settings = source, masking, settings
        self._fingerprint = data_fingerprint(source, settings)
        epoch_order(source, settings, 0)  # fail now on bad sizes/seeds
        self._state = _initial_state(self._fingerprint)
        self._loaded = False  # an eval pass restarts from scratch unless a state was loaded
        self._generation = 0
        self._prefetcher: _Prefetcher | None = None

    @property
    def microbatch_size(self) -> int:
        return self.settings.microbatch_size

    @property
    def batch_size(self) -> int:
        """Full device batch in sequences (Composer reads it for default microbatch sizes)."""
        return self.settings.warmup.full_rows * self.settings.microbatch_size

    @property
    def packing_efficiency(self) -> float:
        """Non-pad slots / all slots over every batch handed out so far (restored on resume)."""
        return self._state["real_tokens"] / self._state["slots"] if self._state["slots"] else 0.0

    @property
    def stats(self) -> dict:
        s = self._state
        return {"epoch": s["epoch"], "batches": s["batches"], "tokens": s["tokens"],
                "packing_efficiency": self.packing_efficiency}

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        saved = state["fingerprint"]
        # a state from before the warmup has no seq_len_warmup, one of a plain dataset no mixture: compare both
        keys = set(saved) | ({"seq_len_warmup", "mixture"} & set(self._fingerprint))
        diff = {k: (saved.get(k), self._fingerprint.get(k)) for k in sorted(keys)
                if self._fingerprint.get(k) != saved.get(k)}
        if diff:
            raise ValueError("the saved loader state belongs to another data setup; differing "
                             f"(saved, now): {diff}")
        self._close()
        self._state, self._loaded = state, True
        self._generation += 1  # a live iterator from before the load stops with an error

    def _close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __iter__(self) -> Iterator[dict]:
        self._close()
        if not self.settings.endless and not self._loaded:
            self._state = _initial_state(self._fingerprint)
        self._loaded = False
        self._generation += 1
        producer = _Producer(self.source, self.masking, self.settings, self._state)  # restore errors raise here
        if self.settings.prefetch > 0:
            self._prefetcher = _Prefetcher(producer.next_batch, max(2, self.settings.prefetch))
            return self._consume(self._prefetcher.get, self._generation)
        return self._consume(producer.next_batch, self._generation)

    def _consume(self, next_item: Callable[[], Any], generation: int) -> Iterator[dict]:
        agree = not self.settings.endless and self.settings.world_size > 1
        try:
            while True:
                if generation != self._generation:
                    raise RuntimeError("this loader iterator was superseded by a newer iter() or load_state_dict()")
                item = next_item()
                if agree and not every_rank_has_a_batch(item is not None):
                    return
                if item is None:
                    return
                batch, self._state = item
                yield batch
        finally:  # iterator finished, failed or dropped: stop its prefetch thread
            if generation == self._generation:
                self._close()


def every_rank_has_a_batch(have_one: bool) -> bool:
    """An eval pass ends for all ranks when the first rank runs out: ranks read different documents, so their
    passes differ in length, and a rank that stops early would leave the others waiting in a collective of the
    forward pass (FSDP gathers weights per layer) or of the metric sync. One all-reduce of one integer per eval
    batch; without a process group (a single process) there is no one to agree with."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return have_one
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(have_one)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


# --------------------------------------------------------------------------- Composer integration
class LoaderStateCallback(Callback):
    """Checkpoints a PackedLoader: every rank's state goes into the checkpoint (Composer writes rank 0's
    copy), and on load each rank takes its own. Use with `Trainer(spin_dataloaders=False)`. A checkpoint of
    another world size resumes elastically: each rank derives its share of the rest of the epoch from all the
    saved states (see elastic.py).

    strict=False ignores (with a warning) a saved state from another data setup, e.g. when a new phase
    starts from a checkpoint of the previous phase with another sequence length or dataset.
    """

    def __init__(self, loader: PackedLoader | DataSpec, strict: bool = True):
        self.loader = loader.dataloader if isinstance(loader, DataSpec) else loader
        self.strict = strict

    def state_dict(self) -> dict[str, Any]:
        from composer.utils import dist

        local = self.loader.state_dict()
        return {"ranks": dist.all_gather_object(local) if dist.get_world_size() > 1 else [local]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks, rank, world_size = state["ranks"], self.loader.settings.rank, self.loader.settings.world_size
        try:
            if len(ranks) != world_size:  # another world size: this rank's share of what no old rank consumed
                ranks = resize_states(ranks, world_size)
            self.loader.load_state_dict(ranks[rank])
        except ValueError as e:
            if self.strict:
                raise
            warnings.warn(f"loader state not restored, starting the data from scratch: {e}")


class SeqLenLogger(Callback):
    """Logs the sequence-length cap of each training batch during a sequence-length warmup, under Composer
    SeqLengthWarmup's metric name: a packed row holds microbatch_size sequences of that length."""

    def __init__(self, microbatch_size: int):
        self.microbatch_size = microbatch_size

    def after_dataloader(self, state, logger) -> None:
        row_len = state.batch["input_ids"].shape[1]
        logger.log_metrics({"seq_length_warmup/curr_seq_len": row_len // self.microbatch_size})


def make_data_spec(loader: PackedLoader) -> DataSpec:
    """The DataSpec has one packed row per microbatch; samples = rows x microbatch_size sequence slots (so
    run files' batch sizes in sequences hold); tokens = non-pad tokens (all slots with count_padding_tokens)."""
    mb, pad = loader.settings.microbatch_size, loader.settings.count_padding_tokens
    return DataSpec(loader, split_batch=split_packed_batch,
                    get_num_samples_in_batch=lambda batch: count_rows(batch) * mb,
                    get_num_tokens_in_batch=lambda batch: count_tokens(batch, pad))


@DATA_LOADERS.register("text", "MDS documents -> best-fit packed rows -> MLM masking (resumable)")
def build_packed_dataloader(loader_cfg: Mapping, tokenizer, *, device_batch_size: int, microbatch_size: int,
                            max_seq_len: int, seed: int, rank: int | None = None, world_size: int | None = None,
                            count_padding_tokens: bool = False, mode: str = "train",
                            where: str | None = None, seq_len_warmup: SeqLenWarmup | None = None) -> DataSpec:
    """Schema `train_loader`/`eval_loader` -> DataSpec over a PackedLoader (`spec.dataloader`).

    device_batch_size and microbatch_size are in sequences; a step holds device_batch_size /
    microbatch_size packed rows of microbatch_size * max_seq_len slots. mode='eval': one deterministic
    pass per iteration, no batch-size or sequence-length warmup. The mask rate is the section's
    `dataset.mlm_probability` (a run file's loaders always carry one, see `flexbert.train.plan`), else
    `default_mlm_probability(mode)`.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}{closest(mode, ['train', 'eval'])}")
    where = where or f"{mode}_loader"
    cfg = LoaderConfig.from_dict(loader_cfg, where)
    ds = cfg.dataset
    if ds.max_seq_len is not None and ds.max_seq_len != max_seq_len:
        raise ValueError(f"`{where}.dataset.max_seq_len` ({ds.max_seq_len}) differs from max_seq_len ({max_seq_len})")
    if microbatch_size <= 0 or device_batch_size <= 0 or device_batch_size % microbatch_size:
        raise ValueError(f"device batch size ({device_batch_size} sequences) must be a positive multiple of the "
                         f"device microbatch size ({microbatch_size}): a packed row holds one microbatch")
    if rank is None or world_size is None:
        from composer.utils import dist

        rank = dist.get_global_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    full_rows = device_batch_size // microbatch_size
    if mode == "train" and cfg.packs:
        warmup = BatchSizeWarmup.from_config(cfg.batch_size_warmup_min_size, cfg.batch_size_warmup_tokens,
                                             microbatch_size=microbatch_size, full_rows=full_rows)
    else:
        warmup = BatchSizeWarmup(full_rows, full_rows, 0)
    p = ds.mlm_probability if ds.mlm_probability is not None else default_mlm_probability(mode)
    epoch_size = parse_epoch_size(ds.epoch_size, f"{where}.dataset.epoch_size")
    if ds.streams is None and epoch_size is None:
        source = open_source(ds.local, ds.remote, ds.split, streaming=ds.streaming, tokenizer=tokenizer,
                             streaming_kwargs=ds.streaming_kwargs())
    else:  # a mixture; epoch_size alone resamples the one dataset, as streaming does
        streams = ds.streams or {"dataset": StreamConfig()}
        source = open_mixture(streams, local=ds.local, remote=ds.remote, split=ds.split, streaming=ds.streaming,
                              tokenizer=tokenizer, streaming_kwargs=ds.streaming_kwargs(), epoch_size=epoch_size,
                              seed=ds.shuffle_seed, max_block=ds.shuffle_block_size or DEFAULT_MAX_BLOCK,
                              where=f"{where}.dataset.streams")
    settings = LoaderSettings(
        max_seq_len=max_seq_len, microbatch_size=microbatch_size, warmup=warmup, seed=seed,
        pad_token_id=int(tokenizer.pad_token_id), rank=rank, world_size=world_size, shuffle=ds.shuffle,
        shuffle_seed=ds.shuffle_seed, shuffle_block_size=ds.shuffle_block_size or DEFAULT_MAX_BLOCK,
        endless=mode == "train", drop_last=cfg.drop_last,
        sequence_packing=cfg.packs, split_long_documents=cfg.split_long_documents,
        count_padding_tokens=count_padding_tokens, prefetch=cfg.num_workers,
        seq_len_warmup=seq_len_warmup if mode == "train" else None)
    return make_data_spec(PackedLoader(source, MaskingSpec.from_tokenizer(tokenizer, p), settings))
