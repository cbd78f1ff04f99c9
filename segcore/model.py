"""The segmentation LightningModule: any SMP architecture x encoder, two classes or many.

Two classes train as a binary segmentation: one logit, sigmoid, the foreground's IoU (SMP's metrics). Three or more
train with one logit per class (softmax, the losses in their multi-class form) and are scored by mean IoU over
classes (segcore.metrics.MultiClassSegMetrics), with each class's IoU and the pixel accuracy beside it.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from segcore.config import TrainConfig
from segcore.device import channels_last_of
from segcore.losses import IGNORE_INDEX, build_loss
from segcore.metrics import BinarySegMetrics, MultiClassSegMetrics
from segcore.metrics_names import LEARNING_RATE, TRAIN_LOSS, VAL_PREDICTIONS_IMAGES, class_metric, stage_metric
from segcore.optim import build_optimizer, build_scheduler
from segcore.weights import create_model

log = logging.getLogger(__name__)

# Batches arrive as uint8 and are normalised on the device: 4x less host-to-device traffic than float32.
# ImageNet statistics serve every SMP encoder's imagenet weights and need no download (SMP 0.6 fetches them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the trial's hyperparameters do not train."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch  # 1-based: the epoch whose training produced the non-finite loss


def normalisation(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])  # shipped with timm: no network
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


class SegmentationModule(pl.LightningModule):
    def __init__(self, cfg: TrainConfig, encoder_state: Optional[dict[str, torch.Tensor]] = None):
        """``encoder_state``: pretrained encoder weights fetched elsewhere (a sweep's driver); given, nothing is
        downloaded or read from the weights cache here."""
        super().__init__()
        self.save_hyperparameters({"config": cfg.to_dict()})  # checkpoints rebuild the module from it
        self.cfg = cfg
        self.class_names = cfg.class_names
        self.multiclass = len(self.class_names) > 2
        outputs = len(self.class_names) if self.multiclass else 1
        if encoder_state is not None:
            self.net = create_model(cfg.arch, cfg.encoder, "none", classes=outputs)
            self.net.encoder.load_state_dict(encoder_state)
        else:
            self.net = create_model(cfg.arch, cfg.encoder, cfg.encoder_weights, classes=outputs)
        mean, std = normalisation(cfg.encoder)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        # a folder's own masks may hold 255 anywhere; Pets' trimaps only where the border is ignored
        self.ignore_index = IGNORE_INDEX if cfg.border == "ignore" or cfg.classes is not None else None
        self.loss_fn = build_loss(cfg.loss, self.ignore_index, len(self.class_names))

        def metrics() -> nn.Module:
            return MultiClassSegMetrics(len(self.class_names)) if self.multiclass else BinarySegMetrics()

        self.metrics = nn.ModuleDict({"val": metrics(), "test": metrics()})
        self._freeze()
        self.channels_last = channels_last_of(cfg)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.val_sample: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._eval_loss_sum: torch.Tensor | float = 0.0  # this evaluation's loss, summed on the device
        self._step_losses: list[torch.Tensor] = []  # this epoch's training losses, kept on the device

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu") -> "SegmentationModule":
        """Rebuild from a Lightning checkpoint (ours or a sweep trial's) without fetching pretrained weights:
        the checkpoint holds every weight, so the encoder is built empty and then loaded."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        config = dict(checkpoint["hyper_parameters"]["config"], encoder_weights="none")
        module = cls(TrainConfig.from_dict(config))
        module.load_state_dict(checkpoint["state_dict"])
        return module.eval()

    # ----- freezing -----------------------------------------------------------------------------------------
    def _parts(self) -> dict[str, nn.Module]:
        return {"encoder": self.net.encoder, "decoder": self.net.decoder, "head": self.net.segmentation_head}

    def _freeze(self) -> None:
        for name in self.cfg.frozen_parts:
            for p in self._parts()[name].parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode, so their BatchNorm running statistics (and dropout) never change."""
        super().train(mode)
        for name in self.cfg.frozen_parts:
            self._parts()[name].eval()
        return self

    # ----- forward and steps --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float [0, 255] images (N, 3, H, W) -> logits (N, 1, H, W), or (N, C, H, W) for C > 2 classes."""
        x = (images.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        logits = self(images)
        # binary losses take a float mask shaped as the logit; multi-class ones the class indices (B, H, W)
        target = masks[:, 0].long() if self.multiclass else masks.float()
        loss = self.loss_fn(logits, target)
        batch_size = images.shape[0]
        if stage == "train":
            self.log(TRAIN_LOSS, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size,
                     sync_dist=True)  # reduced across DDP ranks once, at epoch end
        else:
            self.metrics[stage].update(logits, masks)
            self.log(stage_metric(stage, "loss"), loss, on_epoch=True, batch_size=batch_size, sync_dist=True)
            self._eval_loss_sum = self._eval_loss_sum + loss.detach()  # a tensor: no host sync per step
            if stage == "val" and self.val_sample is None:
                n = min(VAL_PREDICTIONS_IMAGES, batch_size)
                self.val_sample = (images[:n].detach().cpu(), masks[:n].detach().cpu(),
                                   self.predicted_classes(logits[:n].detach()).cpu())
        return loss

    def predicted_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """Each pixel's class (uint8, (N, 1, H, W)): the logit's sign for two classes, the argmax for more."""
        if self.multiclass:
            return logits.argmax(dim=1, keepdim=True).to(torch.uint8)
        return (logits > 0).to(torch.uint8)

    def training_step(self, batch, batch_idx):
        loss = self._shared_step(batch, "train")
        # Checked once per epoch, not per step: a per-step .item() would stall the GPU pipeline.
        self._last_loss = loss.detach()
        self._step_losses.append(self._last_loss)
        return loss

    def step_losses(self) -> list[float]:
        """This epoch's training loss at each step (this process's steps), read from the device at once."""
        return torch.stack(self._step_losses).float().tolist() if self._step_losses else []

    def on_train_epoch_start(self) -> None:
        self._step_losses = []
        # the LR this epoch starts with; logged here so it is in the metrics reported at validation end
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        self.log(LEARNING_RATE, opt.param_groups[0]["lr"], on_step=False, on_epoch=True)

    def _check_finite(self) -> None:
        last = getattr(self, "_last_loss", None)
        if last is not None and not math.isfinite(float(last)):
            raise DivergedError(f"training loss is {float(last)} at epoch {self.current_epoch + 1}: "
                                f"lr={self.cfg.lr}, optimizer={self.cfg.optimizer} diverged",
                                epoch=self.current_epoch + 1)

    def on_train_epoch_end(self) -> None:
        self._check_finite()

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        per_class = values.pop("per_class_iou", None)
        for name, value in values.items():
            self.log(stage_metric(stage, name), value, prog_bar=name == "iou")
        if per_class is not None:  # NaN: a class absent from truth and prediction over the whole split
            for class_name, value in zip(self.class_names, per_class):
                self.log(stage_metric(stage, class_metric(class_name)), value)
        self.metrics[stage].reset()

    def on_validation_epoch_start(self) -> None:
        # validation runs before on_train_epoch_end: stop a diverged run before it reports metrics
        if not self.trainer.sanity_checking:
            self._check_finite()
        self.val_sample = None
        self._eval_loss_sum = torch.zeros((), device=self.device)

    def on_validation_epoch_end(self) -> None:
        # The last step of an epoch can leave non-finite weights behind a finite training loss (the loss is
        # computed before the update): the validation loss shows it before the epoch reports a meaningless score.
        # One reduction per epoch, so that every DDP rank stops together.
        if not self.trainer.sanity_checking:
            total = self.trainer.strategy.reduce(self._eval_loss_sum, reduce_op="sum")
            if not torch.isfinite(total):
                raise DivergedError(f"validation loss is {float(total)} at epoch {self.current_epoch + 1}: "
                                    f"lr={self.cfg.lr}, optimizer={self.cfg.optimizer} diverged",
                                    epoch=self.current_epoch + 1)
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch, batch_idx):
        """Probabilities: the foreground's (N, 1, H, W) for two classes, each class's (N, C, H, W) for more."""
        logits = self(batch["image"])
        return logits.softmax(dim=1) if self.multiclass else logits.sigmoid()

    # ----- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.cfg, trainable)
        scheduler = build_scheduler(self.cfg, optimizer, self.trainer.estimated_stepping_batches)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

