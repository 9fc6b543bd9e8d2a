"""Every schedule's value at warmup start, mid-warmup, plateau, decay start, mid-decay and end, against the
schedules' formulas written out here, in token and batch units, on a real composer State."""

import math
import warnings

import pytest
import torch
from composer.core import State, Timestamp
from composer.devices import DeviceCPU

from flexbert.config import FlexBertConfigError
from flexbert.optim import OneMinusSqrtScheduler, WarmupStableDecayScheduler, build_scheduler

# (max_duration, unit, scale): the same schedule in tokens (1000 tokens per batch) and in batches
UNITS = [("1_000_000tok", "tok", 1000), ("1000ba", "ba", 1)]
T, TW, TD = 1000, 100, 200  # in batches; tokens are these times `scale`
ALPHA_F = 0.05


def make_state(max_duration, dataloader_len=None):
    state = State(model=torch.nn.Linear(1, 1), rank_zero_seed=0, run_name="sched", device=DeviceCPU(),
                  max_duration=max_duration)
    if dataloader_len is not None:
        state.set_dataloader(list(range(dataloader_len)), "train")
    return state


def at(state, batches, tokens_per_batch=1000):
    state.timestamp = Timestamp(batch=batches, sample=batches, token=batches * tokens_per_batch)
    return state


# The recipe's formulas, t and durations in the same unit.
def wsd(t, tw, total, td, af):
    if t < tw:
        return t / tw
    if td == 0 or t < total - td:
        return 1.0
    return 1.0 + (af - 1.0) * min(1.0, (t - (total - td)) / td)


def one_minus_sqrt(t, tw, total, td, af):
    if t < tw:
        return t / tw
    if td == 0 or t < total - td:
        return 1.0
    return af + (1 - af) * (1 - math.sqrt(min(1.0, (t - (total - td)) / td)))


def cosine(t, tw, total, af):
    if t < tw:
        return t / tw
    return af + (1 - af) * 0.5 * (1 + math.cos(math.pi * (t - tw) / (total - tw)))


def linear(t, tw, total, ai, af):
    if t < tw:
        return ai * t / tw
    return ai + (af - ai) * (t - tw) / (total - tw)


