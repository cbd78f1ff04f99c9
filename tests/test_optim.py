"""Tests for segcore.optim: optimizers and LR schedulers by name, their step intervals, and fits with each."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from segcore.build import make_trainer
from segcore.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from segcore.data.datamodule import PetsDataModule
from segcore.metrics_names import SWEEP_METRIC
from segcore.model import SegmentationModule
from segcore.optim import build_optimizer, build_scheduler

STEP_SCHEDULERS = ("cosine", "onecycle", "cyclic")
EPOCH_SCHEDULERS = ("step", "exponential", "plateau")


def cfg_with(**values) -> TrainConfig:
    return TrainConfig.from_dict({"arch": "fpn", "encoder": "resnet18", "encoder_weights": "none", **values})


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def test_scheduler_names_are_all_covered():
    assert set(SCHEDULERS) == {"none", *STEP_SCHEDULERS, *EPOCH_SCHEDULERS}


# ----- optimizers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_builds_and_a_step_changes_the_params(name):
    cfg = cfg_with(optimizer=name, lr=1e-2, weight_decay=1e-4)
    model = tiny_model()
    opt = build_optimizer(cfg, model.parameters())
    assert lr_of(opt) == cfg.lr
    assert opt.param_groups[0]["weight_decay"] == cfg.weight_decay
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("adagrad", torch.optim.Adagrad),
                                       ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_name_maps_to_its_torch_class(name, cls):
    opt = build_optimizer(cfg_with(optimizer=name), tiny_model().parameters())
    assert type(opt) is cls


def test_sgd_and_rmsprop_use_the_configured_momentum():
    for name in ("sgd", "rmsprop"):
        opt = build_optimizer(cfg_with(optimizer=name, momentum=0.5), tiny_model().parameters())
        assert opt.param_groups[0]["momentum"] == 0.5


# ----- schedulers -------------------------------------------------------------------------------------------
def build(name: str, total_steps: int = 20, **values):
    cfg = cfg_with(scheduler=name, lr=1e-2, **values)
    opt = build_optimizer(cfg, tiny_model().parameters())
    return cfg, opt, build_scheduler(cfg, opt, total_steps=total_steps)


def test_none_scheduler_returns_none():
    _, _, sched = build("none")
    assert sched is None


@pytest.mark.parametrize("name", STEP_SCHEDULERS + EPOCH_SCHEDULERS)
def test_scheduler_dict_has_the_interval_it_is_defined_for(name):
    _, opt, sched = build(name)
    assert isinstance(sched, dict)
    assert sched["interval"] == ("step" if name in STEP_SCHEDULERS else "epoch")
    assert sched["scheduler"].optimizer is opt
    if name == "plateau":
        assert sched["monitor"] == SWEEP_METRIC
    else:
        assert "monitor" not in sched


def test_cosine_decreases_over_every_step_to_one_percent():
    cfg, opt, sched = build("cosine", total_steps=20)
    s = sched["scheduler"]
    lrs = [lr_of(opt)]
    for _ in range(20):
        opt.step()
        s.step()
        lrs.append(lr_of(opt))
    assert lrs[0] == pytest.approx(cfg.lr)
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(cfg.lr * 0.01)


def test_exponential_reaches_lr_times_gamma_after_epochs_steps():
    cfg, opt, sched = build("exponential", epochs=5, gamma=0.2)
    s = sched["scheduler"]
    lrs = [lr_of(opt)]
    for _ in range(cfg.epochs):
        opt.step()
        s.step()
        lrs.append(lr_of(opt))
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(cfg.lr * cfg.gamma)


def test_step_decays_by_gamma_every_step_size_epochs():
    cfg, opt, sched = build("step", step_size=3, gamma=0.5)
    s = sched["scheduler"]
    lrs = []
    for _ in range(7):
        lrs.append(lr_of(opt))
        opt.step()
        s.step()
    assert lrs[:3] == pytest.approx([cfg.lr] * 3)
    assert lrs[3:6] == pytest.approx([cfg.lr * 0.5] * 3)
    assert lrs[6] == pytest.approx(cfg.lr * 0.25)


def test_plateau_reduces_lr_when_the_metric_stops_improving():
    cfg, opt, sched = build("plateau", plateau_patience=2, gamma=0.5)
    s = sched["scheduler"]
    lrs = []
    for _ in range(cfg.plateau_patience + 1):  # first value sets the best, then `patience` bad epochs
        s.step(0.5)
        lrs.append(lr_of(opt))
    assert lrs == pytest.approx([cfg.lr] * len(lrs))
    s.step(0.4)  # one more non-improving epoch (IoU is maximised: lower is worse)
    assert lr_of(opt) == pytest.approx(cfg.lr * cfg.gamma)


def test_plateau_keeps_lr_while_the_metric_improves():
    cfg, opt, sched = build("plateau", plateau_patience=0, gamma=0.5)
    s = sched["scheduler"]
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        s.step(value)
    assert lr_of(opt) == pytest.approx(cfg.lr)


def test_onecycle_warms_up_to_lr_then_anneals():
    cfg, opt, sched = build("onecycle", total_steps=20)
    s = sched["scheduler"]
    lrs = [lr_of(opt)]
    for _ in range(19):
        opt.step()
        s.step()
        lrs.append(lr_of(opt))
    peak = max(lrs)
    assert lrs[0] < cfg.lr / 10
    assert peak == pytest.approx(cfg.lr)
    assert 0 < lrs.index(peak) < 19
    assert lrs[-1] < lrs[0]


def test_cyclic_goes_from_lr_over_10_to_lr_in_one_epoch_of_steps():
    total_steps, epochs = 20, 10
    cfg, opt, sched = build("cyclic", total_steps=total_steps, epochs=epochs)
    s = sched["scheduler"]
    steps_per_epoch = total_steps // epochs
    lrs = [lr_of(opt)]
    for _ in range(2 * steps_per_epoch):
        opt.step()
        s.step()
        lrs.append(lr_of(opt))
    assert lrs[0] == pytest.approx(cfg.lr / 10)
    assert lrs[steps_per_epoch] == pytest.approx(cfg.lr)
    assert lrs[2 * steps_per_epoch] == pytest.approx(cfg.lr / 10)



@pytest.mark.parametrize("name", ["onecycle", "cyclic"])
def test_sgd_without_momentum_keeps_zero_momentum(name):
    _, opt, sched = build(name, optimizer="sgd", momentum=0.0)
    s = sched["scheduler"]
    for _ in range(5):
        opt.step()
        s.step()
        assert opt.param_groups[0]["momentum"] == 0.0


# ----- real fits ----------------------------------------------------------------------------------------------
def fit(cfg: TrainConfig, tmp_path, **overrides) -> tuple[SegmentationModule, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(cfg)
    trainer = make_trainer(cfg, tmp_path, logger=False, checkpoint=False, enable_progress_bar=False,
                           enable_model_summary=False, **overrides)
    trainer.fit(module, datamodule=PetsDataModule(cfg))
    return module, trainer


@pytest.mark.parametrize("name", SCHEDULERS)
def test_short_fit_works_with_each_scheduler(name, tiny_config, tmp_path):
    # sgd exercises the momentum cycling of onecycle / cyclic; adam the rest
    optimizer = "sgd" if name in ("onecycle", "cyclic") else "adam"
    cfg = tiny_config.replace(scheduler=name, optimizer=optimizer, lr=1e-3)
    module, trainer = fit(cfg, tmp_path)
    assert trainer.state.finished and trainer.current_epoch == 1
    assert trainer.global_step > 0
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    configs = trainer.lr_scheduler_configs
    if name == "none":
        assert configs == []
    else:
        assert len(configs) == 1
        assert configs[0].interval == ("step" if name in STEP_SCHEDULERS else "epoch")
        if name == "plateau":
            assert configs[0].monitor == SWEEP_METRIC
        if name in ("cosine", "exponential"):  # stepped by Lightning: the LR has moved below its start
            assert lr_of(trainer.optimizers[0]) < cfg.lr


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_frozen_parameters_are_not_given_to_the_optimizer(tiny_config, tmp_path):
    cfg = tiny_config.replace(freeze_encoder=True, freeze_head=True)
    module, trainer = fit(cfg, tmp_path, max_steps=1, limit_val_batches=0)
    given = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    frozen = {id(p) for name in ("encoder", "head") for p in module._parts()[name].parameters()}
    assert trainable == {id(p) for p in module.net.decoder.parameters()}
    assert given == trainable
    assert not given & frozen
