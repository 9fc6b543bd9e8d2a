"""`composer -n 2 main.py` on CPU (gloo): DDP over two processes equals one process with the same global batch.

The fixed-length setup (tests/train/two_rank_run.py) makes both runs see the same rows with the same masks at every
step, so the final weights must agree to float precision (DDP averages the two ranks' gradients; one process
averages its two microbatches). The two-process run is the session fixture `two_process_run`, shared with the
multi-node test.
"""

import sys

import pytest
import torch

from tests.train import two_rank_run


def _weights(folder) -> dict:
    return torch.load(folder / "latest-rank0.pt", map_location="cpu", weights_only=False)["state"]["model"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process(tiny_corpus, fixed_length_data, two_process_run, tmp_path):
    one = tmp_path / "one"
    two_rank_run.run([sys.executable, "main.py", "yamls/demo.yaml",
                      *two_rank_run.overrides(tiny_corpus, fixed_length_data, one)])
    a, b = _weights(one), _weights(two_process_run)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    # training moved the weights, so the comparison is not between two untouched initializations
    first = torch.load(one / f"ep0-ba{two_rank_run.STEPS}-rank0.pt", map_location="cpu", weights_only=False)
    assert first["state"]["optimizers"]["StableAdamW"]["state"], "the optimizer never stepped"
