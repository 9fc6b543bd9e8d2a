"""Released-layout Composer checkpoints as load_path: safe unpickling, embedded config, fit checks, and resume /
weights-only / phase start through the real trainer."""

import datetime
import json
import os

import numpy as np
import pytest
import torch

from flexbert.checkpoints.loading import (
    CheckpointError,
    check_checkpoint_fits,
    load_checkpoint_file,
    read_checkpoint_model_config,
)
from flexbert.config import FlexBertConfig
from flexbert.pretrained_configs import merge_checkpoint_model_config
from flexbert.model.modeling import FlexBertForMaskedLM
from flexbert.checkpoints.safe_unpickle import (
    CHAINED_VALIDATION_ENV,
    COMPOSER_VALIDATION_ENV,
    UnsafeCheckpointError,
    install_composer_guard,
)
from flexbert.optim.builders import build_optimizer
from flexbert.train.builders import build_model, build_tokenizer
from flexbert.train.run_config import load_run_config
from flexbert.train.trainer import build_trainer, main
from tests.helpers import ROOT, TINY_MODERNBERT
from tests.released_layout import NUMPY1_PICKLE, pickle_globals, write_released_checkpoint
from tests.tiny_setup import tiny_run_overrides

DEMO = ROOT / "yamls" / "demo.yaml"
CALLS = []


def _record_call(*args):  # what a malicious pickle would run; the safe loader must never call it
    CALLS.append(args)
    return 0


class _Payload:
    def __reduce__(self):
        return (_record_call, ("payload ran",))


def _tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, **overrides}))


# ------------------------------------------------------------------------------------------ safe unpickling


def test_released_layout_pickles_numpy1_names_and_loads_under_numpy2(tmp_path):
    np.random.seed(5)
    expected_mt = np.random.get_state()[1].copy()
    path = write_released_checkpoint(tmp_path / "ep0-ba4000-rank0.pt", _tiny_model(), batch=4000)
    names = pickle_globals(path)
    assert "numpy.core.multiarray._reconstruct" in names and not any("numpy._core" in n for n in names)
    assert {"datetime.timedelta", "torch.torch_version.TorchVersion", "numpy.ndarray", "numpy.dtype"} <= names

    checkpoint = load_checkpoint_file(path)
    rng = checkpoint["rng"]
    assert len(rng) == 8 and rng[0]["numpy"][0] == "MT19937"
    assert rng[0]["numpy"][1].dtype == np.uint32 and np.array_equal(rng[0]["numpy"][1], expected_mt)
    stamp = checkpoint["state"]["timestamp"]["Timestamp"]
    assert stamp["batch"] == 4000 and stamp["total_wct"] == datetime.timedelta(seconds=61.5 * 4000)
    assert checkpoint["state"]["metadata"]["torch_version"] == "2.4.0+cu124"


def test_numpy1_scalars_load(tmp_path):
    torch.save({"state": {"model": {}, "x": np.float64(2.5), "n": np.int64(7)}}, tmp_path / "s.pt", pickle_module=NUMPY1_PICKLE)
    assert "numpy.core.multiarray.scalar" in pickle_globals(tmp_path / "s.pt")
    state = load_checkpoint_file(tmp_path / "s.pt")["state"]
    assert state["x"] == 2.5 and state["n"] == 7


