"""Stream mixtures: `train_loader.dataset.streams`, with mosaicml-streaming's meaning of `proportion`, `repeat`,
`choose` and `epoch_size`.

- How many samples each stream gives per epoch is `streaming.Stream.apply_weights` itself (called, not copied):
  proportions are normalised and scaled to `epoch_size` (default: all documents of all streams), floored, and the
  few samples left over go to randomly chosen streams (seeded by shuffle_seed); `repeat` takes int(repeat * n)
  samples of a stream of n documents, `choose` exactly that many, a stream without a rule all of its n.
- Which documents fill those samples, per stream and epoch (streaming's rule): every document `count // n` times,
  then `count % n` distinct documents drawn at random again each epoch (seeded by shuffle_seed and epoch). The
  draw here is spread evenly over the stream (whole groups of GROUP documents), where streaming spreads it over
  shards at random; both are uniform random subsets.
- Where they sit in the epoch (`EpochLayout`, this loader's own): the E samples of an epoch are laid out in chunks
  of at most LAYOUT_CHUNK positions, chunk c holding stream s's samples [c*k_s//C, (c+1)*k_s//C) for C chunks.
  Every stretch of the epoch therefore holds every stream in proportion, so `EpochOrder`'s shuffle blocks do too
  and its in-block shuffle mixes them: a rank never reads one stream for a million documents, then the next.
  The layout depends on the seed, the epoch, the counts and shuffle_block_size only, not on the number of ranks.

Where streaming's own checks are muddled, the errors here say what is meant: streaming refuses `epoch_size` next to
`repeat` / `choose` with "Only provide `choose` when weighting streams relatively" (it means epoch_size), reports
mixed relative / absolute weights against stream 0's kind by position, and reads `epoch_size: 0` as not given
(kept: 0 is "not given" here too).

A mixture's samples carry GLOBAL document ids: stream s's document d is `base_s + d` (streams concatenated in the
order the run file lists them), so a saved row rebuilds from its ids alone.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from flexbert import schema

LAYOUT_CHUNK = 1024  # positions per layout chunk: the span over which the mixture is exact (up to one per stream)
GROUP = 1 << 20  # documents per group of a stream's partial-repeat draw (drawn as a whole)
DRAW_CACHE = 1 << 22  # drawn document ids kept in memory (32 MiB), most recently used groups first
RULES = ("proportion", "repeat", "choose")
MAX_EPOCH_SIZE = 1 << 36  # chunk index x stream count stays below 2**63 (about 1.5e18 at this size)


@dataclass
class StreamConfig:
    """One entry of `dataset.streams` (name -> section), mosaicml-streaming's `Stream` keys."""

    local: Optional[str] = schema.field(None, doc="local MDS folder (the cache folder when streaming); default: "
                                                  "the dataset's local")
    remote: Optional[str] = schema.field(None, doc="object-store URI to stream from; default: the dataset's remote")
    split: Optional[str] = schema.field(None, doc="sub-folder of local / remote; default: the dataset's split")
    proportion: Optional[float] = schema.field(None, doc="share of the epoch's samples (relative; every stream "
                                                         "then needs one)")
    repeat: Optional[float] = schema.field(None, doc="samples per epoch = int(repeat * documents of the stream)")
    choose: Optional[int] = schema.field(None, doc="samples per epoch, exactly")
    download_retry: Optional[int] = schema.field(None, doc="streaming: download attempts per shard; default: the "
                                                           "dataset's")
    download_timeout: Optional[float] = schema.field(None, doc="streaming: seconds per shard download; default: the "
                                                               "dataset's")
    validate_hash: Optional[str] = schema.field(None, doc="streaming: hash algorithm to check shards with; default: "
                                                          "the dataset's")
    keep_zip: Optional[bool] = schema.field(None, doc="streaming: keep compressed shards; default: the dataset's")

    def __post_init__(self):
        given = [rule for rule in RULES if getattr(self, rule) is not None]
        if len(given) > 1:
            raise schema.ConfigError(f"`{given[0]}` and `{given[1]}` are both set; a stream takes at most one of "
                                     f"proportion, repeat, choose (the others are derived)")
        for key in (*RULES, "download_retry"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise schema.ConfigError(f"`{key}` must be >= 0, got {getattr(self, key)}")
        if self.download_timeout is not None and self.download_timeout <= 0:
            raise schema.ConfigError(f"`download_timeout` must be > 0, got {self.download_timeout}")

    @property
    def rule(self) -> Optional[str]:
        return next((rule for rule in RULES if getattr(self, rule) is not None), None)


def check_weights(streams: Mapping[str, StreamConfig], epoch_size: Optional[int], where: str) -> None:
    """streaming's rules across streams, with the stream named: proportions are all-or-none; epoch_size only
    with proportions or with no rule at all (then streams are sampled in proportion to their sizes)."""
    names = list(streams)
    relative = [name for name in names if streams[name].proportion is not None]
    if relative and len(relative) != len(names):
        other = next(name for name in names if streams[name].proportion is None)
        raise schema.ConfigError(f"`{where}.{other}` has no `proportion` while stream '{relative[0]}' has one: "
                                 f"proportions are relative, so every stream needs one (or none may have one: "
                                 f"use repeat / choose)")
    if relative and not sum(streams[name].proportion for name in names) > 0:
        raise schema.ConfigError(f"`{where}`: the proportions add up to 0; give at least one stream a positive one")
    absolute = [name for name in names if streams[name].rule in ("repeat", "choose")]
    if epoch_size is not None and absolute:
        raise schema.ConfigError(f"`{where}.{absolute[0]}.{streams[absolute[0]].rule}` (an absolute sample count) "
                                 f"cannot be combined with `epoch_size`; use proportions, or remove epoch_size")


def parse_epoch_size(value: Union[int, str, None], where: str) -> Optional[int]:
    """`epoch_size` as streaming reads it: an integer or an abbreviation ("100k", "64M", "2b"); null or 0 = none."""
    if value is None:
        return None
    from streaming.base.util import number_abbrev_to_int

    try:
        size = int(number_abbrev_to_int(value))
    except ValueError:
        raise schema.ConfigError(f"`{where}` must be a sample count such as 1000000 or '1M', got {value!r}") from None
    if size < 0:
        raise schema.ConfigError(f"`{where}` must be >= 0, got {value!r}")
    return size or None  # streaming treats 0 as not given


def stream_counts(sizes: Sequence[int], rules: Sequence[tuple[Optional[str], Optional[float]]],
                  epoch_size: Optional[int], seed: int) -> np.ndarray:
    """Samples per epoch of each stream: streaming's `Stream.apply_weights` on streams carrying only the rules."""
    from streaming import Stream

    # `local` is required by Stream but unused by apply_weights; a path that is never read or created.
    streams = [Stream(local=f"<stream {i}>", **({rule: value} if rule else {})) for i, (rule, value) in
               enumerate(rules)]
    Stream.apply_weights(streams, np.asarray(sizes, dtype=np.int64), epoch_size, seed)
    return np.asarray([int(stream.choose) for stream in streams], dtype=np.int64)


class Mixture:
    """Streams concatenated into one global id space, and how many samples each gives per epoch."""

    def __init__(self, names: Sequence[str], sizes: Sequence[int], counts: Sequence[int], *, seed: int,
                 max_block: int):
        self.names, self.seed, self.max_block = list(names), seed, max_block
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.bases = np.concatenate([[0], np.cumsum(self.sizes)])  # (S+1,) first global id of each stream
        for name, size, count in zip(self.names, self.sizes, self.counts):
            if count > 0 and size == 0:
                raise ValueError(f"stream '{name}' has no documents but should give {count} samples per epoch")
        if self.epoch_size > MAX_EPOCH_SIZE:
            raise ValueError(f"the mixture gives {self.epoch_size} samples per epoch, more than {MAX_EPOCH_SIZE} "
                             f"(the layout's int64 arithmetic); lower epoch_size, proportions or repeats")
        if self.epoch_size == 0:
            raise ValueError(f"the mixture of streams {self.names} gives no samples per epoch (counts "
                             f"{self.counts.tolist()})")

    @property
    def epoch_size(self) -> int:
        return int(self.counts.sum())

    def fingerprint(self) -> dict:
        """What a saved loader state must agree on: the streams, their sizes and per-epoch counts."""
        return {"streams": self.names, "sizes": self.sizes.tolist(), "counts": self.counts.tolist(),
                "layout": "chunks"}

    def layout(self, epoch: int) -> "EpochLayout":
        return EpochLayout(self, epoch)

    def order(self, epoch_order, epoch: int) -> "MixedOrder":
        """A rank's order over epoch positions (`EpochOrder` of length epoch_size) -> its global document ids."""
        return MixedOrder(epoch_order, self.layout(epoch))


class EpochLayout:
    """Epoch position in [0, E) -> global document id, deterministic per (seed, epoch); random access."""

    def __init__(self, mixture: Mixture, epoch: int):
        self.m, self.epoch = mixture, epoch
        total = mixture.epoch_size
        # Chunks at most LAYOUT_CHUNK long, and short enough that a small epoch still has many (>= 64) and that a
        # shuffle block holds many: then every block mixes the streams however the epoch is cut into blocks.
        chunk = max(1, min(LAYOUT_CHUNK, total // 64, mixture.max_block // 16))
        self.num_chunks = -(-total // chunk)
        self.chunk_starts = np.zeros(self.num_chunks + 1, dtype=np.int64)  # (C+1,) first position of each chunk
        for count in mixture.counts:
            self.chunk_starts += np.arange(self.num_chunks + 1, dtype=np.int64) * count // self.num_chunks
        self._group_bounds: dict[int, tuple[list[int], list[int]]] = {}
        self._draws: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # (stream, group) -> its draw

        # Python ints for the per-document arithmetic (a few streams: faster than numpy calls on tiny arrays).
        self._counts, self._sizes = mixture.counts.tolist(), mixture.sizes.tolist()
        self._bases, self._length = mixture.bases.tolist(), int(self.chunk_starts[-1])

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self._length:
            raise IndexError(f"position {position} outside the epoch of {self._length} samples")
        c = int(self.chunk_starts.searchsorted(position, side="right")) - 1
        offset, n = position - int(self.chunk_starts[c]), self.num_chunks
        for s, count in enumerate(self._counts):  # chunk c holds stream s's samples [c*k//n, (c+1)*k//n)
            first, end = c * count // n, (c + 1) * count // n
            if offset < end - first:
                return self._bases[s] + self._document(s, first + offset)
            offset -= end - first
        raise AssertionError(f"position {position}: the chunk starts disagree with the counts")

    def _document(self, s: int, sample: int) -> int:
        """Stream s's `sample`-th sample of this epoch -> its document inside the stream."""
        size, count = self._sizes[s], self._counts[s]
        whole = count // size * size  # samples of the full repeats: every document once per repeat
        if sample < whole:
            return sample % size
        # The partial repeat: count % size distinct documents, drawn group by group (a group's share of the draw
        # in proportion to its size), so only the groups being read are held in memory.
        group_starts, picks_before = self._groups(s)
        index = sample - whole
        group = bisect.bisect_right(picks_before, index) - 1
        return int(self._draw(s, group, group_starts, picks_before)[index - picks_before[group]])

    def _groups(self, s: int) -> tuple[list[int], list[int]]:
        """Stream s's groups: (first document of each group, draws before each group), both G+1 long."""
        if s not in self._group_bounds:
            size, count = self._sizes[s], self._counts[s]
            num_groups = -(-size // GROUP)
            starts = [g * size // num_groups for g in range(num_groups + 1)]
            self._group_bounds[s] = (starts, [(count % size) * start // size for start in starts])
        return self._group_bounds[s]

    def _draw(self, s: int, group: int, group_starts: list[int], picks_before: list[int]) -> np.ndarray:
        """The sorted documents drawn from one group; the draws most recently used stay cached (a shuffle block
        reads a stream's samples in random order across the few groups its range spans)."""
        key = (s, group)
        if key in self._draws:
            self._draws.move_to_end(key)
            return self._draws[key]
        start, stop = group_starts[group], group_starts[group + 1]
        rng = np.random.default_rng([self.m.seed, self.epoch, s, group])
        drawn = start + np.sort(rng.choice(stop - start, picks_before[group + 1] - picks_before[group], replace=False))
        self._draws[key] = drawn
        while sum(len(d) for d in self._draws.values()) > DRAW_CACHE and len(self._draws) > 1:
            self._draws.popitem(last=False)
        return drawn


class MixedOrder:
    """`EpochOrder` over epoch positions, read through the epoch's layout: a rank's global document ids."""

    def __init__(self, epoch_order, layout: EpochLayout):
        self.epoch_order, self.layout = epoch_order, layout

    def __len__(self) -> int:
        return len(self.epoch_order)

    def __getitem__(self, position: int) -> int:
        return self.layout[self.epoch_order[position]]


class MixedSource:
    """Documents of several sources under global ids (stream s's document d is bases[s] + d), with the mixture."""

    def __init__(self, sources: Sequence, mixture: Mixture):
        self.sources, self.mixture = list(sources), mixture

    def __len__(self) -> int:
        return int(self.mixture.bases[-1])

    def get(self, doc_id: int) -> np.ndarray:
        s = int(np.searchsorted(self.mixture.bases, doc_id, side="right")) - 1
        if not 0 <= s < len(self.sources):
            raise IndexError(f"document {doc_id} outside the mixture's {len(self)} documents")
        return self.sources[s].get(doc_id - int(self.mixture.bases[s]))


def stream_sources(streams: Mapping[str, StreamConfig], local: Optional[str], remote: Optional[str],
                   split: Optional[str]) -> dict[str, tuple[Optional[str], Optional[str], Optional[str]]]:
    """(local, remote, split) of each stream: its own, else the dataset's (as the reference builds its Streams)."""
    return {name: (stream.local or local, stream.remote or remote, stream.split or split)
            for name, stream in streams.items()}


def stream_rules(streams: Mapping[str, StreamConfig]) -> list[tuple[Optional[str], Optional[float]]]:
    """(rule, value) of each stream for `stream_counts`; (None, None) for a stream with no rule."""
    return [(stream.rule, getattr(stream, stream.rule) if stream.rule else None) for stream in streams.values()]


def describe(streams: Optional[Mapping[str, StreamConfig]], *, local: Optional[str], remote: Optional[str],
             split: Optional[str], epoch_size: Optional[int], seed: int) -> list[str]:
    """What a loader will read, for a dry-run: its folder or URI and document count, or for a mixture each stream's
    rule and samples per epoch (streaming's counts, as the loader draws them). Counts need every stream's local
    index; a streamed source's count is known only once its index is downloaded, at the start."""
    from flexbert.data.sources import local_size

    def where(s_local, s_remote, s_split):
        return (s_remote or s_local or "?") + (f" (split {s_split})" if s_split else "")

    if streams is None and epoch_size is None:
        size = None if remote else local_size(local, split)
        return [where(local, remote, split) + (f", {size:,} documents" if size is not None else "")]
    streams = streams or {"dataset": StreamConfig()}  # epoch_size alone resamples the one dataset
    resolved = stream_sources(streams, local, remote, split)
    sizes = [None if r else local_size(l, s) for l, r, s in resolved.values()]
    counts = None
    if all(size is not None for size in sizes):
        counts = stream_counts(sizes, stream_rules(streams), epoch_size, seed).tolist()
    head = f"mixture of {len(streams)} stream{'s' * (len(streams) > 1)}" + (
        f", {sum(counts):,} samples per epoch" if counts is not None else ", counts known at the start (streamed)")
    lines = [head]
    for i, (name, stream) in enumerate(streams.items()):
        rule = f"{stream.rule} {getattr(stream, stream.rule):g}" if stream.rule else "no rule"
        count = f", {counts[i]:,} of {sizes[i]:,} documents per epoch" if counts is not None else ""
        lines.append(f"  {name}: {rule}{count} <- {where(*resolved[name])}")
    return lines


def open_mixture(streams: Mapping[str, StreamConfig], *, local: Optional[str], remote: Optional[str],
                 split: Optional[str], streaming: bool, tokenizer, streaming_kwargs: Mapping, epoch_size: Optional[int],
                 seed: int, max_block: int, where: str) -> MixedSource:
    """Each stream opened as its own source (a stream's missing local / remote / split and streaming settings are
    the dataset's, as the reference builds its `Stream`s), and the mixture's per-epoch counts."""
    from flexbert.data.sources import open_source

    resolved = stream_sources(streams, local, remote, split)
    owners = {}
    for name, (s_local, s_remote, s_split) in resolved.items():  # before any download
        owner, owner_remote = owners.setdefault((s_local, s_split or ""), (name, s_remote))
        if s_local is not None and owner_remote != s_remote:
            raise ValueError(f"`{where}.{name}` and `{where}.{owner}` would share the local folder '{s_local}' "
                             f"(split '{s_split}') for different remotes; give each stream its own local")
    sources = []
    for name, stream in streams.items():
        s_local, s_remote, s_split = resolved[name]
        kwargs = dict(streaming_kwargs)
        kwargs.update({key: getattr(stream, key) for key in ("download_retry", "download_timeout", "validate_hash",
                                                              "keep_zip") if getattr(stream, key) is not None})
        try:
            sources.append(open_source(s_local, s_remote, s_split, streaming=streaming, tokenizer=tokenizer,
                                       streaming_kwargs=kwargs))
        except (OSError, ValueError) as err:
            raise type(err)(f"stream '{name}' (`{where}.{name}`): {err}") from None
    sizes = [len(source) for source in sources]
    counts = stream_counts(sizes, stream_rules(streams), epoch_size, seed)
    return MixedSource(sources, Mixture(list(streams), sizes, counts, seed=seed, max_block=max_block))
