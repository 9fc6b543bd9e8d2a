"""What a StreamingDataset shared-memory clash means, said in one line.

mosaicml-streaming keeps one registry of shared memory per host: at start-up each node's local leader (local rank
0) picks the first free name (`/000000_locals`, `/000001_locals`, ...) and, after a barrier, creates it. It
assumes one node per host: two nodes of one run on the same host (two launchers with `--nproc` smaller than the
host's processes, as in a one-host test of a multi-node launch) pick the same free name, and the second leader's
creation fails with FileExistsError. Another job on the host starting at the same moment can do the same.
"""

from __future__ import annotations

import os

from flexbert.errors import DataError


def shared_memory_clash(err: FileExistsError, where: str) -> DataError:
    """The DataError to raise for a FileExistsError from StreamingDataset's start-up."""
    world, local_world = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    nodes = f"{world // max(local_world, 1)} nodes of {local_world} ranks, this is node {os.environ.get('NODE_RANK', 0)}"
    return DataError(f"dataset.streaming: true for '{where}': mosaicml-streaming could not create its shared memory "
                     f"'{err.filename}' (it exists): another StreamingDataset on this host registered the same name. "
                     f"Streaming expects one node per host; this run has {nodes}. Start one node per host, or read "
                     f"local shards with dataset.streaming: false")