def test_safe_loader_refuses_other_globals_without_running_them(tmp_path):
    torch.save({"state": {"model": {}, "callbacks": {"Evil": _Payload()}}}, tmp_path / "evil.pt")
    CALLS.clear()
    with pytest.raises(CheckpointError, match=r"evil.pt: refused by the safe loader: .*_record_call"):
        load_checkpoint_file(tmp_path / "evil.pt")
    # numpy object arrays are not on the list either (they would carry arbitrary objects)
    torch.save({"state": {"model": {}, "a": np.array([1, "x"], dtype=object)}}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_checkpoint_file(tmp_path / "obj.pt")
    assert CALLS == []


def test_composer_loads_only_files_the_safe_loader_accepts(tmp_path, monkeypatch):
    """Composer 0.32 opens checkpoints with weights_only=False; the guard runs the safe loader first."""
    from composer.utils.checkpoint import safe_torch_load as composer_load

    monkeypatch.delenv(COMPOSER_VALIDATION_ENV, raising=False)
    monkeypatch.setenv(COMPOSER_VALIDATION_ENV, "tests.checkpoints.test_checkpoint_interop._user_validator")
    monkeypatch.delenv(CHAINED_VALIDATION_ENV, raising=False)
    install_composer_guard()
    assert os.environ[COMPOSER_VALIDATION_ENV] == "flexbert.checkpoints.safe_unpickle.validate_for_composer"
    torch.save({"state": {"model": {}}, "x": _Payload()}, tmp_path / "evil.pt")
    CALLS.clear()
    with pytest.raises(UnsafeCheckpointError, match="_record_call"):
        composer_load(str(tmp_path / "evil.pt"))
    assert CALLS == []  # the full unpickler never saw the file
    released = write_released_checkpoint(tmp_path / "ok.pt", _tiny_model())
    monkeypatch.setenv("TEST_USER_VALIDATOR_SAW", "")
    assert composer_load(str(released))["state"]["rank_zero_seed"] == 17
    assert os.environ["TEST_USER_VALIDATOR_SAW"] == str(released)  # a validator the user had set runs after ours


def _user_validator(path, specs):
    # imported by name by Composer (possibly as a second copy of this module): report through the environment
    os.environ["TEST_USER_VALIDATOR_SAW"] = str(path)
    return True


# ------------------------------------------------------------------------------------------ config and fit checks


def test_embedded_config_is_read_and_merged_key_by_key(tmp_path):
    model = _tiny_model()
    path = write_released_checkpoint(tmp_path / "c.pt", model)
    embedded = read_checkpoint_model_config(str(path))
    assert embedded["hidden_size"] == 64 and embedded["num_hidden_layers"] == 4 and embedded["mlp_layer"] == "glu"
    assert "type_vocab_size" not in embedded and "model_type" not in embedded  # reference BertConfig keys dropped
    merged = merge_checkpoint_model_config({"rotary_emb_base": 160000.0, "local_attn_rotary_emb_base": 10000.0}, embedded)
    assert merged["rotary_emb_base"] == 160000.0 and merged["hidden_size"] == 64 and "pad_token_id" not in merged
    with pytest.raises(CheckpointError) as err:
        merge_checkpoint_model_config({"hidden_size": 96, "num_hidden_layers": 4, "mlp_layer": "mlp"}, embedded)
    lines = str(err.value).splitlines()
    assert "  hidden_size: run file 96 vs checkpoint 64" in lines
    assert "  mlp_layer: run file 'mlp' vs checkpoint 'glu'" in lines
    assert not any("num_hidden_layers" in line for line in lines)


def test_bad_files_and_unfitting_tensors_are_listed(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt: not a torch checkpoint"):
        load_checkpoint_file(tmp_path / "notes.txt")
    torch.save(_tiny_model().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare.pt: not a Composer checkpoint: .*bare state dict"):
        load_checkpoint_file(tmp_path / "bare.pt")

    from flexbert.train.composer_model import FlexBertComposerModel

    other = _tiny_model(num_hidden_layers=3, intermediate_size=48)
    path = write_released_checkpoint(tmp_path / "other.pt", other)
    target = FlexBertComposerModel(_tiny_model())
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_fits(str(path), target)
    message = str(err.value)
    # 4 layers with intermediate 96 vs 3 layers with 48: layer 3's six tensors are missing (attn_norm, Wqkv,
    # attn Wo, mlp_norm, Wi, mlp Wo); Wi and mlp Wo of layers 0-2 have the wrong shape
    assert "missing (6):" in message
    for key in ("model.bert.encoder.layers.3.attn.Wqkv.weight", "model.bert.encoder.layers.3.mlp.Wo.weight"):
        assert f"    {key}\n" in message
    assert "mis-shaped (6):" in message
    assert "model.bert.encoder.layers.0.mlp.Wi.weight: checkpoint (96, 64) vs model (192, 64)" in message
    with pytest.raises(CheckpointError, match="mis-shaped"):  # non-strict loading still refuses wrong shapes
        check_checkpoint_fits(str(path), target, strict=False)


# ------------------------------------------------------------------------------------------ through the trainer


def _run_cfg(root, folder, model_config=None, **overrides):
    cfg = load_run_config(DEMO, tiny_run_overrides(root, folder, eval_interval="100ba", **overrides))
    if model_config is not None:
        cfg.model.model_config = model_config
    return cfg


@pytest.fixture(scope="module")
def released_run(tiny_corpus, tmp_path_factory):
    """A released-layout checkpoint at batch 4 of the tiny recipe, with optimizer moments from two real steps."""
    folder = tmp_path_factory.mktemp("released")
    cfg = _run_cfg(tiny_corpus, folder / "unused")
    tokenizer = build_tokenizer(cfg)
    torch.manual_seed(0)
    composer_model = build_model(cfg, tokenizer)
    optimizer = build_optimizer(cfg.optimizer, composer_model)
    model = composer_model.model
    ids = torch.randint(5, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = write_released_checkpoint(folder / "ep0-ba4-rank0.pt", model, optimizer=optimizer, batch=4,
                                     tokenizer=tokenizer, lr=cfg.optimizer.lr)
    names = {p: "model." + n for n, p in model.named_parameters()}
    moments = {names[p]: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in optimizer.state.items()}
    weights = {"model." + k: v.clone() for k, v in model.state_dict().items()}
    steps = [int(g["step"]) for g in optimizer.param_groups]
    return {"root": tiny_corpus, "path": str(path), "moments": moments, "weights": weights, "steps": steps,
            "betas": tuple(cfg.optimizer.betas)}


def _assert_weights(trainer, weights):
    for name, tensor in trainer.state.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def _batches(folder):
    return [r["batch"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss/train/total" in r]


def test_full_resume_continues_with_the_saved_moments(released_run, tmp_path):
    folder = tmp_path / "resume"
    trainer, reset_time = build_trainer(_run_cfg(released_run["root"], folder, load_path=released_run["path"], max_duration="6ba"))
    assert not reset_time and trainer.state.timestamp.batch.value == 4
    _assert_weights(trainer, released_run["weights"])
    optimizer = trainer.state.optimizers[0]
    params = dict(trainer.state.model.named_parameters())
    for name, param in params.items():  # right after load, before any step
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[param][key], released_run["moments"][name][key]), (name, key)
    assert [int(g["step"]) for g in optimizer.param_groups] == released_run["steps"]

    # The next step continues from those moments: the StableAdamW update with t = saved step + 1.
    b1, b2 = released_run["betas"]
    t = released_run["steps"][0] + 1
    b1t, b2t = b1 * (1 - b1 ** (t - 1)) / (1 - b1 ** t), b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t)
    gen = torch.Generator().manual_seed(1)
    grads = {name: 1e-3 * torch.randn(p.shape, generator=gen) for name, p in params.items()}
    for name, param in params.items():
        param.grad = grads[name].clone()
    optimizer.step()
    for name, param in params.items():
        saved = released_run["moments"][name]
        torch.testing.assert_close(optimizer.state[param]["exp_avg"], b1t * saved["exp_avg"] + (1 - b1t) * grads[name])
        torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], b2t * saved["exp_avg_sq"] + (1 - b2t) * grads[name] ** 2)
    optimizer.zero_grad()

    trainer.fit(reset_time=reset_time)
    trainer.close()
    assert _batches(folder) == [5, 6]


def test_phase_start_takes_the_architecture_from_the_checkpoint(released_run, tmp_path):
    folder = tmp_path / "phase2"
    phase_settings = {"rotary_emb_base": 160000.0, "local_attn_rotary_emb_base": 10000.0}  # no shapes, no blocks
    cfg = _run_cfg(released_run["root"], folder, model_config=phase_settings, load_path=released_run["path"],
                   reset_time=True, restart_override=True, max_duration="2ba",
                   **{"optimizer.lr": 1e-4, "scheduler.name": "constant_with_warmup", "scheduler.t_warmup": "0ba"})
    trainer, reset_time = build_trainer(cfg)
    config = trainer.state.model.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.mlp_layer) == (64, 3, 96, "glu")
    assert (config.rope_theta(0), config.rope_theta(1)) == (160000.0, 10000.0)
    optimizer = trainer.state.optimizers[0]
    assert all(g["lr"] == pytest.approx(1e-4) for g in optimizer.param_groups)
    for name, param in trainer.state.model.named_parameters():
        assert torch.equal(optimizer.state[param]["exp_avg"], released_run["moments"][name]["exp_avg"]), name
    trainer.fit(reset_time=reset_time)
    trainer.close()
    assert _batches(folder) == [1, 2]  # time restarted


def test_weights_only_load_starts_fresh_state(released_run, tmp_path):
    folder = tmp_path / "weights"
    trainer, _ = build_trainer(_run_cfg(released_run["root"], folder, load_path=released_run["path"],
                                        load_weights_only=True, max_duration="1ba"))
    _assert_weights(trainer, released_run["weights"])
    assert trainer.state.timestamp.batch.value == 0 and not trainer.state.optimizers[0].state
    trainer.fit()
    trainer.close()
    assert _batches(folder) == [1]


def test_trainer_lists_unfitting_tensors_before_composer(released_run, tmp_path, capsys):
    from tests.released_layout import released_checkpoint as layout

    cfg = _run_cfg(released_run["root"], tmp_path / "unused")
    right = FlexBertConfig(**{**cfg.model.model_config, "pad_token_id": 0})
    wrong = FlexBertForMaskedLM(FlexBertConfig(**{**right.model_config_dict(), "intermediate_size": 48}))
    checkpoint = layout(wrong)  # tensors of another shape, under the embedded config of the right model
    checkpoint["state"]["integrations"]["huggingface"]["model"]["config"]["content"] = right.model_config_dict()
    torch.save(checkpoint, tmp_path / "bad.pt", pickle_module=NUMPY1_PICKLE)
    code = main([str(DEMO), *tiny_run_overrides(released_run["root"], tmp_path / "run", load_path=str(tmp_path / "bad.pt"))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: load_path {tmp_path / 'bad.pt'}: the checkpoint's tensors do not fit the model")
    assert "mis-shaped (6):" in err and "model.bert.encoder.layers.2.mlp.Wo.weight: checkpoint (64, 48) vs model (64, 96)" in err
