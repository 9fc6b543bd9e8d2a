"""Run-file keys of the maintained FlexBERT forks (mmBERT, Ettin), on fixtures these tests write: special-token ids in
the loader section for a tokenizer without a mask token (Gemma's), the sequence length taken from the training
dataset when the file has no top-level max_seq_len, `reset_time_once`, and the reference's rule that packing and the
batch-size warmup apply to local shards only."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flexbert.schema import ConfigError
from flexbert.train.builders import build_loader, build_tokenizer, model_config_from
from flexbert.train.run_config import load_run_config
from flexbert.train.trainer import main
from flexbert.train.validate import validate_run
from tests.data.test_data_loader import build as build_test_loader
from tests.data.test_data_loader import write_mds
from tests.train.test_run_config import _tiny_run_file

PAD, EOS, BOS, UNK, MASK = 0, 1, 2, 3, 4  # Gemma's ids; its tokenizer config names no mask, cls or sep token


@pytest.fixture(scope="module")
def gemma_like(tmp_path_factory):
    """A tokenizer with pad/eos/bos/unk roles and an unassigned `<mask>` token, and MDS shards made with it."""
    root = tmp_path_factory.mktemp("gemma_like")
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": UNK, "<mask>": MASK}
    vocab.update({f"w{i}": i + 5 for i in range(300)})
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    assert tokenizer.mask_token_id is None and tokenizer.cls_token_id is None
    tokenizer.save_pretrained(root / "tokenizer")
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[BOS], rng.integers(5, 305, int(rng.integers(5, 90))), [EOS]]).astype(np.uint16)
            for _ in range(300)]
    write_mds(root / "mds", docs)
    write_mds(root / "mds", docs[:20], split="validation")
    return root


ROLES = """
  bos_token_id: 2
  eos_token_id: 1
  sep_token_id: 1
  pad_token_id: 0
  mask_token_id: 4
