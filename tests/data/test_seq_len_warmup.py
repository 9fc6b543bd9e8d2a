"""Sequence-length warmup (`algorithms.seq_warmup`, flexbert/data/seq_len_warmup.py): Composer SeqLengthWarmup's
schedule, applied by the loader to documents before packing, counted by the token clock, resumable, and the run-file
section's errors."""

import collections
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flexbert.data import build_packed_dataloader
from flexbert.data.seq_len_warmup import SeqLenWarmup
from tests.data.test_data_loader import MAX_SEQ_LEN, MICRO, TOK, cfg, make_docs, roundtrip, write_mds
from tests.helpers import ROOT

DEMO = ROOT / "yamls" / "demo.yaml"


def composer_lengths(duration, min_len, max_len, step, batches, batch_len):
    """The length Composer's own SeqLengthWarmup cuts a (2, batch_len) batch to, at each batch of a `batches`ba run."""
    from composer.algorithms import SeqLengthWarmup
    from composer.core import Event, Time

    algorithm = SeqLengthWarmup(duration=duration, min_seq_length=min_len, max_seq_length=max_len, step_size=step)
    algorithm._activated, algorithm._original_model = True, object()  # skip its HF-model check and memory probe
    out = []
    for b in range(batches):
        state = SimpleNamespace(dataloader=object(), max_duration=Time(batches, "ba"),
                                timestamp=SimpleNamespace(batch=Time(b, "ba")),
                                batch={"input_ids": torch.zeros(2, batch_len, dtype=torch.long)})
        algorithm.apply(Event.AFTER_DATALOADER, state, SimpleNamespace(log_metrics=lambda metrics: None))
        out.append(state.batch["input_ids"].shape[1])
    return out


@pytest.mark.parametrize("duration,min_len,max_len,step,batches,batch_len", [
    (0.3, 16, 128, 8, 100, 128),   # the reference's seq-warmup run file, in batches
    (0.5, 8, 64, 8, 37, 64),       # uneven: 18 warmup batches over 7 growth points
    (0.3, 16, 1024, 8, 4000, 128),  # Composer's default max: the run's max_seq_len is reached early
    (1.0, 32, 96, 16, 50, 128),    # max below the batch length: sequences stay cut at 96
])
def test_schedule_is_composers(duration, min_len, max_len, step, batches, batch_len):
    ours = SeqLenWarmup(min_len, max_len, step, int(batches * duration), "ba", batch_len)
    assert [ours.length_at(b) for b in range(batches)] == composer_lengths(duration, min_len, max_len, step, batches,
                                                                           batch_len)


# ------------------------------------------------------------------------------------------ loader
@pytest.fixture(scope="module")
def ordered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mds")
    docs = make_docs(400)
    write_mds(folder, docs)
    return folder, docs


def warmup_loader(folder, warmup, rows=2, **over):
    section = cfg(folder, **over)
    section["dataset"]["shuffle"] = False
    return build_packed_dataloader(section, TOK, device_batch_size=rows * MICRO, microbatch_size=MICRO,
                                   max_seq_len=MAX_SEQ_LEN, seed=11, rank=0, world_size=1, mode="train",
                                   count_padding_tokens=True, seq_len_warmup=warmup).dataloader


def rows_of(batch):
    """Each row's documents as original (unmasked) token lists."""
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    out = []
    for row, cu in zip(original, batch["cu_seqlens"]):
        cu = cu[cu >= 0].tolist()
        out.append([row[s:e].tolist() for s, e in zip(cu[:-1], cu[1:])])
    return out


