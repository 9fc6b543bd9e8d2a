"""Training data: MDS documents -> best-fit sequence packing -> MLM masking -> resumable batches.

Modules, one job each:
  sources.py  document sources over MDS folders (local / streaming / in memory) and the epoch order
  mixture.py  stream mixtures (`dataset.streams`): per-epoch counts, the epoch layout, global document ids
  remote.py   object-store locations (s3://): parsing and the pre-flight check that fails in seconds
  packing.py  greedy best-fit packer, packed row and batch format, split into microbatches
  masking.py  MLM masking of a packed row (numpy, per-row random streams)
  warmup.py   batch-size warmup schedule (rows per step)
  seq_len_warmup.py  sequence-length warmup schedule (longest sequence per step; `algorithms.seq_warmup`)
  loader.py   the resumable PackedLoader, typed configs, Composer DataSpec, checkpoint callback, builder
"""

from flexbert.data.loader import (DATA_LOADERS, DatasetConfig, LoaderConfig, LoaderSettings, LoaderStateCallback,
                                  PackedLoader, build_packed_dataloader, make_data_spec)
from flexbert.config import IGNORE_INDEX
from flexbert.data.masking import MaskingSpec, mask_row, row_rng
from flexbert.data.packing import (BestFitPacker, SlotPacker, assemble_row, collate_rows, count_tokens,
                                   split_packed_batch)
from flexbert.data.sources import (ArraySource, EpochOrder, LocalMDSSource, StreamingMDSSource, open_source)
from flexbert.data.warmup import BatchSizeWarmup, parse_tokens, rows_per_device

__all__ = [
    "DATA_LOADERS", "DatasetConfig", "LoaderConfig", "LoaderSettings", "LoaderStateCallback", "PackedLoader",
    "build_packed_dataloader", "make_data_spec", "IGNORE_INDEX", "MaskingSpec", "mask_row", "row_rng",
    "BestFitPacker", "SlotPacker", "assemble_row", "collate_rows", "count_tokens", "split_packed_batch",
    "ArraySource", "EpochOrder", "LocalMDSSource", "StreamingMDSSource", "open_source", "BatchSizeWarmup",
    "parse_tokens", "rows_per_device",
]
