"""`composer -n 2 main.py` on CPU (gloo): DDP over two processes equals one process with the same global batch.

Documents are exactly one packed row long and read unshuffled with one-document shuffle blocks, so rank r of 2
reads documents r, r+2, ... and one process reads them all in order; masks are keyed by the global row index.
Both runs therefore see the same rows with the same masks at every step, and the final weights must agree to
float precision (DDP averages the two ranks' gradients; one process averages its two microbatches).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

SEQ = 32


@pytest.fixture(scope="module")
def fixed_length_data(tiny_corpus, tmp_path_factory):
    from streaming import MDSWriter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    root = tmp_path_factory.mktemp("fixed")
    rng = np.random.default_rng(0)
    specials = set(tok.all_special_ids)
    vocab = np.array([i for i in range(len(tok)) if i not in specials])
    for split, count in (("train", 64), ("validation", 8)):
        with MDSWriter(out=str(root / split), columns={"input_ids": "ndarray:uint16"}) as writer:
            for _ in range(count):
                body = rng.choice(vocab, SEQ - 2)
                writer.write({"input_ids": np.concatenate([[tok.cls_token_id], body, [tok.sep_token_id]]).astype(np.uint16)})
    return root


def _overrides(tiny_corpus, data, folder):
    return tiny_run_overrides(
        tiny_corpus, folder,
        data_local=str(data), max_seq_len=SEQ, device_train_microbatch_size=1, global_train_batch_size=2,
        global_eval_batch_size=2, device_eval_batch_size=1, max_duration="6ba", save_interval="6ba",
        eval_interval="6ba", eval_subset_num_batches=1,
        **{
            "train_loader.dataset.shuffle": False,
            "train_loader.dataset.shuffle_block_size": 1,
            "train_loader.batch_size_warmup_min_size": "null",
            "train_loader.batch_size_warmup_tokens": "null",
            "train_loader.num_workers": 0,
            "model.model_config.sliding_window": 8,
            "loggers": "{}",
        },
    )


def _run(cmd, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def _weights(folder: Path) -> dict:
    state = torch.load(folder / "latest-rank0.pt", map_location="cpu", weights_only=False)["state"]["model"]
    return {k: v for k, v in state.items()}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process(tiny_corpus, fixed_length_data, tmp_path):
    composer = Path(sys.executable).parent / "composer"
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "main.py", "yamls/demo.yaml", *_overrides(tiny_corpus, fixed_length_data, one)], ROOT)
    _run([str(composer), "-n", "2", "--master_port", "29517", "main.py", "yamls/demo.yaml",
          *_overrides(tiny_corpus, fixed_length_data, two)], ROOT)
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    # training moved the weights, so the comparison is not between two untouched initializations
    first = torch.load(one / "ep0-ba6-rank0.pt", map_location="cpu", weights_only=False)["state"]["optimizers"]
    assert first["StableAdamW"]["state"], "the optimizer never stepped"
