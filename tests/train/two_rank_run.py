"""The fixed-length two-rank setup that the multi-process and multi-node tests share (fixtures in conftest.py).

Documents are exactly one packed row long and read unshuffled with one-document shuffle blocks, so rank r of 2
reads documents r, r+2, ... and one process reads them all in order; masks are keyed by the global row index.
Every run of these overrides therefore sees the same rows with the same masks at every step, however its ranks
are launched. The run checkpoints every 3 batches (resume tests restart from ba3) and autoresumes.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.fault_injection import free_port
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

SEQ = 32
STEPS, SAVE_EVERY = 6, 3
COMPOSER = str(Path(sys.executable).parent / "composer")


def write_fixed_length_data(tokenizer_dir: Path, root: Path) -> Path:
    """64 train / 8 validation MDS documents of exactly SEQ tokens ([CLS] random non-special ids [SEP])."""
    from streaming import MDSWriter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = np.random.default_rng(0)
    specials = set(tok.all_special_ids)
    vocab = np.array([i for i in range(len(tok)) if i not in specials])
    for split, count in (("train", 64), ("validation", 8)):
        with MDSWriter(out=str(root / split), columns={"input_ids": "ndarray:uint16"}) as writer:
            for _ in range(count):
                body = rng.choice(vocab, SEQ - 2)
                writer.write({"input_ids": np.concatenate([[tok.cls_token_id], body, [tok.sep_token_id]]).astype(np.uint16)})
    return root


def overrides(tiny_corpus: Path, data: Path, folder: Path, **extra) -> list[str]:
    values = {
        "train_loader.dataset.shuffle": False,
        "train_loader.dataset.shuffle_block_size": 1,
        "train_loader.batch_size_warmup_min_size": "null",
        "train_loader.batch_size_warmup_tokens": "null",
        "train_loader.num_workers": 0,
        "model.model_config.sliding_window": 8,
        "loggers": "{}",
        "autoresume": "true",
        **extra,
    }
    return tiny_run_overrides(
        tiny_corpus, folder,
        data_local=str(data), max_seq_len=SEQ, device_train_microbatch_size=1, global_train_batch_size=2,
        global_eval_batch_size=2, device_eval_batch_size=1, max_duration=f"{STEPS}ba",
        save_interval=f"{SAVE_EVERY}ba", eval_interval=f"{STEPS}ba", eval_subset_num_batches=1, **values)


def run_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def single_node_command(args: list[str]) -> list[str]:
    """`composer -n 2 main.py yamls/demo.yaml ARGS` on a fresh rendezvous port."""
    return [COMPOSER, "-n", "2", "--master_port", str(free_port()), "main.py", "yamls/demo.yaml", *args]
