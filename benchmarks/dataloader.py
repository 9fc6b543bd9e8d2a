"""Packing + masking throughput of the training loader on one CPU core.

Synthetic log-normal document lengths (mean ~ max_seq_len / 3) at max_seq_len 1024,
microbatch 96 (rows of 98,304 slots), documents held in memory so only packing, row assembly, masking
and collation into torch tensors are timed. Target: >= 2M tokens/s on one core.

    python benchmarks/dataloader.py [--rows 120] [--rows-per-batch 6]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

# numpy, torch and the loader are imported inside the functions: `--help` answers without loading them.

VOCAB, CLS, SEP, PAD, MASK = 50368, 50281, 50282, 50283, 50284


def synthetic_docs(num_tokens: int, max_seq_len: int, seed: int = 0) -> list[np.ndarray]:
    """Log-normal lengths (sigma 1, mean max_seq_len / 3, at least 3), each doc [CLS] ... [SEP], uint16."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mean, sigma = max_seq_len / 3, 1.0
    lengths = np.maximum(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, int(num_tokens / mean * 1.1)), 3)
    ends = np.cumsum(lengths.astype(np.int64))
    tokens = rng.integers(0, 50000, int(ends[-1])).astype(np.uint16)
    tokens[ends - lengths.astype(np.int64)], tokens[ends - 1] = CLS, SEP
    return np.split(tokens, ends[:-1])  # views into one buffer


def synthetic_masking(p: float) -> MaskingSpec:
    import numpy as np

    from flexbert.data import MaskingSpec

    is_special = np.zeros(VOCAB, dtype=bool)
    is_special[50277:] = True  # the ModernBERT tokenizer's specials and unused ids live at the top
    return MaskingSpec(p, MASK, is_special, np.flatnonzero(~is_special))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--microbatch", type=int, default=96)
    parser.add_argument("--rows", type=int, default=120, help="packed rows to time")
    parser.add_argument("--rows-per-batch", type=int, default=6, help="rows per device batch (phase 1: 6)")
    args = parser.parse_args()
    import torch

    from flexbert.data import ArraySource, BatchSizeWarmup, LoaderSettings, PackedLoader

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly

    row_len = args.max_seq_len * args.microbatch
    docs = synthetic_docs(args.rows * row_len, args.max_seq_len)
    settings = LoaderSettings(max_seq_len=args.max_seq_len, microbatch_size=args.microbatch,
                              warmup=BatchSizeWarmup(args.rows_per_batch, args.rows_per_batch, 0), seed=17,
                              pad_token_id=PAD, shuffle=True)
    loader = PackedLoader(ArraySource(docs), synthetic_masking(0.3), settings)

    start = time.perf_counter()
    real = slots = 0
    for batch in itertools.islice(loader, args.rows // args.rows_per_batch):  # endless: no end-of-epoch flush
        cu = batch["cu_seqlens"]
        real += int(cu.max(dim=1).values.sum())
        slots += batch["input_ids"].numel()
    seconds = time.perf_counter() - start

    print(f"max_seq_len {args.max_seq_len}, microbatch {args.microbatch} (rows of {row_len:,} slots), "
          f"{args.rows_per_batch} rows per batch, {len(docs):,} documents, 1 thread")
    print(f"packed {slots // row_len} rows in {seconds:.2f} s: {real / seconds / 1e6:.2f} M tokens/s "
          f"({slots / seconds / 1e6:.2f} M slots/s)")
    print(f"packing efficiency {real / slots:.5f} (non-pad slots / all slots; loader's own statistic "
          f"{loader.packing_efficiency:.5f})")


if __name__ == "__main__":
    main()
