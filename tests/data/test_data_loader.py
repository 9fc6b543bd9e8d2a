"""The resumable packed loader (flexbert/data/loader.py, sources.py, warmup.py): every document exactly
once per epoch and intact, disjoint ranks, bit-exact resume, batch-size warmup, error propagation from
the prefetch thread, clear errors, DataSpec counts, and a Composer checkpoint round trip."""

import collections
import io
import itertools
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from streaming import MDSWriter

from flexbert.schema import ConfigError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flexbert.data import (ArraySource, BatchSizeWarmup, LoaderSettings, LoaderStateCallback, MaskingSpec,
                           PackedLoader, build_packed_dataloader, open_source, rows_per_device)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, CLS, SEP = 0, 2, 3
MAX_SEQ_LEN, MICRO = 64, 4  # rows of 256 slots


def tiny_tokenizer(words=300):
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i + len(SPECIALS) for i in range(words)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


TOK = tiny_tokenizer()


def make_docs(n, seed=0, long_every=25):
    """[CLS] words [SEP]; the first two words encode the index (unique docs); some exceed MAX_SEQ_LEN."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        length = int(rng.integers(150, 300)) if i % long_every == 0 else int(rng.integers(1, 50))
        words = np.concatenate([[5 + i % 300, 5 + i // 300], rng.integers(5, 305, length)])
        docs.append(np.concatenate([[CLS], words, [SEP]]).astype(np.uint16))
    return docs


def write_mds(folder, docs, split="train", column="input_ids", size_limit=1 << 12):
    encoding = {"input_ids": "ndarray:uint16", "text": "str"}[column]
    with MDSWriter(out=str(folder / split), columns={column: encoding}, size_limit=size_limit) as writer:
        for d in docs:
            writer.write({column: d})


def cfg(local, split="train", **over):
    dataset = {"local": str(local), "split": split, "shuffle": True, "shuffle_seed": 3, "max_seq_len": MAX_SEQ_LEN,
               "streaming": False, **over.pop("dataset", {})}
    return {"name": "text", "dataset": dataset, "drop_last": False, "num_workers": 0, "sequence_packing": True,
            "split_long_documents": True,
            **over}


def build(local, *, rows=2, rank=0, world_size=1, mode="train", **over):
    spec = build_packed_dataloader(cfg(local, **over), TOK, device_batch_size=rows * MICRO, microbatch_size=MICRO,
                                   max_seq_len=MAX_SEQ_LEN, seed=11, rank=rank, world_size=world_size, mode=mode)
    return spec


def expected_pieces(docs):
    return collections.Counter(tuple(d[i:i + MAX_SEQ_LEN].tolist()) for d in docs
                               for i in range(0, len(d), MAX_SEQ_LEN))


def segments(batches):
    """Original (unmasked) token segments of every real document, in row order, from batches alone."""
    out = []
    for b in batches:
        original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
        for row, cu in zip(original, b["cu_seqlens"]):
            cu = cu[cu >= 0].tolist()
            out += [tuple(row[s:e].tolist()) for s, e in zip(cu[:-1], cu[1:])]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mds")
    docs = make_docs(300)
    write_mds(folder, docs)
    write_mds(folder, make_docs(40, seed=1), split="validation")
    return folder, docs


@contextmanager
def time_limit(seconds):
    def fail(signum, frame):
        raise TimeoutError(f"no result within {seconds} s: the loader hangs")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------ epochs
def test_eval_pass_reads_every_document_once_intact_across_two_ranks(corpus):
    folder, docs = corpus
    seen = collections.Counter()
    for rank in range(2):
        spec = build(folder, rank=rank, world_size=2, mode="eval")
        rank_segments = segments(spec.dataloader)
        assert rank_segments
        seen.update(rank_segments)
        assert segments(spec.dataloader) == rank_segments  # eval order is deterministic, pass after pass
    assert seen == expected_pieces(docs)  # each piece once over both ranks: intact, disjoint, complete


def test_training_stream_covers_each_epoch_exactly_once_and_reshuffles(corpus):
    folder, docs = corpus
    expected = expected_pieces(docs)
    m = sum(expected.values())
    stream = segments(itertools.islice(build(folder, num_workers=2).dataloader, 130))
    assert len(stream) >= 2 * m
    first, second = stream[:m], stream[m:2 * m]
    assert collections.Counter(first) == expected and collections.Counter(second) == expected
    assert first != second


# ------------------------------------------------------------------------------------------ resume
def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what a checkpoint can carry


def warmup_cfg():
    return {"batch_size_warmup_min_size": MICRO, "batch_size_warmup_tokens": "6000tok"}


def test_resume_is_bit_exact_inside_an_epoch_and_across_the_boundary(corpus):
    folder, _ = corpus
    reference = build(folder, rows=3, **warmup_cfg()).dataloader
    batches, states = [], []
    for b in itertools.islice(reference, 45):
        batches.append(b)
        states.append(reference.state_dict())
    epochs = [s["epoch"] for s in states]
    boundary = epochs.index(1) + 1  # batches consumed when the state first lies in epoch 1
    resume_points = {
        "mid-document, epoch 0, during warmup": next(k for k, s in enumerate(states, 1) if s["piece"] > 0),
        "resumed batches cross the epoch boundary": boundary - 2,
        "rows packed but not yet batched, epoch 1": next(k for k, s in enumerate(states, 1) if s["ready_rows"]),
    }
    assert epochs[resume_points["rows packed but not yet batched, epoch 1"] - 1] >= 1
    for why, k in resume_points.items():
        first = build(folder, rows=3, num_workers=3, **warmup_cfg()).dataloader  # prefetch reads ahead
        consumed = list(itertools.islice(first, k))
        state = roundtrip(first.state_dict())
        assert state["batches"] == k and state["epoch"] == epochs[k - 1], why
        resumed = build(folder, rows=3, num_workers=2, **warmup_cfg()).dataloader
        resumed.load_state_dict(state)
        got = consumed + list(itertools.islice(resumed, 10))
        for expect, batch in zip(batches[: k + 10], got, strict=True):
            assert expect.keys() == batch.keys()
            assert all(torch.equal(expect[key], batch[key]) for key in expect), why


def test_state_from_another_setup_is_refused(corpus):
    folder, _ = corpus
    loader = build(folder).dataloader
    next(iter(loader))
    other = build(folder, rank=1, world_size=2).dataloader
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(loader.state_dict())


# ------------------------------------------------------------------------------------------ warmup
def test_warmup_sizes_grow_by_one_row_with_equal_steps():
    tokens_per_row, world, total = 1000, 4, 3_000_000
    schedule = BatchSizeWarmup.from_config(96, "3_000_000tok", microbatch_size=96, full_rows=6)
    sizes, tokens = [], 0
    while tokens < total + 10 * tokens_per_row * world * 6:
        sizes.append(schedule.rows_at(tokens))
        tokens += sizes[-1] * tokens_per_row * world  # global tokens, as the loader counts them
    assert sizes[0] == 1 and sizes[-1] == 6 and all(a <= b <= a + 1 for a, b in zip(sizes, sizes[1:]))
    counts = collections.Counter(sizes)
    per_size = total / (tokens_per_row * world * sum(range(1, 6)))  # equal steps: budget slice ~ size
    for r in range(1, 6):
        assert abs(counts[r] - per_size) <= 1.5


def test_loader_batches_follow_the_warmup(corpus):
    folder, _ = corpus
    loader = build(folder, rows=3, **warmup_cfg()).dataloader
    rows = [b["input_ids"].shape[0] for b in itertools.islice(loader, 40)]
    assert rows[0] == 1 and rows[-1] == 3 and rows == sorted(rows) and set(rows) == {1, 2, 3}
    assert abs(rows.count(1) - rows.count(2)) <= 2  # about equal steps per size


def test_batch_size_validation():
    assert rows_per_device(4608, 8, 96) == 6
    with pytest.raises(ValueError, match="multiple of world_size x device_train_microbatch_size"):
        rows_per_device(4600, 8, 96)
    with pytest.raises(ValueError, match="multiple of the device microbatch size"):
        BatchSizeWarmup.from_config(50, "1000tok", microbatch_size=96, full_rows=6)


# --------------------------------------------------------------------------------- worker failures
class FailingSource(ArraySource):
    def get(self, doc_id):
        if doc_id == 7:
            raise OSError("disk on fire while reading document 7")
        return super().get(doc_id)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_source_error_reaches_the_consumer_without_hanging(prefetch):
    special = np.zeros(400, dtype=bool)
    special[:5] = True
    settings = LoaderSettings(max_seq_len=MAX_SEQ_LEN, microbatch_size=MICRO, warmup=BatchSizeWarmup(2, 2, 0),
                              seed=0, pad_token_id=PAD, shuffle=False, prefetch=prefetch)
    loader = PackedLoader(FailingSource(make_docs(50)), MaskingSpec(0.3, 4, special, np.arange(5, 305)), settings)
    with time_limit(10), pytest.raises(OSError, match="disk on fire"):
        for _ in loader:
            pass


# ------------------------------------------------------------------------------------------ errors
def test_missing_folder_and_split_name_the_path(corpus, tmp_path):
    folder, _ = corpus
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"'test'.*\['train', 'validation'\]"):
        build(folder, split="test")


def test_truncated_and_corrupted_shards_are_named(corpus, tmp_path):
    _, docs = corpus
    write_mds(tmp_path, docs[:100])
    shard = tmp_path / "train" / "shard.00001.mds"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="shard.00001.mds' is truncated"):
        build(tmp_path)
    shard.write_bytes(data[:4] + b"\xff" * 8 + data[12:])  # same size, garbage offsets
    with pytest.raises(ValueError, match="shard.00001.mds"):
        list(itertools.islice(build(tmp_path, dataset={"shuffle": False}).dataloader, 50))


def test_config_errors_name_the_key(corpus):
    folder, _ = corpus
    with pytest.raises(ConfigError, match="did you mean 'shuffle'"):
        build(folder, dataset={"shufle": True})
    with pytest.raises(ConfigError, match="did you mean 'num_workers'"):
        build(folder, num_worker=2)
    with pytest.raises(ConfigError, match="did you mean 'text'"):
        build(folder, name="txt")
    with pytest.raises(ConfigError, match="train_loader.dataset.shuffle"):
        build(folder, dataset={"shuffle": "yes"})
    with pytest.raises(ValueError, match="max_seq_len"):
        build(folder, dataset={"max_seq_len": 128})
    with pytest.raises(ValueError, match="multiple of the device microbatch size"):
        build_packed_dataloader(cfg(folder), TOK, device_batch_size=6, microbatch_size=4, max_seq_len=MAX_SEQ_LEN,
                                seed=0, rank=0, world_size=1)


# ------------------------------------------------------------------------------------------ sources
def test_text_column_is_tokenized_with_cls_and_sep(tmp_path):
    texts = [" ".join(f"w{(7 * i + j) % 300}" for j in range(i % 40 + 1)) for i in range(60)]
    write_mds(tmp_path, texts, column="text")
    spec = build(tmp_path, mode="eval", dataset={"mlm_probability": 0.0})
    expected = [(CLS, *TOK(t, add_special_tokens=False)["input_ids"], SEP) for t in texts]
    assert collections.Counter(segments(spec.dataloader)) == collections.Counter(expected)


def test_streaming_source_reads_the_same_documents(corpus):
    folder, docs = corpus
    source = open_source(str(folder), None, "validation", streaming=True)
    assert len(source) == 40
    assert all((source.get(i) == d).all() for i, d in enumerate(make_docs(40, seed=1)))


# ------------------------------------------------------------------------------ Composer integration
def test_data_spec_counts_sequence_slots_and_real_tokens(corpus):
    folder, _ = corpus
    spec = build(folder, rows=3)
    batch = next(iter(spec.dataloader))
    assert spec.get_num_samples_in_batch(batch) == 3 * MICRO
    assert spec.get_num_tokens_in_batch(batch) == int((batch["input_ids"] != PAD).sum())
    micro = spec.split_batch(batch, MICRO)
    assert len(micro) == 3 and spec.get_num_samples_in_batch(micro[0]) == MICRO
    assert sum(spec.get_num_tokens_in_batch(m) for m in micro) == spec.get_num_tokens_in_batch(batch)
    padded = build_packed_dataloader(cfg(folder), TOK, device_batch_size=3 * MICRO, microbatch_size=MICRO,
                                     max_seq_len=MAX_SEQ_LEN, seed=11, rank=0, world_size=1,
                                     count_padding_tokens=True)
    assert padded.get_num_tokens_in_batch(batch) == batch["input_ids"].numel()
    assert 0.9 < spec.dataloader.packing_efficiency <= 1.0


def test_callback_survives_a_composer_checkpoint(corpus, tmp_path):
    from composer import Trainer
    from composer.models import ComposerModel

    class Toy(ComposerModel):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return self.weight * batch["input_ids"].float().mean()

        def loss(self, outputs, batch):
            return (outputs - 1.0) ** 2

    folder, _ = corpus

    def trainer(spec, **kwargs):
        model = Toy()
        return Trainer(model=model, train_dataloader=spec, max_duration="4ba", device="cpu", device_train_microbatch_size=MICRO,
                       optimizers=torch.optim.SGD(model.parameters(), lr=0.1),
                       callbacks=[LoaderStateCallback(spec)], spin_dataloaders=False, progress_bar=False,
                       log_to_console=False, save_folder=str(tmp_path), save_filename="ckpt.pt", **kwargs)

    first = build(folder, rows=2)
    trainer(first, save_interval="4ba").fit()
    saved = first.dataloader.state_dict()
    assert saved["batches"] == 4
    second = build(folder, rows=2)
    trainer(second, load_path=str(tmp_path / "ckpt.pt"))
    assert second.dataloader.state_dict() == roundtrip(saved)
    expected = list(itertools.islice(first.dataloader, 2))
    for a, b in zip(expected, itertools.islice(second.dataloader, 2)):
        assert all(torch.equal(a[k], b[k]) for k in a)