"""


def _mmbert_like(root: Path, path: Path, loader_extra: str = ROLES, extra: str = "") -> Path:
    """The mmBERT run files' structure: token ids in train_loader, packed local shards, the sequence length given
    only by the dataset."""
    text = _tiny_run_file(root, path, extra).read_text()
    text = text.replace("max_seq_len: 64\nmodel:", "model:").replace("max_seq_len: ${max_seq_len}", "max_seq_len: 64")
    text = text.replace("  num_workers: 0\neval_loader:", f"  num_workers: 0\n  sequence_packing: true\n{loader_extra}"
                                                          "eval_loader:")
    path.write_text(text)
    return path


def test_special_token_ids_give_a_gemma_like_tokenizer_its_mask(gemma_like, tmp_path):
    bare = load_run_config(str(_mmbert_like(gemma_like, tmp_path / "bare.yaml", loader_extra="")))
    with pytest.raises(ConfigError, match="no mask_token.*train_loader.mask_token_id"):
        validate_run(bare)

    cfg = load_run_config(str(_mmbert_like(gemma_like, tmp_path / "run.yaml")))
    assert cfg.max_seq_len == 64  # from train_loader.dataset: the file has no top-level max_seq_len
    validate_run(cfg)
    tokenizer = build_tokenizer(cfg)
    assert (tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.sep_token_id,
            tokenizer.cls_token_id) == (MASK, PAD, BOS, EOS, BOS)
    assert model_config_from(cfg, tokenizer).pad_token_id == PAD
    spec = build_loader(cfg, tokenizer, "train_loader", 8, 4)
    masked = positions = 0
    for batch in itertools.islice(spec.dataloader, 4):
        labels, inputs = batch["labels"], batch["input_ids"]
        target = labels != -100
        masked += int((inputs[target] == MASK).sum())
        positions += int(target.sum())
        assert not bool(((labels == BOS) | (labels == EOS)).any())  # special tokens are never chosen
        for row, cu in zip(inputs, batch["cu_seqlens"]):
            assert bool((row[int(cu.max()):] == PAD).all())  # padding slots hold the pad id
    assert positions > 100 and 0.7 < masked / positions < 0.9  # 80% of the chosen positions read <mask>


@pytest.mark.parametrize("loader_extra,message", [
    (ROLES.replace("mask_token_id: 4", "mask_token_id: 9999"), "train_loader.mask_token_id.*9999"),
    (ROLES.replace("mask_token_id: 4", "mask_token_id: maybe"), "mask_token_id"),
])
def test_bad_token_ids_name_the_key(gemma_like, tmp_path, loader_extra, message):
    with pytest.raises(ConfigError, match=message):
        validate_run(load_run_config(str(_mmbert_like(gemma_like, tmp_path / "run.yaml", loader_extra=loader_extra))))


def test_the_eval_loader_must_agree_with_the_train_loader(gemma_like, tmp_path):
    path = _mmbert_like(gemma_like, tmp_path / "run.yaml")
    path.write_text(path.read_text().replace("    streaming: false\n  num_workers: 0\nscheduler",
                                             "    streaming: false\n  num_workers: 0\n  mask_token_id: 3\nscheduler"))
    with pytest.raises(ConfigError, match="eval_loader.mask_token_id.*one tokenizer"):
        validate_run(load_run_config(str(path)))


@pytest.mark.slow
def test_mmbert_like_phases_chain_with_reset_time_once(gemma_like, tmp_path, monkeypatch):
    """Phase 2 has no top-level max_seq_len, starts from phase 1 with reset_time_once, and its clock restarts at
    zero once: an autoresume of phase 2 continues it."""
    monkeypatch.chdir(tmp_path)
    common = "save_folder: checkpoints/{run_name}\nsave_interval: 2ba\n"
    p1 = _mmbert_like(gemma_like, tmp_path / "p1.yaml", extra=common + "run_name: p1\n")
    p2 = _mmbert_like(gemma_like, tmp_path / "p2.yaml", extra=common + "run_name: p2\nautoresume: true\n"
                      "load_path: checkpoints/p1/latest-rank0.pt\nreset_time_once: true\n")
    assert main([str(p1)]) == 0
    assert main([str(p2), "max_duration=2ba"]) == 0  # stops after its first checkpoint, at batch 2 of phase 2
    assert main([str(p2)]) == 0  # autoresume: continues at batch 3, no second reset
    records = [json.loads(x) for x in (tmp_path / "checkpoints" / "p2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records if "loss/train/total" in r] == [1, 2, 3]
    state = torch.load(tmp_path / "checkpoints" / "p2" / "latest-rank0.pt", map_location="cpu", weights_only=False)
    assert state["state"]["timestamp"]["Timestamp"]["batch"] == 3


def test_reset_time_without_load_path_warns(gemma_like, tmp_path):
    cfg = load_run_config(str(_mmbert_like(gemma_like, tmp_path / "run.yaml", extra="reset_time_once: true\n")))
    with pytest.warns(UserWarning, match="reset_time_once` has no effect without load_path"):
        validate_run(cfg)


# ------------------------------------------------------------------------- packing and warmup: local shards only
def test_batch_size_warmup_needs_packing(corpus_folder):
    warmup = {"batch_size_warmup_min_size": 4, "batch_size_warmup_tokens": "100000tok"}
    with pytest.warns(UserWarning, match="batch_size_warmup_min_size, batch_size_warmup_tokens"):
        unpacked = build_test_loader(corpus_folder, rows=3, sequence_packing=False, **warmup).dataloader
    assert [b["input_ids"].shape[0] for b in itertools.islice(unpacked, 5)] == [3] * 5  # full from the first step
    packed = build_test_loader(corpus_folder, rows=3, **warmup).dataloader
    assert [b["input_ids"].shape[0] for b in itertools.islice(packed, 5)] == [1] * 5  # warming up


def test_packing_reads_local_shards_only(corpus_folder):
    with pytest.warns(UserWarning, match="sequence_packing: true has no effect with dataset.streaming: true"):
        streamed = build_test_loader(corpus_folder, dataset={"streaming": True}).dataloader
    batch = next(iter(streamed))
    assert all(int((cu >= 0).sum()) - 1 == 4 for cu in batch["cu_seqlens"])  # one document per sequence slot


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    from tests.data.test_data_loader import make_docs

    folder = tmp_path_factory.mktemp("mds")
    write_mds(folder, make_docs(200))
    return folder
