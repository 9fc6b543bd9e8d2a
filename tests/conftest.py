"""Shared tiny fixtures. Everything runs on CPU without network."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A ModernBERT-shaped model small enough for many CPU forward passes.
TINY_MODERNBERT = dict(
    vocab_size=128,
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


@pytest.fixture
def tiny_modernbert_kwargs():
    return dict(TINY_MODERNBERT)


def mixed_length_batch(batch: int, seq: int, vocab: int, lengths, seed: int = 0):
    """Right-padded random ids (special ids 0..4 avoided) and the attention mask for the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def build_tiny_corpus(root):
    """A small real corpus (stdlib docs + code), a 512-token BPE tokenizer and MDS shards at max_seq_len 64, under
    `root` (also used by benchmarks/fault_injection.py)."""
    from data_prep import build_demo_corpus, tokenize_to_mds, train_tokenizer

    assert build_demo_corpus.main(["--out", str(root / "corpus"), "--max-docs", "400", "--quiet"]) == 0
    assert train_tokenizer.main(["--input", str(root / "corpus" / "train.jsonl"), "--vocab-size", "512",
                                 "--out", str(root / "tokenizer"), "--quiet"]) == 0
    assert tokenize_to_mds.main(["--input", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
                                 "--out", str(root / "mds"), "--max-seq-len", "64", "--quiet"]) == 0
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


def tiny_run_overrides(root, save_folder, **extra) -> list[str]:
    """Overrides that shrink yamls/demo.yaml to seconds on CPU, reading the `tiny_corpus` data."""
    values = {
        "data_local": f"{root}/mds",
        "tokenizer_name": f"{root}/tokenizer",
        "max_seq_len": 64,
        "model.model_config.vocab_size": 512,
        "model.model_config.hidden_size": 64,
        "model.model_config.num_hidden_layers": 3,
        "model.model_config.num_attention_heads": 2,
        "model.model_config.intermediate_size": 96,
        "model.model_config.max_position_embeddings": 256,
        "model.model_config.sliding_window": 16,
        "global_train_batch_size": 16,
        "device_train_microbatch_size": 8,
        "global_eval_batch_size": 16,
        "device_eval_batch_size": 16,
        "train_loader.batch_size_warmup_min_size": 8,
        "train_loader.batch_size_warmup_tokens": "2000tok",
        "train_loader.num_workers": 0,
        "max_duration": "6ba",
        "eval_interval": "3ba",
        "eval_subset_num_batches": 2,
        "save_interval": "3ba",
        "save_folder": str(save_folder),
        "console_log_interval": "100ba",
        "callbacks.speed_monitor.window_size": 2,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def gloo_ranks():
    """Two CPU processes in one gloo process group, started once per session (see tests/gloo_ranks.py)."""
    from tests.gloo_ranks import GlooRanks

    ranks = GlooRanks(world_size=2)
    yield ranks
    ranks.close()
