"""Elastic resume: the loader states that N ranks saved -> the states of M ranks that read the rest of the epoch.

A document counts as consumed when all its tokens went out in batches already handed to the trainer. What the N
ranks had read but not handed out (rows still open in the packer, rows packed but not batched, the unread tail of
a long document split across rows) goes back into a pool of pieces (doc id, start, end) that the new ranks repack.
Everything from each old rank's cursor on is the remainder of the epoch; the M new ranks split it into M contiguous
slices (blocks stay together, as in `EpochOrder`).

The remainder is described, never listed: per epoch, a stack of levels. Level 0 is the world size whose plain
`EpochOrder`s the epoch started with; each later level holds, for every rank of the level below, the first
position not consumed (None: that rank had finished the epoch) and the world size that split the rest. A rank's
order is then computed lazily (`RemainderOrder`, searchsorted over the old orders' remaining lengths), so a
checkpoint taken after 2 -> 1 -> 2 holds 2 + 1 numbers per epoch and no list of documents. Epochs after the
resize use the plain `EpochOrder` of the new world size.

Clocks: the per-rank counters (`slots`, `rows`, `tokens`, `real_tokens`) restart at 0 after a resize and
`before_resize` keeps the GLOBAL count of everything handed out before it (the sum over the old ranks). A global
clock is `before_resize + counter * world_size`: the batch-size and sequence-length warmups continue from the global
position whatever the world size. `batches` (optimizer steps) is global already and carries over.

Masking: a row of a normal epoch draws the stream (seed, epoch, row * world_size + rank). Rows of a resized epoch add
the level number as a fourth key, so no row after a resize can draw a stream a row before it drew (the row indices
restart at 0 with a new world size and would otherwise collide).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

COUNTERS = ("slots", "rows", "tokens", "real_tokens")
TO_DOCUMENT_END = -1  # a piece's end: the document's readable length (its split or truncation rule decides)


class ElasticResumeError(ValueError):
    """A set of saved loader states that cannot be resumed with another world size."""


class RemainderOrder:
    """The share of rank `rank` of `world_size` in what the ranks of the level below had not consumed.

    `parent(r)` is the order of old rank r (a sequence of global document ids); `starts[r]` its first position
    not consumed, None when it had finished the epoch. The remainders of old ranks 0, 1, ... are concatenated and
    cut into `world_size` contiguous slices of near-equal length."""

    def __init__(self, parent: Callable[[int], Sequence[int]], starts: Sequence[int | None], rank: int,
                 world_size: int):
        self._parent_of, self.starts = parent, list(starts)
        left = [0 if s is None else max(len(parent(r)) - s, 0) for r, s in enumerate(self.starts)]
        self.offsets = np.concatenate([[0], np.cumsum(left, dtype=np.int64)])  # (old ranks + 1,)
        total = int(self.offsets[-1])
        self.first, self.end = total * rank // world_size, total * (rank + 1) // world_size
        self._cached: tuple[int, Sequence[int] | None] = (-1, None)  # one live old order: its block cache is big

    def __len__(self) -> int:
        return self.end - self.first

    def _parent(self, r: int) -> Sequence[int]:
        if self._cached[0] != r:
            self._cached = (r, self._parent_of(r))
        return self._cached[1]

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} outside this rank's remainder of {len(self)} documents")
        at = self.first + position
        r = int(np.searchsorted(self.offsets, at, side="right")) - 1
        return self._parent(r)[self.starts[r] + at - int(self.offsets[r])]


def remainder_order(levels: list[dict], rank: int, base: Callable[[int, int], Sequence[int]]) -> Sequence[int]:
    """The order of `rank` in an epoch resized as `levels` describe; base(rank, world_size) is the plain order."""
    if len(levels) == 1:
        return base(rank, levels[0]["world_size"])
    below = levels[:-1]
    top = levels[-1]
    return RemainderOrder(lambda r: remainder_order(below, r, base), top["starts"], rank, top["world_size"])


def resize_states(states: list[dict], world_size: int) -> list[dict]:
    """The loader states of `world_size` new ranks that continue from `states` (one per old rank, in rank order)."""
    old_size = len(states)
    if old_size == 0 or world_size <= 0:
        raise ElasticResumeError(f"cannot resize loader states of {old_size} ranks to {world_size} ranks")
    _check_compatible(states)
    pieces = sorted(_unconsumed_pieces(states), key=lambda p: p[0])  # a rank feeds an epoch's pieces in that epoch
    # A rank that rolled over may still hold unbatched rows of the epoch before: that epoch is resumed too.
    lowest = min([s["epoch"] for s in states] + [p[0] for p in pieces])
    highest = max(s["epoch"] for s in states)
    known: dict[int, list] = {}
    for s in states:
        known.update(s.get("remainders", {}))
    remainders = {}
    for epoch in range(lowest, highest + 1):
        levels = known.get(epoch, [{"world_size": old_size}])
        starts = [None if s["epoch"] > epoch else 0 if s["epoch"] < epoch else s["cursor"] + (1 if s["piece"] else 0)
                  for s in states]
        remainders[epoch] = [*levels, {"starts": starts, "world_size": world_size}]
    earlier = states[0].get("before_resize", {})  # global already: the same on every old rank
    before = {c: earlier.get(c, 0) + sum(s[c] for s in states) for c in COUNTERS}
    template = states[0]
    return [{
        "version": template["version"], "fingerprint": {**template["fingerprint"], "rank": rank,
                                                        "world_size": world_size},
        "epoch": lowest, "cursor": 0, "piece": 0, "piece_doc": None, "rows_in_epoch": 0,
        "batches": template["batches"], **{c: 0 for c in COUNTERS}, "exhausted": False,
        "open_rows": [], "ready_rows": [], "pending": pieces[rank::world_size], "remainders": remainders,
        "before_resize": before,
    } for rank in range(world_size)]


def _check_compatible(states: list[dict]) -> None:
    size = len(states)
    for rank, s in enumerate(states):
        fingerprint = s.get("fingerprint", {})
        if (fingerprint.get("rank"), fingerprint.get("world_size")) != (rank, size):
            raise ElasticResumeError(f"loader state {rank} of the checkpoint belongs to rank "
                                     f"{fingerprint.get('rank')} of {fingerprint.get('world_size')}, expected rank "
                                     f"{rank} of {size}: the checkpoint's loader states are damaged")
        if s["piece"] and s.get("piece_doc") is None:
            raise ElasticResumeError(
                "the checkpoint's loader state predates elastic resume (it does not name the document rank "
                f"{rank} was reading): resume it with its own {size} ranks, or start the data afresh")
        if s.get("exhausted"):
            raise ElasticResumeError("an evaluation pass's loader state cannot be resized; only training loaders")
    same = {k: v for k, v in states[0]["fingerprint"].items() if k != "rank"}
    for rank, s in enumerate(states[1:], 1):
        other = {k: v for k, v in s["fingerprint"].items() if k != "rank"}
        if other != same or s["batches"] != states[0]["batches"]:
            raise ElasticResumeError(f"loader states of ranks 0 and {rank} disagree on the data setup or the step "
                                     f"count: the checkpoint's loader states are damaged")


def _unconsumed_pieces(states: list[dict]) -> list[list[int]]:
    """[epoch, doc, start, end] of every token the old ranks read but did not hand out, rank by rank."""
    pieces = []
    for s in states:
        pieces += [list(p) for p in s.get("pending", [])]
        for epoch, _, flat in s["ready_rows"]:
            pieces += [[epoch, *flat[i:i + 3]] for i in range(0, len(flat), 3)]
        for flat in s["open_rows"]:
            pieces += [[s["epoch"], *flat[i:i + 3]] for i in range(0, len(flat), 3)]
        if s["piece"]:
            pieces.append([s["epoch"], s["piece_doc"], s["piece"], TO_DOCUMENT_END])
    return pieces
