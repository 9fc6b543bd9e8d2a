"""Two nodes of one run on one host reading through StreamingDataset (flexbert/data/streaming_nodes.py).

mosaicml-streaming expects one node per host: both nodes' local leaders pick the same free shared-memory name and
the second one's creation fails. The rank that hits it must say so in one line (what happened, the fix), not
end in a bare FileExistsError about '/000000_locals'.
"""

import os
import subprocess
import sys

import pytest

from benchmarks.fault_injection import free_port
from tests.helpers import ROOT

# One rank of a two-node run with one rank per node, all on this host: what `composer --world_size 2 --nproc 1
# --node_rank N` sets up, without the launcher.
OPEN_AS_NODE = """
import os, sys
import torch.distributed as dist
from flexbert.data.sources import open_source
from flexbert.errors import DataError

dist.init_process_group("gloo")
try:
    open_source(sys.argv[1], None, "train", streaming=True)
except DataError as err:
    print(f"error: {err}")
    sys.exit(2)
print("opened")
dist.barrier()
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_nodes_on_one_host_get_a_clear_error_from_streaming(tiny_corpus):
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(node), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
               "LOCAL_WORLD_SIZE": "1", "NODE_RANK": str(node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-c", OPEN_AS_NODE, str(tiny_corpus / "mds")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=600)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
    clear = [out for out in outputs if "Streaming expects one node per host" in out]
    assert len(clear) == 1, "\n---\n".join(outputs)
    line = next(line for line in clear[0].splitlines() if line.startswith("error: "))
    assert "dataset.streaming: false" in line and "2 nodes of 1 ranks" in line
    assert "Traceback" not in clear[0]
