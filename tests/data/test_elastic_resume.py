"""Elastic resume at the loader level (flexbert/data/elastic.py): loader states saved by N ranks resume on M.

Every token of a document encodes (document id, position), so a ledger read from the emitted batches alone -- the
masked positions restored from the labels -- shows which token of which document every row holds. Within an epoch
every token the documents have must appear exactly once over all ranks and all resumes: none repeated, none lost.
"""

import collections
import io
import itertools

import numpy as np
import pytest
import torch

from flexbert.config import IGNORE_INDEX
from flexbert.data import ArraySource, BatchSizeWarmup, LoaderSettings, LoaderStateCallback, MaskingSpec, PackedLoader
from flexbert.data.elastic import ElasticResumeError, RemainderOrder, resize_states
from flexbert.data.seq_len_warmup import SeqLenWarmup
from flexbert.data.sources import EpochOrder

PAD, MASK, FIRST_ID = 0, 1, 2
STRIDE = 512  # token = FIRST_ID + doc * STRIDE + position
MAX_SEQ_LEN, MICRO = 32, 2  # rows of 64 slots


def make_docs(n, seed=0):
    """Documents of 1..100 tokens (a fifth longer than max_seq_len: split across rows when allowed)."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.2, rng.integers(33, 100, n), rng.integers(1, 33, n))
    return [FIRST_ID + d * STRIDE + np.arange(length, dtype=np.int64) for d, length in enumerate(lengths)]


DOCS = make_docs(150)
VOCAB = FIRST_ID + len(DOCS) * STRIDE
SPEC = MaskingSpec(0.3, MASK, np.isin(np.arange(VOCAB), [PAD, MASK]), np.arange(FIRST_ID, VOCAB))


def settings(rank, world_size, *, endless=True, split=True, warmup=None, rows=2, seq_len_warmup=None):
    warmup = warmup or BatchSizeWarmup(rows, rows, 0)
    return LoaderSettings(max_seq_len=MAX_SEQ_LEN, microbatch_size=MICRO, warmup=warmup, seed=5, pad_token_id=PAD,
                          rank=rank, world_size=world_size, shuffle=True, shuffle_seed=3, shuffle_block_size=16,
                          endless=endless, split_long_documents=split, max_open_rows=4, seq_len_warmup=seq_len_warmup)


def epoch_tokens(split=True):
    """(doc, position) of every token one epoch reads: all of a document, or its first max_seq_len unless split."""
    return collections.Counter((d, p) for d, doc in enumerate(DOCS)
                               for p in range(len(doc) if split else min(len(doc), MAX_SEQ_LEN)))


def ledger(batch):
    """(doc, position) of every real token in a batch, from its contents alone."""
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    original = np.where(labels != IGNORE_INDEX, labels, ids)
    tokens = original[original != PAD] - FIRST_ID
    return list(zip((tokens // STRIDE).tolist(), (tokens % STRIDE).tolist()))


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what a checkpoint can carry


def resumed_loaders(states, world_size, make_source=lambda: ArraySource(DOCS), **kw):
    """`world_size` loaders restored through the checkpoint callback from the saved states of every old rank."""
    loaders = [PackedLoader(make_source(), SPEC, settings(r, world_size, **kw)) for r in range(world_size)]
    for loader in loaders:
        LoaderStateCallback(loader).load_state_dict(roundtrip({"ranks": states}))
    return loaders


def run_stages(stages, make_source=lambda: ArraySource(DOCS), **kw):
    """Each stage (world size, batches per rank) resumes from the last; the final stage (batches None) reads to the
    end of the epoch. Returns the ledger of every emitted row and the batches of each stage."""
    seen, states, per_stage = collections.Counter(), None, []
    for world_size, batches in stages:
        last = batches is None
        loaders = ([PackedLoader(make_source(), SPEC, settings(r, world_size, endless=not last, **kw))
                    for r in range(world_size)] if states is None else resumed_loaders(states, world_size, make_source,
                                                                                       endless=not last, **kw))
        emitted = [list(itertools.islice(loader, batches)) for loader in loaders]
        for rank_batches in emitted:
            for batch in rank_batches:
                seen.update(ledger(batch))
        states = [loader.state_dict() for loader in loaders]
        assert last or all(s["epoch"] == 0 for s in states), "a stage before the last must stay inside epoch 0"
        per_stage.append(emitted)
    return seen, per_stage


def assert_exactly_once(seen, split=True, expected=None):
    expected = expected or epoch_tokens(split)
    repeated = {k: v for k, v in seen.items() if v > expected.get(k, 0)}
    lost = {k: v for k, v in expected.items() if seen.get(k, 0) < v}
    assert seen == expected, \
        f"{len(repeated)} tokens repeated, {len(lost)} lost, {len(seen.keys() - expected.keys())} foreign"


@pytest.mark.parametrize("stages", [[(2, 3), (1, 4), (2, None)], [(3, 3), (2, None)], [(1, 5), (3, None)]],
                         ids=["2-1-2", "3-2", "1-3"])
def test_every_token_of_the_epoch_exactly_once_across_resizes(stages):
    seen, per_stage = run_stages(stages)
    assert_exactly_once(seen)
    assert all(len(stage) == size for stage, (size, _) in zip(per_stage, stages))


def test_a_stream_mixture_resizes_too():
    """Two streams (documents 0-99 twice per epoch, 100-149 once): over 2 -> 1 -> 2 ranks every token of the epoch's
    samples arrives as often as the mixture's counts say -- the resized epoch reads the mixture's own epoch order."""
    from flexbert.data.mixture import Mixture, MixedSource

    def make_source():
        mixture = Mixture(["twice", "once"], [100, 50], [200, 50], seed=3, max_block=16)
        return MixedSource([ArraySource(DOCS[:100]), ArraySource(DOCS[100:])], mixture)

    seen, _ = run_stages([(2, 3), (1, 4), (2, None)], make_source)
    expected = collections.Counter({key: n * (2 if key[0] < 100 else 1) for key, n in epoch_tokens().items()})
    assert_exactly_once(seen, expected=expected)


def test_truncated_long_documents_resize_too():
    seen, _ = run_stages([(2, 3), (1, 2), (2, None)], split=False)
    assert_exactly_once(seen, split=False)


def test_states_of_one_epoch_are_resized_mid_document():
    """The saved states hold rows still open in the packer and a long document read part-way (its tail not yet
    packed): the resize puts both back. (Rows packed but not batched occur at an epoch's end: next test.)"""
    loaders = [PackedLoader(ArraySource(DOCS), SPEC, settings(r, 2)) for r in range(2)]
    streams = [iter(loader) for loader in loaders]
    for k in range(1, 20):
        for stream in streams:
            next(stream)
        states = [loader.state_dict() for loader in loaders]
        if all(s["piece"] and s["open_rows"] for s in states):
            break
    assert all(s["piece"] and s["open_rows"] for s in states), "the case is not exercised"
    assert states[0]["epoch"] == states[1]["epoch"] == 0
    seen = collections.Counter()
    replay = [PackedLoader(ArraySource(DOCS), SPEC, settings(r, 2)) for r in range(2)]
    for loader in replay:
        for batch in itertools.islice(loader, k):
            seen.update(ledger(batch))
    for loader in resumed_loaders(states, 1, endless=False):
        for batch in loader:
            seen.update(ledger(batch))
    assert_exactly_once(seen)


def test_batch_size_warmup_follows_the_global_slot_clock_across_resizes():
    """With a batch-size warmup, every step of every rank holds the rows the schedule gives for the GLOBAL slots
    handed out before it (summed here over every rank's batches), whatever the world size."""
    warmup = BatchSizeWarmup(1, 3, warmup_tokens=1200)
    stages = [(2, 3), (1, 4), (2, None)]
    seen, per_stage = run_stages(stages, warmup=warmup, rows=3)
    assert_exactly_once(seen)
    global_slots, sizes = 0, []
    for stage in per_stage:
        for step in itertools.zip_longest(*stage):
            present = [b for b in step if b is not None]
            want = warmup.rows_at(global_slots)
            rows = [b["input_ids"].shape[0] for b in present]
            assert all(r == want for r in rows[:-1]) and rows[-1] <= want  # the epoch's last batch may be short
            if len(present) < len(step) or rows[-1] < want:
                break  # the end of the epoch: ranks run out at different steps
            sizes.append(want)
            global_slots += sum(b["input_ids"].numel() for b in present)
    assert sizes[0] == 1 and 3 in sizes and len(set(sizes)) == 3, sizes  # the warmup ran through the resizes


def test_sequence_length_warmup_follows_the_global_sequence_clock_across_resizes():
    """A sequence-length warmup counted in sequence slots: every batch's sequence length is the schedule's value at
    the GLOBAL sequences handed out before it (summed here over every rank's batches); with truncate: false every
    token still arrives exactly once."""
    warmup = SeqLenWarmup(min_length=8, max_length=MAX_SEQ_LEN, step_size=8, warmup_span=64, unit="sp",
                          run_max_seq_len=MAX_SEQ_LEN, truncate=False)
    stages = [(2, 2), (1, 3), (2, None)]
    seen, per_stage = run_stages(stages, seq_len_warmup=warmup)
    assert_exactly_once(seen)
    sequences, lengths = 0, []
    for stage in per_stage:
        for step in itertools.zip_longest(*stage):
            present = [b for b in step if b is not None]
            want = warmup.length_at(sequences)
            assert all(b["input_ids"].shape[1] == want * MICRO for b in present)
            lengths.append(want)
            sequences += sum(b["input_ids"].shape[0] * MICRO for b in present)
    assert lengths[0] == 8 and MAX_SEQ_LEN in lengths and len(set(lengths)) == 4, lengths


def test_two_epochs_when_old_ranks_straddle_the_epoch_boundary():
    """Rank 0 may roll into the next epoch while rank 1 is still in the last one (their documents differ): both
    epochs are resumed. Over epochs 0 and 1 every token appears exactly twice."""
    loaders = [PackedLoader(ArraySource(DOCS), SPEC, settings(r, 2)) for r in range(2)]
    streams = [iter(loader) for loader in loaders]
    seen = collections.Counter()
    for step in range(200):
        for stream in streams:
            seen.update(ledger(next(stream)))
        states = [loader.state_dict() for loader in loaders]
        if len({s["epoch"] for s in states}) == 2:
            break
    else:
        pytest.fail("the two ranks never stood in different epochs")
    ahead = next(s for s in states if s["epoch"] == 1)
    assert any(e == 0 for e, _, _ in ahead["ready_rows"]), "no rows of the finished epoch wait unbatched"
    for loader in resumed_loaders(states, 1):
        it = iter(loader)
        while True:
            batch = next(it)
            s = loader.state_dict()
            # rows of epoch 2 handed out so far: counted from the state (rows are handed out in epoch order)
            in_epoch_2 = s["rows_in_epoch"] - sum(e == 2 for e, _, _ in s["ready_rows"]) if s["epoch"] == 2 else 0
            keep = batch["input_ids"].shape[0] - in_epoch_2
            seen.update(ledger({k: batch[k][:keep] for k in ("input_ids", "labels")}))
            if in_epoch_2:
                break
    expected = epoch_tokens()
    assert seen == collections.Counter({k: 2 for k in expected})


def test_same_world_size_resume_stays_bit_exact():
    reference = [PackedLoader(ArraySource(DOCS), SPEC, settings(r, 2)) for r in range(2)]
    expect = [list(itertools.islice(loader, 9)) for loader in reference]
    first = [PackedLoader(ArraySource(DOCS), SPEC, settings(r, 2)) for r in range(2)]
    for loader in first:
        list(itertools.islice(loader, 4))
    resumed = resumed_loaders([loader.state_dict() for loader in first], 2)
    for loader, want in zip(resumed, expect):
        for a, b in zip(want[4:], itertools.islice(loader, 5), strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_remainder_order_against_explicit_lists():
    """The lazily indexed remainder equals cutting the explicit concatenation of the old orders' tails, nested."""
    num_docs = 1000
    base = {(r, w): list(EpochOrder(num_docs, epoch=1, seed=7, shuffle=True, rank=r, world_size=w, max_block=64))
            for w in (3,) for r in range(w)}

    def cut(tails, rank, world_size):
        flat = list(itertools.chain.from_iterable(tails))
        return flat[len(flat) * rank // world_size: len(flat) * (rank + 1) // world_size]

    starts1 = [10, None, 0]
    level1 = {r: cut([base[(o, 3)][s:] for o, s in enumerate(starts1) if s is not None], r, 2) for r in range(2)}
    lazy1 = {r: RemainderOrder(lambda o: base[(o, 3)], starts1, r, 2) for r in range(2)}
    assert all(list(lazy1[r]) == level1[r] for r in range(2))
    starts2 = [5, 17]
    level2 = {r: cut([level1[o][s:] for o, s in enumerate(starts2)], r, 4) for r in range(4)}
    lazy2 = {r: RemainderOrder(lambda o: lazy1[o], starts2, r, 4) for r in range(4)}
    assert all(list(lazy2[r]) == level2[r] for r in range(4))
    assert sorted(itertools.chain(*level2.values())) == sorted(level1[0][5:] + level1[1][17:])


def test_resized_state_stays_small_for_a_billion_documents():
    """Nothing of size O(epoch) enters the state: 2 -> 1 -> 2 over 10^9 documents pickles to a few kB."""
    states = [{"version": 1, "fingerprint": {"num_docs": 10**9, "rank": r, "world_size": 2}, "epoch": 0,
               "cursor": 123_456_789 + r, "piece": 0, "piece_doc": None, "rows_in_epoch": 10, "batches": 10,
               "slots": 640, "rows": 10, "tokens": 600, "real_tokens": 600, "exhausted": False,
               "open_rows": [[r, 0, 5]], "ready_rows": [], "pending": [], "remainders": {}, "before_resize": {}}
              for r in range(2)]
    twice = resize_states(resize_states(states, 1), 2)
    buffer = io.BytesIO()
    torch.save(twice, buffer)
    assert len(buffer.getvalue()) < 8000
    assert twice[1]["remainders"][0][-2]["starts"] == [123_456_789, 123_456_790]
    assert twice[0]["before_resize"]["slots"] == 1280  # the global count: both old ranks' slots


def test_unresizable_states_are_refused_in_one_line():
    loaders = [PackedLoader(ArraySource(DOCS), SPEC, settings(r, 2)) for r in range(2)]
    states = [loader.state_dict() for loader in loaders]
    with pytest.raises(ElasticResumeError, match="rank 0 of 2, expected rank 1 of 2"):
        resize_states([states[0], states[0]], 1)
    saved_before_elastic = {k: v for k, v in states[1].items() if k != "piece_doc"} | {"piece": 3}
    with pytest.raises(ElasticResumeError, match="predates elastic resume"):
        resize_states([states[0], saved_before_elastic], 1)


def test_rows_after_a_resize_draw_mask_streams_no_earlier_row_drew():
    """A row's mask selection is its stream's first draws (every real token is selectable), so two rows masked from
    one stream select the same positions of their common real prefix. Rows start at index 0 again after a resize:
    keyed as before, the new rank's rows would reuse the old ranks' streams."""
    _, per_stage = run_stages([(2, 4), (1, 8)])

    def selections(stage):
        out = []
        for rank_batches in stage:
            for batch in rank_batches:
                for ids, labels in zip(batch["input_ids"].numpy(), batch["labels"].numpy()):
                    out.append((labels != IGNORE_INDEX)[: int((ids != PAD).sum())])
        return out

    before, after = selections(per_stage[0]), selections(per_stage[1])
    for new in after:
        for old in before:
            common = min(len(new), len(old))
            assert common < 32 or not np.array_equal(new[:common], old[:common]), "a mask stream was reused"
