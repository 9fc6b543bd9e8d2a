"""Helpers the tests import: a tiny ModernBERT-shaped config and padded batches (fixtures are in conftest.py)."""

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# A ModernBERT-shaped model small enough for many CPU forward passes.
TINY_MODERNBERT = dict(
    vocab_size=128,
    attention_probs_dropout_prob=0.0,  # ModernBERT's; the declared default is bert-base-uncased's 0.1
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=96,
    pad_token_id=0,
    embedding_layer="sans_pos",
    attention_layer="rope",
    bert_layer="prenorm",
    mlp_layer="glu",
    normalization="layernorm",
    norm_kwargs={"eps": 1e-5, "bias": False},
    hidden_act="gelu",
    head_pred_act="gelu",
    sliding_window=8,
    global_attn_every_n_layers=3,
    rotary_emb_base=10000.0,
    local_attn_rotary_emb_base=-1,
    embed_norm=True,
    final_norm=True,
    skip_first_prenorm=True,
    init_method="full_megatron",
    tie_word_embeddings=True,
)

# The `uninterrupted_run` fixture's schedule: batches trained, batches between checkpoints.
UNINTERRUPTED_STEPS, UNINTERRUPTED_EVERY = 6, 2



def mixed_length_batch(batch: int, seq: int, vocab: int, lengths, seed: int = 0):
    """Right-padded random ids (special ids 0..4 avoided) and the attention mask for the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def as_killed_after(reference: Path, folder: Path, step: int, line_written: bool = True) -> None:
    """`folder` = `reference` as a SIGKILL right after checkpoint `step` would leave it: later checkpoints and lines
    gone; with line_written=False also step `step`'s own metrics line (Composer saves before loggers write)."""
    import json
    import os
    import shutil

    from flexbert.checkpoints.crash_safe import CHECKPOINT_NAME, LATEST

    shutil.copytree(reference, folder, symlinks=True)
    for name in os.listdir(folder):
        match = CHECKPOINT_NAME.match(name)
        if match and int(match.group(2)) > step:
            os.remove(folder / name)
    os.remove(folder / LATEST)
    os.symlink(f"ep0-ba{step}-rank0.pt", folder / LATEST)
    lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
    (folder / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["batch"] < step + line_written))


def process_alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