@pytest.mark.parametrize("truncate", [True, False])
def test_unpacked_rows_are_the_padded_batch_cut_to_the_schedule(ordered, truncate):
    """sequence_packing: false is a padded batch; with the warmup each sequence is a max_seq_len piece of a
    document cut to the scheduled length -- what Composer's truncation of that padded batch gives -- and without
    truncation the document continues in further sequences of the length at hand."""
    folder, docs = ordered
    warmup = SeqLenWarmup(8, MAX_SEQ_LEN, 8, 10, "ba", MAX_SEQ_LEN, truncate=truncate)
    loader = warmup_loader(folder, warmup, sequence_packing=False)
    # the naive reference: what each next sequence is read from, in document order
    if truncate:
        sequences = [d[start:start + MAX_SEQ_LEN].tolist() for d in docs for start in range(0, len(d), MAX_SEQ_LEN)]
    else:
        sequences = [d.tolist() for d in docs]
    expected = iter(sequences)
    pending: list[int] = []
    for b, batch in enumerate(itertools.islice(loader, 14)):
        length = warmup.length_at(b)
        assert batch["input_ids"].shape == (2, MICRO * length)
        for row in rows_of(batch):
            assert len(row) == MICRO
            for seq in row:
                if not pending:
                    pending = next(expected)
                want, pending = pending[:length], (pending[length:] if not truncate else [])
                assert seq == want, f"batch {b}"


@pytest.mark.parametrize("truncate", [True, False])
def test_packed_rows_hold_document_pieces_no_longer_than_the_length(ordered, truncate):
    folder, docs = ordered
    warmup = SeqLenWarmup(8, MAX_SEQ_LEN, 8, 12, "ba", MAX_SEQ_LEN, truncate=truncate)
    loader = warmup_loader(folder, warmup)
    handed = collections.Counter()
    for b, batch in enumerate(itertools.islice(loader, 16)):
        length = warmup.length_at(b)
        assert batch["input_ids"].shape[1] == MICRO * length
        for seq in (seq for row in rows_of(batch) for seq in row):
            assert 0 < len(seq) <= length
            handed.update(seq)
            if truncate:  # a sequence is the start of one of the document's max_seq_len pieces
                assert any(d[k:k + len(seq)].tolist() == seq for d in docs for k in range(0, len(d), MAX_SEQ_LEN))
    state = loader.state_dict()
    if not truncate:  # nothing dropped: handed out + still in the packer == the documents read so far
        assert state["epoch"] == 0
        read = collections.Counter(t for d in docs[:state["cursor"]] for t in d.tolist())
        read.update(docs[state["cursor"]][:state["piece"]].tolist())
        pending = collections.Counter()
        for flat in state["open_rows"] + [flat for _, _, flat in state["ready_rows"]]:
            for doc_id, start, end in zip(flat[0::3], flat[1::3], flat[2::3]):
                pending.update(docs[doc_id][start:end].tolist())
        assert handed + pending == read


def warmup_run(tiny_corpus, tmp_path, **extra):
    from tests.tiny_setup import tiny_run_overrides

    from flexbert.train.run_config import load_run_config

    return load_run_config(DEMO, tiny_run_overrides(tiny_corpus, tmp_path / "run", **extra))


