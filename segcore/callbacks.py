"""Lightning callbacks for TensorBoard: the HParams entry of a run and image / truth / prediction overlays."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams
from torchvision.utils import make_grid

from segcore.metrics_names import EVAL_METRICS, SWEEP_METRIC, VAL_PREDICTIONS, VAL_PREDICTIONS_PADDING, stage_metric


def tensorboard_of(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def hparam_values(config: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard's HParams take bool / number / string values only."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}


class HParamsCallback(pl.Callback):
    """Registers the run in TensorBoard's HParams dashboard with its config and the metrics to compare.

    Only the session is declared here; the metric values are the run's own ``val/...`` scalars, which the dashboard
    reads by tag. (Lightning's ``log_hyperparams(metrics=...)`` would also write a fake value at step 0.)
    """

    def __init__(self, config: dict[str, Any], metrics: tuple[str, ...] = tuple(stage_metric("val", m)
                                                                                 for m in EVAL_METRICS)):
        """``metrics``: the run's metric tags (``segcore.metrics_names.eval_metrics``; binary's by default)."""
        assert SWEEP_METRIC in metrics
        self.config = hparam_values(config)
        self.metrics = metrics
        self._written = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_of(trainer)
        if writer is None or self._written or trainer.global_rank != 0:
            return
        experiment, session_start, session_end = hparams(self.config, {m: 0.0 for m in self.metrics})
        for summary in (experiment, session_start, session_end):  # SummaryWriter opens its file_writer at once
            writer.file_writer.add_summary(summary)
        self._written = True


def overlay(images: torch.Tensor, masks: torch.Tensor, color: tuple[int, int, int]) -> torch.Tensor:
    """uint8 images (N, 3, H, W) with the pixels where mask == 1 tinted by ``color`` (half transparent)."""
    tint = torch.tensor(color, dtype=torch.float32).view(1, 3, 1, 1)
    on = (masks == 1).float()
    out = images.float() * (1 - 0.5 * on) + tint * 0.5 * on
    return out.clamp(0, 255).to(torch.uint8)


def overlay_classes(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """uint8 images (N, 3, H, W) with each pixel tinted by its class's colour (segcore.palette; half transparent);
    ignored pixels (255) untouched."""
    known = (labels < num_classes).float()  # (N, 1, H, W)
    tint = colour_map(labels, num_classes).float()
    out = images.float() * (1 - 0.5 * known) + tint * 0.5 * known
    return out.clamp(0, 255).to(torch.uint8)


def colour_map(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """uint8 labels (N, 1, H, W) as solid class colours (N, 3, H, W) (segcore.palette); ignored pixels (255) white.
    Solid, not over the image: with several classes a tint mixes with the image's own colours (a magenta object
    under a green tint reads grey)."""
    from segcore.palette import class_colours

    colours = torch.tensor([*class_colours(num_classes), (255, 255, 255)], dtype=torch.uint8)  # the last: ignore
    index = torch.where(labels[:, 0].long() < num_classes, labels[:, 0].long(), num_classes)
    return colours[index].permute(0, 3, 1, 2).contiguous()


def comparison_grid(images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor,
                    num_classes: int = 2) -> torch.Tensor:
    """Rows of image | truth | prediction for each sample, as one uint8 (3, H, W) grid: two classes as the
    foreground tinted green (truth) and red (prediction) over the image, more as solid maps of each class's colour
    (segcore.palette; ignored pixels white)."""
    rows = []
    for i in range(images.shape[0]):
        img = images[i:i + 1]
        if num_classes > 2:
            rows += [img, colour_map(truth[i:i + 1], num_classes), colour_map(pred[i:i + 1], num_classes)]
        else:
            rows += [img, overlay(img, truth[i:i + 1], (0, 200, 0)), overlay(img, pred[i:i + 1].to(torch.uint8),
                                                                              (220, 0, 0))]
    return make_grid(torch.cat(rows), nrow=3, padding=VAL_PREDICTIONS_PADDING, pad_value=255)


def encoded_grid(grid: torch.Tensor, tile: int = 128, quality: int = 85) -> str:
    """A comparison grid as a JPEG in base64 text (what travels in a sweep's result rows), each image at most
    ``tile`` pixels wide: a few kilobytes per epoch."""
    import base64
    import io

    from PIL import Image

    image = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())
    columns = 3
    width = min(image.width, columns * (tile + 2))
    if width < image.width:
        image = image.resize((width, round(image.height * width / image.width)), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class OverlayImagesCallback(pl.Callback):
    """After each validation epoch, a few validation images with their truth and the current prediction."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_of(trainer)
        sample = getattr(pl_module, "val_sample", None)
        if writer is None or sample is None or trainer.sanity_checking or trainer.global_rank != 0:
            return
        grid = comparison_grid(*sample, num_classes=len(pl_module.class_names))
        writer.add_image(VAL_PREDICTIONS, grid, global_step=trainer.current_epoch)
