"""Tests for segcore.model and segcore.losses: forward shapes, freezing, losses, divergence detection."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from segcore.build import make_trainer
from segcore.config import LOSSES, TrainConfig
from segcore.data.datamodule import PetsDataModule
from segcore.losses import IGNORE_INDEX, build_loss
from segcore.model import IMAGENET_MEAN, IMAGENET_STD, DivergedError, SegmentationModule

PARTS = ("encoder", "decoder", "head")


def make_module(**values) -> SegmentationModule:
    cfg = TrainConfig(**{"encoder_weights": "none", "image_size": 64, **values})
    return SegmentationModule(cfg)


def uint8_batch(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def fit(module: SegmentationModule, cfg: TrainConfig, tmp_path) -> pl.Trainer:
    trainer = make_trainer(cfg, tmp_path, logger=False, checkpoint=False, enable_progress_bar=False,
                           enable_model_summary=False)
    trainer.fit(module, datamodule=PetsDataModule(cfg))
    return trainer


# ----- forward shapes (SMP test style: one base check, parametrized over models) ---------------------------
class BaseForward:
    arch = "unet"
    encoder = "resnet18"
    image_size = 64

    def module(self) -> SegmentationModule:
        return make_module(arch=self.arch, encoder=self.encoder, image_size=self.image_size).eval()

    def test_uint8_batch_gives_one_logit_map_per_image(self):
        module = self.module()
        images = uint8_batch(2, self.image_size)
        with torch.no_grad():
            logits = module(images)
        assert logits.shape == (2, 1, self.image_size, self.image_size)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch, encoder, image_size", [
    ("unet", "resnet18", 64),
    ("fpn", "resnet18", 64),
    ("linknet", "resnet18", 64),
    ("deeplabv3plus", "resnet18", 64),
    ("manet", "resnet18", 64),
    ("unetplusplus", "mobilenet_v2", 64),
    # PAN needs >= 128 px (output stride 16, then three 2x pools): see the xfail in test_config.py
    ("pan", "resnet18", 128),
    ("unet", "tu-mobilenetv3_small_050", 64),
    ("fpn", "mobilenet_v2", 64),
])
class TestForwardShapes(BaseForward):
    @pytest.fixture(autouse=True)
    def _model(self, arch, encoder, image_size):
        self.arch, self.encoder, self.image_size = arch, encoder, image_size


def test_uint8_input_is_normalised_inside_forward():
    module = make_module(arch="fpn", encoder="resnet18").eval()
    images = uint8_batch(2, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = module.net((images.float() / 255 - mean) / std)
        from_uint8 = module(images)
        from_float = module(images.float())
    torch.testing.assert_close(from_uint8, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(from_float, from_uint8)


def test_timm_encoder_uses_its_own_normalisation():
    import timm

    module = make_module(arch="unet", encoder="tu-mobilenetv3_small_050")
    cfg = timm.models.get_pretrained_cfg("mobilenetv3_small_050")
    torch.testing.assert_close(module.mean.flatten(), torch.tensor(cfg.mean) * 255)
    torch.testing.assert_close(module.std.flatten(), torch.tensor(cfg.std) * 255)


# ----- freezing ---------------------------------------------------------------------------------------------
def test_train_mode_keeps_frozen_parts_in_eval():
    module = make_module(arch="unet", encoder="resnet18", freeze_encoder=True, freeze_head=True)
    module.train()
    parts = module._parts()
    assert all(not m.training for m in parts["encoder"].modules())
    assert all(not m.training for m in parts["head"].modules())
    assert all(m.training for m in parts["decoder"].modules())
    assert all(not p.requires_grad for p in parts["encoder"].parameters())
    assert all(not p.requires_grad for p in parts["head"].parameters())
    assert all(p.requires_grad for p in parts["decoder"].parameters())
    module.eval()
    assert not any(m.training for m in module.modules())


def _snapshot(part: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"param:{n}": p.detach().clone() for n, p in part.named_parameters()}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in part.named_buffers()})
    return state


@pytest.mark.parametrize("frozen", [("encoder",), ("decoder",), ("head",), ("encoder", "decoder")],
                         ids=lambda f: "+".join(f))
@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_fit_leaves_frozen_parts_bit_identical_and_trains_the_rest(frozen, tiny_config, tmp_path):
    # unet: BatchNorm in both encoder and decoder, so frozen running statistics are really exercised
    cfg = tiny_config.replace(arch="unet", **{f"freeze_{p}": True for p in frozen})
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(cfg)
    parts = module._parts()
    assert has_batchnorm(parts["encoder"]) and has_batchnorm(parts["decoder"])
    before = {name: _snapshot(part) for name, part in parts.items()}

    fit(module, cfg, tmp_path)

    for name, part in parts.items():
        after = _snapshot(part)
        assert after.keys() == before[name].keys()
        if name in frozen:
            changed = [k for k in after if not torch.equal(after[k], before[name][k])]
            assert changed == [], f"frozen {name} changed: {changed[:5]}"
            assert all(not p.requires_grad for p in part.parameters())
        else:
            params_changed = [k for k in after if k.startswith("param:") and
                              not torch.equal(after[k], before[name][k])]
            assert params_changed, f"trainable {name} did not change"
            if has_batchnorm(part):
                stats = [k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
                assert stats
                assert all(not torch.equal(after[k], before[name][k]) for k in stats), \
                    f"{name} BatchNorm statistics did not update"


# ----- losses -----------------------------------------------------------------------------------------------
def _logits_and_target(seed: int = 0, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, size, size, generator=g)
    target = torch.randint(0, 2, (2, 1, size, size), generator=g).float()
    return logits, target


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_a_finite_scalar_that_backpropagates(name):
    loss_fn = build_loss(name)
    logits, target = _logits_and_target()
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    assert loss.item() > 0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_lower_for_a_better_prediction(name):
    loss_fn = build_loss(name)
    _, target = _logits_and_target()
    good = (target * 2 - 1) * 5  # confident and right
    bad = -good  # confident and wrong
    assert loss_fn(good, target) < loss_fn(bad, target)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_do_not_change_the_loss(name):
    loss_fn = build_loss(name, ignore_index=IGNORE_INDEX)
    logits, target = _logits_and_target(seed=1)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[..., 4:10, 3:12] = True
    target = target.masked_fill(ignored, IGNORE_INDEX)

    base = loss_fn(logits, target)
    other = logits.clone()
    other[ignored] = torch.randn(int(ignored.sum()), generator=torch.Generator().manual_seed(7)) * 10
    torch.testing.assert_close(loss_fn(other, target), base, rtol=1e-6, atol=0)

    # and the gradient at ignored pixels is zero
    x = logits.clone().requires_grad_(True)
    loss_fn(x, target).backward()
    assert torch.count_nonzero(x.grad[ignored]) == 0
    # not vacuous: a change at a counted pixel does change the loss
    counted = logits.clone()
    counted[~ignored] = -counted[~ignored]
    assert not torch.allclose(loss_fn(counted, target), base)


def test_module_uses_ignore_index_only_with_border_ignore():
    assert make_module(arch="fpn", encoder="resnet18", border="ignore").ignore_index == IGNORE_INDEX
    assert make_module(arch="fpn", encoder="resnet18", border="pet").ignore_index is None


# ----- divergence -------------------------------------------------------------------------------------------
def test_nan_training_loss_raises_diverged_error_during_fit(tiny_config, tmp_path):
    cfg = tiny_config.replace(optimizer="sgd", lr=1e38, scheduler="none")
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(cfg)
    with pytest.raises(DivergedError, match="lr=1e\\+38"):
        fit(module, cfg, tmp_path)
    assert not math.isfinite(float(module._last_loss))


def test_weights_ruined_by_an_epochs_last_step_are_diverged_before_validation_reports(tiny_config, tmp_path):
    """One step per epoch: its loss is computed before the update that ruins the weights, so only the validation
    loss shows it, and the epoch must not report a score computed from NaN logits."""
    cfg = tiny_config.replace(optimizer="sgd", lr=1e38, scheduler="none", batch_size=64, epochs=2)
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(cfg)
    reported = []

    class Record(pl.Callback):  # where a sweep trial reports an epoch (segtune.trial.ReportEachEpoch)
        def on_train_epoch_end(self, trainer, pl_module):
            reported.append(dict(trainer.callback_metrics))

    trainer = make_trainer(cfg, tmp_path, logger=False, checkpoint=False, enable_progress_bar=False,
                           enable_model_summary=False, callbacks=[Record()])
    with pytest.raises(DivergedError, match="validation loss is nan at epoch 1"):
        trainer.fit(module, datamodule=PetsDataModule(cfg))
    assert math.isfinite(float(module._last_loss))  # the training loss alone would not have caught it
    assert reported == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_raises_on_non_finite_loss(value):
    module = make_module(arch="fpn", encoder="resnet18")
    module._last_loss = torch.tensor(value)
    with pytest.raises(DivergedError):
        module._check_finite()


def test_check_finite_accepts_a_finite_loss_and_no_loss_yet():
    module = make_module(arch="fpn", encoder="resnet18")
    module._check_finite()  # before any training step
    module._last_loss = torch.tensor(0.3)
    module._check_finite()
