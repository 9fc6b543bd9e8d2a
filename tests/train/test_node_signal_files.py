"""Composer's per-node signal files on a file system that all nodes share (flexbert/train/node_signal_files.py).

The two gloo ranks run what Composer's autoresume and checkpoint loading do with the name, in one shared folder:
local rank 0 writes the file, the node's other ranks wait for it, all ranks meet at a barrier, local rank 0 removes
it. As two nodes of one rank each, unpatched Composer gives both nodes node 0's name, and the second removal fails
with FileNotFoundError; as one node of two ranks, both ranks must get the same name (rank 1 waits for rank 0's file).
"""

import os

import pytest


def _signal_file_round(rank: int, folder: str, nodes: int) -> str:
    from composer.utils import dist

    from flexbert.train.node_signal_files import install_node_unique_signal_files

    layout = {"NODE_RANK": rank, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1} if nodes == 2 else \
        {"NODE_RANK": 0, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": 2}
    saved_env = {key: os.environ.get(key) for key in layout}
    saved_function = dist.get_node_signal_file_name
    os.environ.update({key: str(value) for key, value in layout.items()})
    try:
        install_node_unique_signal_files()
        path = os.path.join(folder, dist.get_node_signal_file_name())
        if dist.get_local_rank() == 0:
            with open(path, "wb") as f:
                f.write(b"local_rank0_completed")
        with dist.local_rank_zero_download_and_wait(path):
            dist.barrier()
        if dist.get_local_rank() == 0:
            os.remove(path)  # (Composer meets at one more barrier here; without it a failing rank cannot hang the other)
        return os.path.basename(path)
    finally:
        dist.get_node_signal_file_name = saved_function  # the rank pool is shared with other tests
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _import_composer(rank: int) -> None:
    import composer.utils.dist  # noqa: F401


@pytest.fixture
def ranks_with_composer(gloo_ranks):
    """The session's two ranks with composer imported, in a call of its own: its import alone can take minutes on a
    loaded machine, beyond the time a call with collectives may take."""
    gloo_ranks.run(_import_composer, timeout=600)
    return gloo_ranks


@pytest.mark.multiprocess
def test_two_nodes_sharing_a_folder_get_their_own_signal_files(ranks_with_composer, tmp_path):
    node0, node1 = ranks_with_composer.run(_signal_file_round, str(tmp_path), 2)
    assert node0 != node1
    assert os.listdir(tmp_path) == []


@pytest.mark.multiprocess
def test_the_ranks_of_one_node_share_its_signal_file(ranks_with_composer, tmp_path):
    rank0, rank1 = ranks_with_composer.run(_signal_file_round, str(tmp_path), 1)
    assert rank0 == rank1
    assert os.listdir(tmp_path) == []