# warmup start, mid-warmup, warmup end / plateau, plateau, decay start, mid-decay, 3/4 decay, end
POINTS = [0, TW // 2, TW, 500, T - TD, T - TD // 2, T - TD // 4, T]


@pytest.mark.parametrize("name, formula", [("warmup_stable_decay", wsd), ("one_minus_sqrt", one_minus_sqrt)])
@pytest.mark.parametrize("max_duration, unit, scale", UNITS, ids=["tok", "ba"])
def test_schedule_matches_its_formula(name, formula, max_duration, unit, scale):
    sched = build_scheduler({"name": name, "t_warmup": f"{TW * scale}{unit}",
                             "t_decay": f"{TD * scale}{unit}", "alpha_f": ALPHA_F})
    state = make_state(max_duration)
    for b in POINTS:
        assert sched(at(state, b)) == pytest.approx(formula(b, TW, T, TD, ALPHA_F), abs=1e-12), b
    if name == "one_minus_sqrt":
        assert sched(at(state, T - TD + TD // 4)) == pytest.approx(ALPHA_F + (1 - ALPHA_F) * 0.5)  # sqrt(1/4) = 1/2


@pytest.mark.parametrize("max_duration, unit, scale", UNITS, ids=["tok", "ba"])
def test_composer_schedules(max_duration, unit, scale):
    tw = f"{TW * scale}{unit}"
    state = make_state(max_duration)
    constant = build_scheduler({"name": "constant_with_warmup", "t_warmup": tw})
    cos = build_scheduler({"name": "cosine_with_warmup", "t_warmup": tw, "alpha_f": ALPHA_F})
    lin = build_scheduler({"name": "linear_decay_with_warmup", "t_warmup": tw, "alpha_i": 0.8, "alpha_f": ALPHA_F})
    for b in POINTS:
        at(state, b)
        assert constant(state) == pytest.approx(b / TW if b < TW else 1.0, abs=1e-12), b
        assert cos(state) == pytest.approx(cosine(b, TW, T, ALPHA_F), abs=1e-12), b
        assert lin(state) == pytest.approx(linear(b, TW, T, 0.8, ALPHA_F), abs=1e-12), b


def test_zero_decay_never_divides():
    state = make_state("1000ba")
    for name in ("warmup_stable_decay", "one_minus_sqrt"):
        sched = build_scheduler({"name": name, "t_warmup": "0tok", "t_decay": "0tok", "alpha_f": 0.0})
        for b in (0, 1, 999, 1000, 1500):
            assert sched(at(state, b)) == 1.0


def test_durations_in_dur_ep_and_an_explicit_t_max():
    # 0.2dur of 1000ba = 200ba
    state = make_state("1000ba")
    sched = WarmupStableDecayScheduler(t_warmup="0.1dur", t_decay="0.2dur", alpha_f=0.0)
    for b in POINTS:
        assert sched(at(state, b)) == pytest.approx(wsd(b, TW, T, TD, 0.0), abs=1e-12)
    # epochs become batches through the dataloader length: 2ep x 500 batches = 1000ba
    state = make_state("2ep", dataloader_len=500)
    sched = OneMinusSqrtScheduler(t_decay="200ba", alpha_f=ALPHA_F, t_warmup="100ba")
    for b in POINTS:
        assert sched(at(state, b)) == pytest.approx(one_minus_sqrt(b, TW, T, TD, ALPHA_F), abs=1e-12)
    # T = t_max when given: decay over [600, 800] although max_duration is 1000ba; alpha_f after T
    state = make_state("1000ba")
    sched = WarmupStableDecayScheduler(t_warmup="0ba", t_decay="200ba", t_max="800ba", alpha_f=ALPHA_F)
    for b in (0, 599, 600, 700, 800, 1000):
        assert sched(at(state, b)) == pytest.approx(wsd(b, 0, 800, 200, ALPHA_F), abs=1e-12)


def test_warmup_in_tokens_with_max_duration_in_batches():
    # the recipe writes t_warmup in tokens; the run may count batches: each is measured in its own unit
    state = make_state("1000ba")
    sched = WarmupStableDecayScheduler(t_warmup="100_000tok", t_decay="200ba", alpha_f=0.0)
    for b in (0, 30, 100, 500, 900):
        expected = wsd(b, TW, T, TD, 0.0)  # 1000 tokens per batch in `at`
        assert sched(at(state, b)) == pytest.approx(expected, abs=1e-12)


def test_scheduler_config_errors():
    with pytest.raises(FlexBertConfigError, match=r"scheduler\.t_decy.*did you mean 't_decay'"):
        build_scheduler({"name": "warmup_stable_decay", "t_decy": "0tok"})
    with pytest.raises(ValueError, match=r"did you mean 'one_minus_sqrt'"):
        build_scheduler({"name": "one_minus_sqr"})
    with pytest.raises(FlexBertConfigError, match=r"scheduler\.t_warmup: 100` has no unit; write e\.g\. 100ba"):
        build_scheduler({"name": "constant_with_warmup", "t_warmup": 100})
    with pytest.raises(FlexBertConfigError, match=r"scheduler\.t_warmup`: '100 steps' is not a Composer duration"):
        build_scheduler({"name": "constant_with_warmup", "t_warmup": "100 steps"})
    with pytest.warns(UserWarning, match=r"scheduler\.t_decay"):
        build_scheduler({"name": "constant_with_warmup", "t_warmup": "0tok", "t_decay": "0tok"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_scheduler({"name": "one_minus_sqrt", "t_decay": "10ba", "t_warmup": "0ba", "t_max": "1dur",
                         "alpha_f": 0.001})
    sched = WarmupStableDecayScheduler(t_warmup="0ba", t_decay="100tok")
    with pytest.raises(ValueError, match="same unit"):
        sched(at(make_state("1000ba"), 10))
