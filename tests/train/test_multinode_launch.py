"""Two "nodes" on localhost equal one node: `composer --world_size 2 --nproc 1 --node_rank {0,1} --master_addr
127.0.0.1` started as two concurrent launchers (gloo on CPU) trains, checkpoints and resumes exactly like
`composer -n 2` on one node (the session fixture `two_process_run`).

Both launches run the same two ranks on the same rows (tests/train/two_rank_run.py) and the all-reduce of two
ranks adds the same two numbers, so the comparison is exact: torch.equal on every weight and the same train loss
at every step. Only how the ranks were started differs (NODE_RANK, LOCAL_RANK 0 and LOCAL_WORLD_SIZE 1 on both).
"""

import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import fault_injection as fi
from tests.helpers import ROOT, as_killed_after
from tests.train import two_rank_run

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _launch_two_nodes(args: list[str], logs: Path) -> list[str]:
    """Start both node launchers at once, wait for both; returns their console output (node 0, node 1)."""
    port = fi.free_port()
    procs, paths = [], []
    for node in (0, 1):
        cmd = [two_rank_run.COMPOSER, "--world_size", "2", "--nproc", "1", "--node_rank", str(node),
               "--master_addr", "127.0.0.1", "--master_port", str(port), "main.py", "yamls/demo.yaml", *args]
        paths.append(logs / f"node{node}.log")
        with open(paths[-1], "w") as log:  # a file, not a pipe: a node never blocks on a full pipe we are not reading
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=two_rank_run.run_env(), stdout=log,
                                          stderr=subprocess.STDOUT))
    try:
        codes = [proc.wait(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outputs = [path.read_text() for path in paths]
    assert codes == [0, 0], "\n".join(f"--- node {n} (exit {c}):\n{o[-4000:]}" for n, (c, o) in
                                      enumerate(zip(codes, outputs)))
    return outputs


def _assert_same_run(reference: Path, folder: Path) -> None:
    a, b = fi.final_model_state(reference), fi.final_model_state(folder)
    assert a.keys() == b.keys()
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"final weights differ from the one-node run: {differ}"
    assert fi.metrics_problems(fi.metrics_lines(reference), fi.metrics_lines(folder)) == []
    assert [r["batch"] for r in fi.metrics_lines(folder)] == list(range(1, two_rank_run.STEPS + 1))


def test_two_nodes_train_checkpoint_and_resume_like_one_node(tiny_corpus, fixed_length_data, two_process_run,
                                                             tmp_path):
    nodes = tmp_path / "two_nodes"
    _launch_two_nodes(two_rank_run.overrides(tiny_corpus, fixed_length_data, nodes), tmp_path)
    _assert_same_run(two_process_run, nodes)
    # global rank 0 alone wrote the shared folder: no file of rank 1 and no leftover signal file of either node
    assert sorted(p.name for p in nodes.iterdir()) == sorted(p.name for p in two_process_run.iterdir())

    resumed = tmp_path / "resumed"
    as_killed_after(nodes, resumed, two_rank_run.SAVE_EVERY)  # the two-node run's own mid-run checkpoint
    node0, _ = _launch_two_nodes(two_rank_run.overrides(tiny_corpus, fixed_length_data, resumed), tmp_path)
    assert f"at step {two_rank_run.SAVE_EVERY} (autoresume)" in node0
    _assert_same_run(two_process_run, resumed)
