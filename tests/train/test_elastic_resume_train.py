"""Elastic resume through the trainer: a run on 2 CPU ranks (gloo) resumes on 1, then on 2 again (autoresume, one
save folder), and the documents it trained on form a ledger -- every document of the epoch exactly once, whole.

Each document starts [CLS] a b with (a, b) encoding its id, so a batch alone names the documents of each packed
sequence (segments from `cu_seqlens`, masked tokens restored from the labels). The run stops inside the epoch; the
rest of the epoch is read from its last checkpoint's loader states, and the trained part plus the rest must be the
epoch. Composer's step and token clocks must continue across both resizes (tokens: the real tokens of every batch
every rank trained on, counted here).
"""

import collections
import dataclasses

import numpy as np
import pytest
import torch

from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

NUM_DOCS, SEQ = 800, 64  # an epoch (~26k tokens) outlasts the 6 steps (~6k) and the packer's read-ahead
SAVE_EVERY = 2  # steps per segment: 2 ranks, then 1, then 2


def _id_tokens(tokenizer):
    specials = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in specials])


def write_id_docs(root, tokenizer_dir):
    """NUM_DOCS documents of 4..58 tokens under root/train: [CLS] a b body [SEP], (a, b) = the document id in base
    len(vocab); 8 under root/validation. Returns {doc id: length} of the train split."""
    from streaming import MDSWriter
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = _id_tokens(tokenizer)
    rng = np.random.default_rng(0)
    lengths = {}
    for split, count in (("train", NUM_DOCS), ("validation", 8)):
        with MDSWriter(out=str(root / split), columns={"input_ids": "ndarray:uint16"}) as writer:
            for doc in range(count):
                body = rng.choice(vocab, int(rng.integers(1, 55)))
                ids = [tokenizer.cls_token_id, vocab[doc % len(vocab)], vocab[doc // len(vocab)], *body,
                       tokenizer.sep_token_id]
                writer.write({"input_ids": np.asarray(ids, dtype=np.uint16)})
                if split == "train":
                    lengths[doc] = len(ids)
    return lengths


@pytest.fixture(scope="module")
def id_data(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("id_docs")
    return root, write_id_docs(root, tiny_corpus / "tokenizer")


def _documents(batch, vocab, vocab_index, cls_id):
    """(doc id, length) of every packed sequence of a batch, read from the batch alone."""
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    original = np.where(labels != -100, labels, ids)
    out = []
    for row, cu in zip(original, batch["cu_seqlens"].numpy()):
        cu = cu[cu >= 0]
        for start, end in zip(cu[:-1], cu[1:]):
            assert row[start] == cls_id, "a packed sequence does not start with [CLS]"
            low, high = vocab_index[row[start + 1]], vocab_index[row[start + 2]]
            out.append((int(low + high * len(vocab)), int(end - start)))
    return out


def _overrides(tiny_corpus, data, folder, steps):
    return tiny_run_overrides(
        tiny_corpus, folder, data_local=str(data), max_seq_len=SEQ, max_duration=f"{steps}ba",
        save_interval=f"{SAVE_EVERY}ba", eval_interval="100ba", eval_subset_num_batches=1, autoresume=True,
        run_name="elastic", save_num_checkpoints_to_keep=-1,
        **{"train_loader.dataset.shuffle": True, "train_loader.dataset.shuffle_block_size": 64,
           "train_loader.sequence_packing": True, "train_loader.dataset.streaming": False, "loggers": "{}"})


def _train_segment(rank, overrides):
    """Train one segment on this rank; return the batches it trained on and Composer's clocks at the end."""
    import os

    os.environ.setdefault("NODE_RANK", "0")  # Composer reads it once a process group exists; one node here
    from composer.core import Callback

    from flexbert.folder_lock import release_folder
    from flexbert.train.run_config import load_run_config
    from flexbert.train.trainer import fit, start_run

    class Record(Callback):
        def __init__(self):
            self.batches = []

        def after_dataloader(self, state, logger):
            self.batches.append({k: state.batch[k].clone() for k in ("input_ids", "labels", "cu_seqlens")})

    cfg = load_run_config(str(ROOT / "yamls" / "demo.yaml"), overrides)
    trainer, plan = start_run(cfg)
    record = Record()
    trainer.state.callbacks.append(record)
    started = int(trainer.state.timestamp.batch)
    fit(trainer, cfg, plan.reset_time)
    clock = trainer.state.timestamp
    result = (started, int(clock.batch), int(clock.token), int(clock.sample), record.batches)
    trainer.close()
    release_folder(plan.save_folder)  # as the process's exit would: the next segment takes the folder
    return result


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_one_two_ranks_train_every_document_once(tiny_corpus, id_data, gloo_ranks, tmp_path):
    from transformers import AutoTokenizer

    from flexbert.data.elastic import resize_states
    from flexbert.data.loader import PackedLoader

    data, lengths = id_data
    tokenizer = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    vocab = _id_tokens(tokenizer)
    vocab_index = np.full(len(tokenizer), -1)
    vocab_index[vocab] = np.arange(len(vocab))
    folder = tmp_path / "run"

    # A segment imports Composer and trains: minutes on a loaded machine, more than the pool's limit for one call
    # (which is there to catch a hung collective).
    limit, gloo_ranks.timeout = gloo_ranks.timeout, 600
    try:
        segments = [gloo_ranks.run(_train_segment, _overrides(tiny_corpus, data, folder, SAVE_EVERY)),
                    [_train_segment(0, _overrides(tiny_corpus, data, folder, 2 * SAVE_EVERY))],
                    gloo_ranks.run(_train_segment, _overrides(tiny_corpus, data, folder, 3 * SAVE_EVERY))]
    finally:
        gloo_ranks.timeout = limit

    trained, tokens, samples = collections.Counter(), 0, 0
    for step, ranks in enumerate(segments):
        assert [r[0] for r in ranks] == [step * SAVE_EVERY] * len(ranks)  # each segment resumed the last one
        for _, _, _, _, batches in ranks:
            assert len(batches) == SAVE_EVERY
            for batch in batches:
                trained.update(_documents(batch, vocab, vocab_index, tokenizer.cls_token_id))
                tokens += int((batch["input_ids"] != tokenizer.pad_token_id).sum())
                samples += batch["input_ids"].shape[0] * 8  # a packed row holds 8 sequence slots
        for _, batch_clock, token_clock, sample_clock, _ in ranks:  # Composer's global clocks continue
            assert (batch_clock, token_clock, sample_clock) == ((step + 1) * SAVE_EVERY, tokens, samples)

    # The rest of the epoch, from the last checkpoint's loader states: the trained part plus it is the epoch.
    checkpoint = torch.load(folder / "latest-rank0.pt", map_location="cpu", weights_only=False)
    states = checkpoint["state"]["callbacks"]["LoaderStateCallback"]["ranks"]
    assert len(states) == 2 and all(s["epoch"] == 0 for s in states)
    from flexbert.train.builders import build_loader
    from flexbert.train.run_config import load_run_config

    cfg = load_run_config(str(ROOT / "yamls" / "demo.yaml"), _overrides(tiny_corpus, data, folder, 3 * SAVE_EVERY))
    training = build_loader(cfg, tokenizer, "train_loader", 16, 8).dataloader
    to_epoch_end = dataclasses.replace(training.settings, endless=False, drop_last=False)  # its last batch is short
    one_epoch = PackedLoader(training.source, training.masking, to_epoch_end)
    one_epoch.load_state_dict(resize_states(states, 1)[0])
    rest = collections.Counter()
    for batch in one_epoch:
        rest.update(_documents(batch, vocab, vocab_index, tokenizer.cls_token_id))
    assert sum(trained.values()) > 0 and sum(rest.values()) > 0
    times = collections.Counter(doc for doc, _ in (trained + rest).elements())
    assert not {doc for doc, n in times.items() if n > 1}, "documents trained twice"
    assert set(times) == set(lengths), f"documents lost: {sorted(set(lengths) - set(times))[:10]}"
    assert all(length == lengths[doc] for doc, length in trained + rest), "a document was cut"


def test_random_states_of_another_world_size_restore_the_common_ranks_with_one_line():
    import random
    import warnings

    from composer.utils import reproducibility

    from flexbert.train.rng_resume import ResumeRngStates

    saved = reproducibility.get_rng_state()
    expected = torch.rand(3), random.random()
    torch.manual_seed(1234)  # move away from the saved state
    callback = ResumeRngStates()
    callback._states = [saved[0], saved[0]]  # two ranks saved, this run has one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.fit_start(None, None)
    assert (torch.rand(3), random.random())[1] == expected[1]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("the checkpoint holds the random states of 2 ranks, this "
                                                         "run has 1: rank 0 restores"), messages
