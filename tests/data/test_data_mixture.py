"""Stream mixtures (`dataset.streams`, flexbert/data/mixture.py): per-epoch counts by mosaicml-streaming's rules, the
realised mixture over an epoch and over short windows, determinism per seed, exact resume, the streaming path,
a later phase with another mix, and the config errors."""

import collections
import io
import itertools
import math

import numpy as np
import pytest
import torch
from streaming import MDSWriter
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flexbert import schema
from flexbert.data import EpochOrder, LoaderConfig, LoaderStateCallback, build_packed_dataloader
from flexbert.data.mixture import Mixture, StreamConfig, describe, stream_counts
from flexbert.schema import ConfigError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLS, SEP = 2, 3
MAX_SEQ_LEN, MICRO = 32, 4  # rows of 128 slots
SIZES = {"web": 600, "code": 200}  # documents per stream
MARK = {"web": 5, "code": 6}  # the first word of every document says its stream


def tiny_tokenizer():
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i + len(SPECIALS) for i in range(300)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


TOK = tiny_tokenizer()


def stream_docs(name):
    """[CLS] mark, index (two words), a few words [SEP]: unique documents, each shorter than a sequence."""
    rng = np.random.default_rng(MARK[name])
    return [np.array([CLS, MARK[name], 7 + i % 290, 7 + i // 290, *rng.integers(7, 305, rng.integers(1, 12)), SEP],
                     dtype=np.uint16) for i in range(SIZES[name])]


@pytest.fixture(scope="module")
def streams_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams")
    for name in SIZES:
        with MDSWriter(out=str(root / name / "train"), columns={"input_ids": "ndarray:uint16"},
                       size_limit=1 << 12) as writer:
            for doc in stream_docs(name):
                writer.write({"input_ids": doc})
    return root


def section(root, streams, loader=None, **dataset):
    """A train_loader section over the streams {name: rules} (each stream's folder under root)."""
    dataset = {"split": "train", "shuffle": True, "shuffle_seed": 3, "max_seq_len": MAX_SEQ_LEN, "streaming": False,
               "streams": {name: {"local": str(root / name), **rules} for name, rules in streams.items()},
               **dataset}
    return {"name": "text", "dataset": dataset, "num_workers": 0, "sequence_packing": True, "drop_last": False,
            **(loader or {})}


def build(root, streams, *, rows=2, mode="train", rank=0, world_size=1, loader=None, **dataset):
    spec = build_packed_dataloader(section(root, streams, loader, **dataset), TOK, device_batch_size=rows * MICRO,
                                   microbatch_size=MICRO, max_seq_len=MAX_SEQ_LEN, seed=11, rank=rank,
                                   world_size=world_size, mode=mode)
    return spec.dataloader


def documents(batches):
    """(stream mark, index) of every document in the batches, in row order (labels undo the masking)."""
    out = []
    for b in batches:
        original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
        for row, cu in zip(original, b["cu_seqlens"]):
            cu = cu[cu >= 0].tolist()
            out += [(int(row[s + 1]), int(row[s + 2]) - 7 + 290 * (int(row[s + 3]) - 7)) for s in cu[:-1]]
    return out


def within_binomial(hits, n, p, sigmas=5.0):
    """|hits - n p| within `sigmas` binomial standard deviations (a window of a shuffled block is a draw without
    replacement from it: its spread is at most the binomial one)."""
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("rules, epoch_size, expected", [
    ({"web": {"proportion": 0.7}, "code": {"proportion": 0.3}}, None, {"web": 560, "code": 240}),  # 800 * p
    ({"web": {"proportion": 1}, "code": {"proportion": 1}}, 1000, {"web": 500, "code": 500}),
    ({"web": {"repeat": 1.5}, "code": {"repeat": 0.5}}, None, {"web": 900, "code": 100}),  # int(repeat * n)
    ({"web": {"choose": 50}, "code": {}}, None, {"web": 50, "code": 200}),  # no rule: every document once
    ({"web": {}, "code": {}}, 400, {"web": 300, "code": 100}),  # no rule + epoch_size: in proportion to size
])
def test_counts_follow_streamings_rules(rules, epoch_size, expected):
    counts = stream_counts([SIZES[n] for n in rules], [next(iter(r.items()), (None, None)) for r in rules.values()],
                           epoch_size, seed=3)
    assert dict(zip(rules, counts.tolist())) == expected


def test_proportions_that_do_not_divide_give_the_remainder_to_distinct_streams():
    counts = stream_counts([10, 10, 10], [("proportion", 1)] * 3, 100, seed=0)  # 33.33 each
    assert counts.sum() == 100 and sorted(counts.tolist()) == [33, 33, 34]


def test_an_epoch_holds_each_stream_count_times_with_whole_repeats_first():
    """web 600 docs x 1.5: every document once, 300 distinct ones twice; code 200 docs x 0.5: 100 distinct ones."""
    mixture = Mixture(["web", "code"], [600, 200], [900, 100], seed=3, max_block=1 << 20)
    per_epoch = []
    for epoch in range(2):
        layout = mixture.layout(epoch)
        ids = [layout[p] for p in range(len(layout))]
        seen = collections.Counter(ids)
        web = {i: c for i, c in seen.items() if i < 600}
        code = {i - 600: c for i, c in seen.items() if i >= 600}
        assert len(ids) == 1000 and set(web) == set(range(600)) and sorted(web.values()).count(2) == 300
        assert len(code) == 100 and set(code.values()) == {1} and max(code) < 200
        assert ids == [mixture.layout(epoch)[p] for p in range(1000)]  # random access, deterministic per epoch
        per_epoch.append(code)
    assert set(per_epoch[0]) != set(per_epoch[1])  # the partial repeat is drawn again each epoch


# --------------------------------------------------------------------------------- realised mixture
def test_realised_mixture_matches_the_proportions_over_the_epoch_and_in_short_windows(streams_dir):
    """web:code = 0.7:0.3 of 800 samples with shuffle blocks of 128 samples: over the epoch the counts are exact,
    and every window of 100 documents is within 5 binomial standard deviations of 30% code. A layout that puts
    the streams one after the other fails the same window check (the blocks would each hold one stream)."""
    loader = build(streams_dir, {"web": {"proportion": 0.7}, "code": {"proportion": 0.3}}, shuffle_block_size=128)
    docs = []
    for batch in loader:
        docs += documents([batch])
        if len(docs) >= 800:
            break
    epoch = docs[:800]  # the packer keeps a few open rows: the first 800 documents are this epoch's
    assert collections.Counter(mark for mark, _ in epoch) == {MARK["web"]: 560, MARK["code"]: 240}
    windows = [epoch[i:i + 100] for i in range(0, 800, 100)]
    assert all(within_binomial(sum(m == MARK["code"] for m, _ in w), 100, 0.3) for w in windows)

    stream_major = EpochOrder(800, epoch=0, seed=3, shuffle=True, rank=0, world_size=1, max_block=128)
    naive = [MARK["web"] if stream_major[i] < 560 else MARK["code"] for i in range(800)]
    assert not all(within_binomial(naive[i:i + 100].count(MARK["code"]), 100, 0.3) for i in range(0, 800, 100))


def test_two_ranks_each_read_the_mixture_and_together_the_whole_epoch(streams_dir):
    rules = {"web": {"repeat": 0.5}, "code": {"repeat": 2}}  # 300 web + 400 code samples
    seen = []
    for rank in range(2):
        rank_docs = documents(build(streams_dir, rules, mode="eval", rank=rank, world_size=2))
        assert within_binomial(sum(m == MARK["code"] for m, _ in rank_docs), len(rank_docs), 4 / 7)
        seen += rank_docs
    counts = collections.Counter(seen)
    assert sum(c for (m, _), c in counts.items() if m == MARK["web"]) == 300
    assert len({d for m, d in counts if m == MARK["web"]}) == 300  # a half repeat: distinct documents
    assert all(counts[(MARK["code"], i)] == 2 for i in range(200))  # repeat 2: every document twice


def test_epoch_size_alone_resamples_one_dataset(streams_dir):
    """No streams, epoch_size 250 of web's 600 documents: streaming's one-stream case, 250 distinct documents."""
    spec = build_packed_dataloader({"name": "text", "drop_last": False, "dataset": {
        "local": str(streams_dir / "web"), "split": "train", "streaming": False, "epoch_size": 250}},
        TOK, device_batch_size=MICRO, microbatch_size=MICRO, max_seq_len=MAX_SEQ_LEN, seed=11, rank=0, world_size=1,
        mode="eval")
    counts = collections.Counter(documents(spec.dataloader))
    assert len(counts) == 250 and set(counts.values()) == {1} and {m for m, _ in counts} == {MARK["web"]}


# ------------------------------------------------------------------------------- seeds and resume
MIX = {"web": {"proportion": 0.6}, "code": {"proportion": 0.4}}


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_order_is_deterministic_per_seed(streams_dir):
    first = take(build(streams_dir, MIX), 6)
    assert same(first, take(build(streams_dir, MIX), 6))
    assert documents(first) != documents(take(build(streams_dir, MIX, shuffle_seed=4), 6))


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_is_exact_inside_an_epoch_and_across_its_end(streams_dir):
    """~28 batches per epoch: resume after 5 (inside) and after 30 (the next epoch, a new draw of code)."""
    mix = {"web": {"repeat": 1}, "code": {"repeat": 1.5}}
    uninterrupted = take(build(streams_dir, mix), 36)
    for k in (5, 30):
        first = build(streams_dir, mix)
        it = iter(first)
        for _ in range(k):
            next(it)
        resumed = build(streams_dir, mix)
        resumed.load_state_dict(roundtrip(first.state_dict()))
        assert same(take(resumed, 36 - k), uninterrupted[k:])


# ------------------------------------------------------------------------------------ streaming path
def test_streaming_path_reads_each_stream_from_its_own_folder(streams_dir):
    loader = build(streams_dir, {"web": {"choose": 100}, "code": {"repeat": 1}}, mode="eval", streaming=True,
                   loader={"sequence_packing": False})
    counts = collections.Counter(documents(loader))
    assert sum(c for (m, _), c in counts.items() if m == MARK["web"]) == 100
    assert {d for m, d in counts if m == MARK["code"]} == set(range(200)) and set(counts.values()) == {1}


# ------------------------------------------------------------------------------------ a later phase
def test_a_later_phase_with_another_mix_starts_its_data_afresh(streams_dir):
    """Phase 2 (0.5:0.5) from phase 1's (0.6:0.4) loader state: refused as another data setup, naming the mixture;
    the phase start's non-strict callback (reset_time) warns and reads phase 2's mix from its start."""
    phase1 = build(streams_dir, MIX)
    take(phase1, 3)
    state = {"ranks": [roundtrip(phase1.state_dict())]}
    phase2_mix = {"web": {"proportion": 0.5}, "code": {"proportion": 0.5}}
    with pytest.raises(ValueError, match="mixture"):
        LoaderStateCallback(build(streams_dir, phase2_mix)).load_state_dict(state)
    phase2 = build(streams_dir, phase2_mix)
    with pytest.warns(UserWarning, match="loader state not restored"):
        LoaderStateCallback(phase2, strict=False).load_state_dict(state)
    assert same(take(phase2, 3), take(build(streams_dir, phase2_mix), 3))


def test_a_plain_dataset_keeps_its_fingerprint(streams_dir):
    """No `streams:`: the saved fingerprint has the keys it had before mixtures (old checkpoints still resume)."""
    spec = build_packed_dataloader({"name": "text", "dataset": {"local": str(streams_dir / "web"), "split": "train",
                                                                "streaming": False}},
                                   TOK, device_batch_size=MICRO, microbatch_size=MICRO, max_seq_len=MAX_SEQ_LEN,
                                   seed=11, rank=0, world_size=1)
    assert set(spec.dataloader.state_dict()["fingerprint"]) == {
        "num_docs", "max_seq_len", "row_len", "rank", "world_size", "shuffle", "shuffle_seed", "shuffle_block_size",
        "sequence_packing", "max_open_rows"}


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("streams, dataset, message", [
    ({"web": {"local": None}}, {}, r"`train_loader.dataset.streams.web` has neither `local` nor `remote`"),
    ({"web": {"proportion": 0.5, "repeat": 2}}, {}, r"`train_loader.dataset.streams.web.proportion` and `repeat`"),
    ({"web": {"proportion": 0.5}, "code": {"repeat": 2}}, {},
     r"`train_loader.dataset.streams.code` has no `proportion`"),
    ({"web": {"proportion": -0.5}}, {}, r"`train_loader.dataset.streams.web.proportion` must be >= 0"),
    ({"web": {"choose": -1}}, {}, r"`train_loader.dataset.streams.web.choose` must be >= 0"),
    ({"web": {"proportion": 0}, "code": {"proportion": 0}}, {}, r"proportions add up to 0"),
    ({"web": {"choose": 10}}, {"epoch_size": 100}, r"`train_loader.dataset.streams.web.choose` .* cannot be combined with `epoch_size`"),
    ({"web": {"proportoin": 0.5}}, {}, r"unknown key `train_loader.dataset.streams.web.proportoin`.*proportion"),
    ({"web": {}}, {"epoch_size": -5}, r"`train_loader.dataset.epoch_size` must be >= 0"),
])
def test_config_errors_name_the_key(streams_dir, streams, dataset, message):
    with pytest.raises(ConfigError, match=message):
        LoaderConfig.from_dict(section(streams_dir, streams, **dataset))


def test_a_missing_stream_folder_names_the_stream(streams_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stream 'code' \(`train_loader.dataset.streams.code`\).*"
                                                 r"does not exist"):
        build(streams_dir, {"web": {}, "code": {"local": str(tmp_path / "nowhere")}})


def test_two_streams_with_one_cache_folder_for_different_remotes_are_refused(tmp_path):
    streams = {"a": {"remote": "s3://bucket/a"}, "b": {"remote": "s3://bucket/b"}}
    with pytest.raises(ValueError, match=r"`train_loader.dataset.streams.b` and `train_loader.dataset.streams.a` "
                                         r"would share the local folder"):
        build_packed_dataloader({"name": "text", "dataset": {"local": str(tmp_path), "split": "train",
                                                             "streams": streams}},
                                TOK, device_batch_size=MICRO, microbatch_size=MICRO, max_seq_len=MAX_SEQ_LEN,
                                seed=11, rank=0, world_size=1)


def test_help_config_lists_the_stream_keys():
    rows = {key: doc for key, _, _, doc in schema.describe(LoaderConfig)}
    for key in ("local", "remote", "split", "proportion", "repeat", "choose"):
        assert f"dataset.streams.<name>.{key}" in rows
    assert "dataset.epoch_size" in rows and "not supported" not in rows["dataset.streams"]


# ------------------------------------------------------------------------------------------ dry-run lines
def test_dry_run_lines_give_each_streams_rule_and_samples_per_epoch(streams_dir):
    streams = {"web": StreamConfig(local=str(streams_dir / "web"), proportion=0.7),
               "code": StreamConfig(local=str(streams_dir / "code"), proportion=0.3)}
    # 800 documents in all, 0.7 / 0.3 of them: the counts an epoch of the loader holds (see the epoch test above)
    assert describe(streams, local=None, remote=None, split="train", epoch_size=None, seed=3) == [
        "mixture of 2 streams, 800 samples per epoch",
        f"  web: proportion 0.7, 560 of 600 documents per epoch <- {streams_dir / 'web'} (split train)",
        f"  code: proportion 0.3, 240 of 200 documents per epoch <- {streams_dir / 'code'} (split train)"]
    streamed = dict(streams, code=StreamConfig(remote="s3://bucket/code", proportion=0.3))
    assert describe(streamed, local=str(streams_dir / "web"), remote=None, split="train", epoch_size=None,
                    seed=3) == ["mixture of 2 streams, counts known at the start (streamed)",
                                f"  web: proportion 0.7 <- {streams_dir / 'web'} (split train)",
                                "  code: proportion 0.3 <- s3://bucket/code (split train)"]
    # epoch_size alone resamples the one dataset, as the loader does
    assert describe(None, local=str(streams_dir / "code"), remote=None, split="train", epoch_size=300, seed=3)[0] == \
        "mixture of 1 stream, 300 samples per epoch"
    assert describe(None, local=str(streams_dir / "code"), remote=None, split="train", epoch_size=None, seed=3) == \
        [f"{streams_dir / 'code'} (split train), 200 documents"]
