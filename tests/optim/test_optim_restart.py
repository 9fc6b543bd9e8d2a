"""Two training phases with a real composer.Trainer (CPU, toy model): phase 2 loads phase 1's checkpoint, resets
time and overrides lr / weight decay. Checks the moments survive the load, the new hyperparameters win, and the lr
follows the new schedule from batch 0. Also checks `log_grad_norm` against norms computed here."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from composer import Trainer
from composer.core import Callback
from composer.loggers import InMemoryLogger
from composer.models import ComposerModel
from torch.utils.data import DataLoader, TensorDataset

from flexbert.optim import LogGradNorm, RestartOverride, build_optimizer, build_scheduler

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OPT1 = {"name": "decoupled_stableadamw", "lr": 1e-2, "betas": [0.9, 0.98], "weight_decay": 1e-3,
        "filter_bias_norm_wd": True}
OPT2 = {**OPT1, "lr": 3e-3, "weight_decay": 1e-4}
SCHED1 = {"name": "warmup_stable_decay", "t_warmup": "2ba", "t_decay": "0ba"}
SCHED2 = {"name": "one_minus_sqrt", "t_warmup": "2ba", "t_decay": "3ba", "alpha_f": 0.1}  # max_duration 6ba


class Toy(ComposerModel):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)

    def forward(self, batch):
        x, _ = batch
        return self.norm(self.lin(x))

    def loss(self, outputs, batch):
        _, y = batch
        return F.mse_loss(outputs, y)


def loader():
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 4, generator=gen), torch.randn(64, 3, generator=gen))
    return DataLoader(data, batch_size=4, shuffle=False)


class Recorder(Callback):
    """What the trainer did: moments right after load, lr used by each batch, lr the scheduler set at time t."""

    def __init__(self):
        self.loaded_state, self.loaded_groups, self.used, self.set_at = None, None, [], []

    def after_load(self, state, logger):
        opt = state.optimizers[0]
        self.loaded_state = {p: copy.deepcopy(s) for p, s in opt.state.items()}
        self.loaded_groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])

    def before_train_batch(self, state, logger):
        self.used.append((state.timestamp.batch.value, [g["lr"] for g in state.optimizers[0].param_groups]))

    def batch_end(self, state, logger):
        self.set_at.append((state.previous_timestamp.batch.value, state.optimizers[0].param_groups[0]["lr"]))


class NaiveGradNorm(Callback):
    def __init__(self):
        self.norms, self.per_name = [], []

    def after_train_batch(self, state, logger):
        named = {n: p.grad.double() for n, p in state.model.named_parameters() if p.grad is not None}
        self.per_name.append({n: math.sqrt((g**2).sum().item()) for n, g in named.items()})
        self.norms.append(math.sqrt(sum(v**2 for v in self.per_name[-1].values())))


def one_minus_sqrt(t, tw=2, total=6, td=3, af=0.1):
    if t < tw:
        return t / tw
    if t < total - td:
        return 1.0
    return af + (1 - af) * (1 - math.sqrt((t - (total - td)) / td))


def phase2(ckpt, override):
    torch.manual_seed(1)
    model = Toy()
    opt = build_optimizer(OPT2, model)
    rec = Recorder()
    override_cb = {"optimizer": [RestartOverride(opt)], "init": [RestartOverride()], None: []}[override]
    callbacks = override_cb + [rec]
    trainer = Trainer(model=model, train_dataloader=loader(), optimizers=opt, schedulers=build_scheduler(SCHED2),
                      max_duration="6ba", load_path=str(ckpt), callbacks=callbacks, device="cpu",
                      progress_bar=False, log_to_console=False, loggers=[])
    trainer.fit(reset_time=True)
    return trainer, rec


def test_two_phase_restart(tmp_path):
    # ---- phase 1: warmup then constant, 4 batches, checkpoint at the end
    torch.manual_seed(0)
    model = Toy()
    opt = build_optimizer(OPT1, model)
    memory, naive = InMemoryLogger(), NaiveGradNorm()
    trainer = Trainer(model=model, train_dataloader=loader(), optimizers=opt, schedulers=build_scheduler(SCHED1),
                      max_duration="4ba", save_folder=str(tmp_path), save_interval="4ba",
                      save_filename="ep{epoch}-ba{batch}-rank{rank}.pt", device="cpu", progress_bar=False,
                      log_to_console=False, loggers=[memory],
                      callbacks=[LogGradNorm(batch_log_interval=2, per_layer=True), naive])
    trainer.fit()
    ckpt = tmp_path / "ep0-ba4-rank0.pt"
    assert ckpt.exists()
    logged = [v for _, v in memory.data["grad_norm/total"]]
    assert logged == pytest.approx(naive.norms[::2], rel=1e-6) and len(logged) == 2  # batches 0 and 2
    for name in ("lin.weight", "lin.bias", "norm.weight", "norm.bias"):
        per_layer = [v for _, v in memory.data[f"grad_norm/{name}"]]
        assert per_layer == pytest.approx([naive.per_name[b][name] for b in (0, 2)], rel=1e-6)
    final_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.close()

    saved = torch.load(ckpt, weights_only=False)["state"]
    saved_optim = saved["optimizers"]["StableAdamW"]  # the key Composer restores from
    assert set(saved_optim["state"]) == {"lin.weight", "lin.bias", "norm.weight", "norm.bias"}
    assert [g["weight_decay"] for g in saved_optim["param_groups"]] == [0.0, 1e-3]

    # ---- phase 2: new lr, weight decay and schedule; time reset; restart_override
    trainer2, rec = phase2(ckpt, override="optimizer")
    model2 = trainer2.state.model
    names = {p: n for n, p in model2.named_parameters()}
    assert {names[p] for p in rec.loaded_state} == set(saved_optim["state"])
    for p, st in rec.loaded_state.items():  # moments right after the load are the saved ones
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[key], saved_optim["state"][names[p]][key]), (names[p], key)
    for g in rec.loaded_groups:  # full state: the debiasing step count continues; the new phase's hyperparameters
        assert g["step"].item() == 4
        assert g["max_lr"] == 3e-3 and g["initial_lr"] == 3e-3
    assert [g["weight_decay"] for g in rec.loaded_groups] == [0.0, 1e-4]
    assert [g["param_names"] for g in rec.loaded_groups] == [["lin.bias", "norm.weight", "norm.bias"], ["lin.weight"]]
    assert trainer2.state.schedulers[0].base_lrs == [3e-3, 3e-3]

    # the time restarted at 0 and the lr follows the new schedule from batch 0
    assert [b for b, _ in rec.used] == list(range(6))
    assert rec.used[0][1] == pytest.approx([3e-3 * one_minus_sqrt(0)] * 2, rel=1e-12)
    assert [b for b, _ in rec.set_at] == list(range(6))
    for t, lr in rec.set_at:  # the scheduler's lr set after batch t is peak * alpha(t)
        assert lr == pytest.approx(3e-3 * one_minus_sqrt(t), rel=1e-12), t
    for (_, used), (_, prev) in zip(rec.used[1:], rec.set_at):  # and that is what the next batch trains with
        assert used == pytest.approx([prev, prev], rel=1e-12)
    assert rec.set_at[-1][1] == pytest.approx(3e-3 * (0.1 + 0.9 * (1 - math.sqrt(2 / 3))))
    trainer2.close()

    # weights came back too (checked on a fresh load: training has moved model2's)
    torch.manual_seed(2)
    probe = Toy()
    Trainer(model=probe, train_dataloader=loader(), optimizers=build_optimizer(OPT2, probe), max_duration="1ba",
            load_path=str(ckpt), device="cpu", progress_bar=False, log_to_console=False, loggers=[]).close()
    for n, p in probe.named_parameters():
        assert torch.equal(p.detach(), final_weights[n]), n

    # control: without the override Composer restores phase 1's lr (1e-2) for the first batch
    trainer3, rec3 = phase2(ckpt, override=None)
    assert rec3.used[0][1][0] == pytest.approx(1e-2)
    assert rec3.loaded_groups[1]["weight_decay"] == 1e-3
    trainer3.close()

    # the override also works when it snapshots the optimizer itself at Event.INIT
    trainer4, rec4 = phase2(ckpt, override="init")
    assert [lr for _, lr in rec4.set_at] == pytest.approx([lr for _, lr in rec.set_at], rel=1e-12)
    assert rec4.used[0][1] == [0.0, 0.0]
    assert [g["weight_decay"] for g in rec4.loaded_groups] == [0.0, 1e-4]
    trainer4.close()
