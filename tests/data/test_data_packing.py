"""Best-fit packing (flexbert/data/packing.py): the placement policy against a naive re-implementation,
packing efficiency on two realistic length mixes, and the packed row / batch format."""

import itertools

import numpy as np
import pytest
import torch

from flexbert.data import (ArraySource, BatchSizeWarmup, BestFitPacker, LoaderSettings, MaskingSpec, PackedLoader,
                           split_packed_batch)

VOCAB, CLS, SEP, PAD, MASK = 1000, 1, 2, 0, 3


def make_docs(lengths, seed=0):
    """Documents [CLS] w... [SEP] with random content ids in [10, VOCAB)."""
    rng = np.random.default_rng(seed)
    docs = []
    for n in lengths:
        d = rng.integers(10, VOCAB, max(int(n), 2)).astype(np.uint16)
        d[0], d[-1] = CLS, SEP
        docs.append(d)
    return docs


def lognormal_lengths(n, mean, sigma, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n), 3).astype(int)


def masking(p=0.3):
    special = np.zeros(VOCAB, dtype=bool)
    special[:10] = True
    return MaskingSpec(p, MASK, special, np.arange(10, VOCAB))


def loader(docs, *, max_seq_len, microbatch, rows=2, packing=True, endless=True, shuffle=True):
    settings = LoaderSettings(max_seq_len=max_seq_len, microbatch_size=microbatch,
                              warmup=BatchSizeWarmup(rows, rows, 0), seed=5, pad_token_id=PAD, shuffle=shuffle,
                              endless=endless, sequence_packing=packing)
    return PackedLoader(ArraySource(docs), masking(), settings)


def naive_best_fit(lengths, row_len, max_open):
    """The documented policy, written the obvious way: rows are lists of item indices."""
    def room(row):
        return row_len - sum(lengths[i] for i in row)

    open_rows, emitted = [], []
    for i, n in enumerate(lengths):
        fitting = [(room(r), k) for k, r in enumerate(open_rows) if room(r) >= n]
        if fitting:
            target = open_rows[min(fitting)[1]]  # least room, then first opened
        else:
            if len(open_rows) == max_open:
                k = min((room(r), k) for k, r in enumerate(open_rows))[1]
                emitted.append(open_rows.pop(k))
            target = []
            open_rows.append(target)
        target.append(i)
        if room(target) == 0:
            emitted.append(open_rows.pop(next(k for k, r in enumerate(open_rows) if r is target)))
    return emitted + open_rows


@pytest.mark.parametrize("max_open", [1, 3, 8])
def test_best_fit_matches_naive_reference(max_open):
    rng = np.random.default_rng(max_open)
    row_len = 64
    lengths = list(rng.integers(1, 41, 400)) + [64, 32, 32, 64]  # exact fills too
    packer = BestFitPacker(row_len, max_open)
    rows = []
    for i, n in enumerate(lengths):
        rows += [[seg[0] for seg in r.segments] for r in packer.add((i, 0, int(n)), np.zeros(n))]
    rows += [[seg[0] for seg in r.segments] for r in packer.flush()]
    assert rows == naive_best_fit(lengths, row_len, max_open)


def efficiency_of(batches):
    ids = torch.cat([b["input_ids"] for b in batches])
    return float((ids != PAD).sum()) / ids.numel()


@pytest.mark.parametrize("mix", ["lognormal", "short"])
def test_packing_efficiency_at_least_99_percent(mix):
    max_seq_len, microbatch = 256, 8  # rows of 2048 slots
    if mix == "lognormal":  # mean max_seq_len / 3, heavy tail, some documents cut into pieces
        lengths = lognormal_lengths(9000, max_seq_len / 3, 1.0, seed=1)
    else:  # short-document corpus
        lengths = lognormal_lengths(40000, 20, 0.7, seed=2)
    stream = loader(make_docs(lengths), max_seq_len=max_seq_len, microbatch=microbatch)
    batches = list(itertools.islice(stream, 150))  # 300 rows of 2048 slots
    assert stream.state_dict()["epoch"] == 0  # inside the first epoch: no end-of-epoch flush counted
    assert efficiency_of(batches) >= 0.99


def check_row(ids, labels, pos, cu, max_seqlen, max_seq_len):
    """Row invariants, checked from first principles."""
    cu = cu[cu >= 0].numpy()
    assert cu[0] == 0 and (np.diff(cu) > 0).all()
    used = cu[-1]
    assert (ids[:used] != PAD).all() and (ids[used:] == PAD).all()  # pad only in the tail
    assert (labels[used:] == -100).all()
    lengths = np.diff(cu)
    assert lengths.max() == max_seqlen and lengths.max() <= max_seq_len
    expected_pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(len(ids) - used, int)])
    assert (pos.numpy() == expected_pos).all()


def test_row_format_and_split():
    max_seq_len, microbatch = 32, 4
    docs = make_docs(lognormal_lengths(600, 12, 1.0, seed=3), seed=3)
    batches = list(loader(docs, max_seq_len=max_seq_len, microbatch=microbatch, rows=3, endless=False))
    for b in batches:
        rows, row_len = b["input_ids"].shape
        assert row_len == max_seq_len * microbatch
        assert b["input_ids"].dtype == b["labels"].dtype == b["position_ids"].dtype == torch.int64
        assert b["cu_seqlens"].dtype == b["max_seqlen"].dtype == torch.int32
        assert b["cu_seqlens"].shape[0] == b["max_seqlen"].shape[0] == rows
        for i in range(rows):
            check_row(b["input_ids"][i], b["labels"][i], b["position_ids"][i], b["cu_seqlens"][i],
                      int(b["max_seqlen"][i]), max_seq_len)
        micro = split_packed_batch(b, microbatch)
        assert len(micro) == rows
        for i, m in enumerate(micro):
            assert m["input_ids"].shape == m["labels"].shape == m["position_ids"].shape == (1, row_len)
            assert m["cu_seqlens"].dim() == 1 and m["cu_seqlens"].dtype == torch.int32
            assert (m["cu_seqlens"] >= 0).all() and isinstance(m["max_seqlen"], int)
            assert torch.equal(m["input_ids"][0], b["input_ids"][i])
            n = int((b["cu_seqlens"][i] >= 0).sum())
            assert torch.equal(m["cu_seqlens"], b["cu_seqlens"][i, :n])


def test_no_packing_puts_one_document_per_sequence_slot():
    max_seq_len, microbatch = 32, 4
    docs = make_docs(lognormal_lengths(101, 12, 1.0, seed=4), seed=4)
    pieces = sum(-(-len(d) // max_seq_len) for d in docs)
    batches = list(loader(docs, max_seq_len=max_seq_len, microbatch=microbatch, rows=1, packing=False,
                          endless=False))
    counts = [int((b["cu_seqlens"][0] >= 0).sum()) - 1 for b in batches]
    assert sum(counts) == pieces
    assert all(c == microbatch for c in counts[:-1]) and 1 <= counts[-1] <= microbatch