def test_token_clock_counts_what_the_model_trains_on(tiny_corpus, tmp_path):
    """Composer counts a batch's tokens before its algorithms run: the cut must happen before that count."""
    from composer.core import Callback

    from flexbert.train.trainer import build_trainer, fit

    config = warmup_run(tiny_corpus, tmp_path, max_duration="5000tok", count_padding_tokens="true", eval_loader="null",
                        save_interval="1000ba", **{"algorithms.seq_warmup.min_seq_len": 16,
                                               "algorithms.seq_warmup.max_seq_len": 64,
                                               "algorithms.seq_warmup.duration": 0.6})

    class SeenTokens(Callback):
        seen, lengths = 0, []

        def before_forward(self, state, logger):
            self.seen += state.batch["input_ids"].numel()
            self.lengths.append(state.batch["input_ids"].shape[1] // config.device_train_microbatch_size)

    trainer, reset = build_trainer(config)
    seen = SeenTokens()
    trainer.state.callbacks.append(seen)
    fit(trainer, config, reset)
    assert int(trainer.state.timestamp.token) == seen.seen
    assert seen.lengths[0] == 16 and max(seen.lengths) == 64 and seen.lengths == sorted(seen.lengths)


def test_resume_inside_the_warmup_is_exact(ordered):
    folder, _ = ordered
    warmup = SeqLenWarmup(8, MAX_SEQ_LEN, 8, 4000, "tok", MAX_SEQ_LEN)
    reference = list(itertools.islice(warmup_loader(folder, warmup, rows=3), 30))
    first = warmup_loader(folder, warmup, rows=3, num_workers=2)
    consumed = list(itertools.islice(first, 9))
    state = roundtrip(first.state_dict())
    assert 8 < consumed[-1]["input_ids"].shape[1] // MICRO < MAX_SEQ_LEN  # mid-warmup
    resumed = warmup_loader(folder, warmup, rows=3)
    resumed.load_state_dict(state)
    got = consumed + list(itertools.islice(resumed, 21))
    for expect, batch in zip(reference, got, strict=True):
        assert all(torch.equal(expect[key], batch[key]) for key in expect)


def test_a_state_from_another_warmup_is_refused(ordered):
    folder, _ = ordered
    loader = warmup_loader(folder, SeqLenWarmup(8, MAX_SEQ_LEN, 8, 40, "ba", MAX_SEQ_LEN))
    list(itertools.islice(loader, 3))
    for other in (SeqLenWarmup(16, MAX_SEQ_LEN, 8, 40, "ba", MAX_SEQ_LEN), None):
        with pytest.raises(ValueError, match="seq_len_warmup"):
            warmup_loader(folder, other).load_state_dict(loader.state_dict())
    plain = warmup_loader(folder, None)
    list(itertools.islice(plain, 3))
    old_state = plain.state_dict()
    old_state.pop("rows")  # a state saved before the warmup existed
    with pytest.raises(ValueError, match="seq_len_warmup"):
        warmup_loader(folder, SeqLenWarmup(8, MAX_SEQ_LEN, 8, 40, "ba", MAX_SEQ_LEN)).load_state_dict(old_state)
    warmup_loader(folder, None).load_state_dict(old_state)  # and it still resumes a run without one


# ------------------------------------------------------------------------------------------ run file
@pytest.mark.parametrize("section,message", [
    ({"seq_warmup.min_seq_len": 16, "seq_warmup.min_seq_length": 16}, "same setting"),
    ({"seq_warmup.preserve_end_of_sequence": "true"}, "preserve_end_of_sequence"),
    ({"seq_warmup.min_seq_lenght": 16}, "min_seq_length"),
    ({"seq_warmup.duration": 1.5}, "duration"),
    ({"seq_warmup.min_seq_len": 60, "seq_warmup.max_seq_len": 64}, "at least one step"),
    ({"seq_warmup.duration": 0.3, "seq_length_warmup.duration": 0.3}, "same algorithm"),
])
def test_bad_sections_fail_at_dry_run_and_start_naming_the_key(tiny_corpus, tmp_path, section, message):
    from flexbert.schema import ConfigError
    from flexbert.train.trainer import build_trainer
    from flexbert.train.validate import validate_run

    config = warmup_run(tiny_corpus, tmp_path, **{f"algorithms.{k}": v for k, v in section.items()})
    for check in (validate_run, build_trainer):
        with pytest.raises(ConfigError, match=message) as err:
            check(config)
        assert "seq_warmup" in str(err.value) or "seq_length_warmup" in str(err.value)


def test_fine_tuning_refuses_the_loader_algorithm():
    from flexbert.schema import ConfigError
    from flexbert.train.builders import build_algorithms

    with pytest.raises(ConfigError, match="pretraining loader"):
        build_algorithms({"seq_warmup": {"min_seq_len": 16}})
    assert build_algorithms({"seq_warmup": {}}, pretraining=True) == []


def test_lengths_are_multiples_of_the_step_from_the_minimum():
    warmup = SeqLenWarmup(16, 128, 8, 1_000_000, "tok", 128)
    lengths = np.array([warmup.length_at(t) for t in range(0, 2_000_000, 997)])
    assert lengths[0] == 16 and lengths[-1] == 128
    assert np.all(np.diff(lengths) >= 0) and np.all((lengths - 16) % 8 == 0)
    every = 1_000_000 // ((128 - 16) // 8)  # Composer's spacing of the growth points
    assert warmup.length_at(14 * every - 1) == 120 and warmup.length_at(14 * every) == 128
