"""Ranks that read different documents take the same loader decisions, on two CPU processes in a gloo group
(tests/gloo_ranks.py): the batch-size warmup gives every rank the same number of rows at every step, and an eval
pass has the same number of batches on every rank. Rank r reads documents r, r+2, ... (no shuffling, blocks of
one document); even documents fill 20 of a row's 32 slots, odd ones are tiny, so rank 0 reads fewer real tokens
per row and packs its eval pass into more rows than rank 1."""

import numpy as np
import torch.distributed as dist

from flexbert.data.loader import LoaderSettings, PackedLoader
from flexbert.data.masking import MaskingSpec
from flexbert.data.sources import ArraySource
from flexbert.data.warmup import BatchSizeWarmup

MAX_SEQ_LEN, MICRO, FULL_ROWS, WARMUP_TOKENS = 32, 1, 3, 3_000  # rows of 32 slots
STEPS = 40


def _docs(n=400):
    rng = np.random.default_rng(0)
    return [rng.integers(5, 100, 20 if i % 2 == 0 else 3).astype(np.int64) for i in range(n)]


def _loader(rank, world_size, mode):
    warmup = (BatchSizeWarmup(1, FULL_ROWS, WARMUP_TOKENS) if mode == "train" else BatchSizeWarmup(2, 2, 0))
    settings = LoaderSettings(max_seq_len=MAX_SEQ_LEN, microbatch_size=MICRO, warmup=warmup, seed=1, pad_token_id=0,
                              rank=rank, world_size=world_size, shuffle=False, shuffle_block_size=1,
                              endless=mode == "train")
    masking = MaskingSpec(0.3, 4, np.arange(100) < 5, np.arange(5, 100))
    return PackedLoader(ArraySource(_docs()), masking, settings)


def _rows_and_eval_batches(rank):
    world_size = dist.get_world_size()
    train = _loader(rank, world_size, "train")
    rows, real_tokens = [], 0
    for _, batch in zip(range(STEPS), train):
        rows.append(batch["input_ids"].shape[0])
        real_tokens += int((batch["input_ids"] != 0).sum())
    eval_batches = sum(1 for _ in _loader(rank, world_size, "eval"))
    return rows, real_tokens, eval_batches


def test_ranks_reading_different_documents_take_the_same_batch_decisions(gloo_ranks):
    (rows_0, tokens_0, eval_0), (rows_1, tokens_1, eval_1) = gloo_ranks.run(_rows_and_eval_batches)
    assert tokens_0 < 0.8 * tokens_1  # the ranks really read different amounts of text
    # the schedule on the global slot clock, computed here: every rank steps through exactly these sizes
    schedule, slots, expected = BatchSizeWarmup(1, FULL_ROWS, WARMUP_TOKENS), 0, []
    for _ in range(STEPS):
        expected.append(schedule.rows_at(slots))
        slots += expected[-1] * MICRO * MAX_SEQ_LEN * 2
    assert set(expected) == {1, 2, 3}
    assert rows_0 == rows_1 == expected
    # eval: each rank alone (no process group here) would run passes of different lengths; together they stop
    # when the first one runs out
    alone = [sum(1 for _ in _loader(rank, 2, "eval")) for rank in range(2)]
    assert alone[0] != alone[1]
    assert eval_0 == eval_1 == min(alone)
