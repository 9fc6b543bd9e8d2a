"""Composer's per-node signal files, made unique per node, so that nodes sharing one file system do not collide.

Before autoresume and when loading a checkpoint, Composer's local rank 0 of every node writes a signal file that
the node's other ranks wait for, and removes it after a barrier. The name comes from
`composer.utils.dist.get_node_signal_file_name`, which builds `._signal_file_node{NODE_RANK}_{random}` and then
broadcasts rank 0's name to every rank: every node gets node 0's name. With the save folder on a file system that
all nodes share (the usual cluster setup, and two "nodes" on one host), every node's local rank 0 writes the same
file and the second to remove it fails with FileNotFoundError. Appending the node's own rank after the broadcast
keeps the name identical within a node (its ranks must wait for the same file) and distinct between nodes.
"""

from __future__ import annotations

_MARK = "_flexbert_node_unique"


def install_node_unique_signal_files() -> None:
    """Make `composer.utils.dist.get_node_signal_file_name` unique per node in this process (idempotent)."""
    from composer.utils import dist

    original = dist.get_node_signal_file_name
    if getattr(original, _MARK, False):
        return

    def get_node_signal_file_name(rng=None) -> str:
        return f"{original(rng)}_node{dist.get_node_rank()}"

    setattr(get_node_signal_file_name, _MARK, True)
    get_node_signal_file_name.__doc__ = original.__doc__
    # The trainer and checkpoint loader call it as `dist.get_node_signal_file_name()` at call time: this covers both.
    dist.get_node_signal_file_name = get_node_signal_file_name
