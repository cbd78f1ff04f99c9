"""One Tune trial: a segcore training run that reports every epoch to Tune with a checkpoint to resume from.

A trial trains in its own process, or, with ``--workers-per-trial N``, with DDP over N Ray Train workers (gloo on
CPU, nccl on GPU) started from inside the trial; either way it reads the driver's assets from the object store.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import logging
import math
import os
import socket
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np
import pytorch_lightning as pl
import ray
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.plugins.io import TorchCheckpointIO
from ray import tune

from segcore.build import build_module, describe_device, make_trainer, on_gpu, quiet_lightning
from segcore.callbacks import comparison_grid, encoded_grid
from segcore.config import TrainConfig
from segcore.data.datamodule import PetsDataModule
from segcore.metrics_names import (
    DEVICE_SETUP,
    DIVERGED,
    EPOCH,
    SWEEP_METRIC,
    SWEEP_MODE,
    TRAIN_LOSS_STEP,
    VAL_PREDICTIONS,
)
from segcore.model import DivergedError
from segtune import checkpoint_policy as policies
from segtune.checkpoint_policy import FULL, WEIGHTS, CheckpointClock, CheckpointPolicy
from segtune.cluster import LOGICAL_GPUS_ON_CPU
from segtune.sigterm import end_even_from_callbacks
from segtune.spaces import trial_config
from segtune.storage import CHECKPOINT_FILE, PREDICTIONS_FILE


def placement(world_size: int) -> dict[str, Any]:
    """Where this process trains, reported with every result (and so in trials.csv). ``gpu``: the ids of the GPUs
    Ray assigned to it (the node's numbering, as in CUDA_VISIBLE_DEVICES; a shared GPU has the same id in every
    trial on it)."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "device": device, "gpu": ",".join(str(i) for i in ray.get_gpu_ids()), "world_size": world_size}


def on_assigned_gpu(cfg: TrainConfig, gpus: float) -> tuple[TrainConfig, str]:
    """The config a trial holding ``gpus`` of Ray's GPUs trains with, and a note for its device line.

    Ray assigned the GPU(s), so the process must see CUDA: if it does not (a CPU-only torch, a driver missing on
    the node), the trial fails with the reason instead of training on the CPU unnoticed, except under the test
    switch LOGICAL_GPUS_ON_CPU."""
    if gpus <= 0:
        return cfg, ""
    ids = ",".join(str(i) for i in ray.get_gpu_ids()) or "none"
    if torch.cuda.is_available():
        return cfg, f"Ray's GPU {ids} (share {gpus:g})"
    if os.environ.get(LOGICAL_GPUS_ON_CPU) == "1":
        return (dataclasses.replace(cfg, accelerator="cpu"),
                f"Ray's logical GPU {ids} (share {gpus:g}); no CUDA: training on the CPU ({LOGICAL_GPUS_ON_CPU}=1)")
    raise RuntimeError(f"this trial holds GPU {ids} (--gpus-per-trial {gpus:g}) but its process sees no CUDA device "
                       f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES="
                       f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): install a CUDA build of torch and the "
                       f"NVIDIA driver on node {socket.gethostname()}, or sweep with --gpus-per-trial 0")


class ReportEachEpoch(pl.Callback):
    """At each epoch end: the epoch's metrics, where it ran, and what the checkpoint policy writes (the full state,
    the weights alone, or nothing; see segtune.checkpoint_policy), reported to Ray.

    Runs after validation (Lightning 2 validates before ``on_train_epoch_end``), so a report holds the epoch's
    train loss and validation metrics together.
    """

    def __init__(self, report: Callable, checkpoint_cls: type, extra: dict[str, Any],
                 policy: CheckpointPolicy = CheckpointPolicy(epochs=1)):  # noqa: B008 (frozen: shared safely)
        self.report, self.checkpoint_cls, self.extra = report, checkpoint_cls, extra
        self.clock = CheckpointClock(policy)
        self.stopped = False  # Tune stopped the trial (see stopped_by_tune)
        self.reports = 0
        self.best = -math.inf  # the best val/iou so far: its weights are the trial's result
        self.full_epoch: Optional[int] = None  # the epoch of the last full state written

    def resumed_from(self, meta: dict) -> None:
        """Continue the schedule of the full state a trial is resumed from."""
        self.full_epoch = meta.get("epoch")
        self.best = -math.inf if meta.get("best") is None else meta["best"]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if hasattr(pl_module, "step_losses"):
            metrics[TRAIN_LOSS_STEP] = pl_module.step_losses()  # one host sync for the epoch's steps
        sample = getattr(pl_module, "val_sample", None)
        grid = None
        if sample is not None and trainer.global_rank == 0:  # the first validation images, the same every epoch
            grid = comparison_grid(*sample, num_classes=len(pl_module.class_names))
            metrics[VAL_PREDICTIONS] = encoded_grid(grid)
        epoch = trainer.current_epoch + 1
        metrics.update(self.extra, **{EPOCH: epoch})
        value = metrics.get(SWEEP_METRIC, math.nan)
        improved = math.isfinite(value) and value > self.best
        if improved:
            self.best = value
        kind = FULL if self.clock.full_due(epoch, lambda: full_state_bytes(trainer)) else WEIGHTS if improved else None
        if kind is None:
            self._report(trainer, metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="segsweep-ckpt-") as folder:
            started = time.monotonic()
            path = os.path.join(folder, CHECKPOINT_FILE)
            trainer.save_checkpoint(path, weights_only=kind == WEIGHTS)  # every rank: it may synchronise
            if kind == FULL:
                self.full_epoch = epoch
            policies.write_meta(folder, kind, epoch, self.full_epoch, self.best)
            if improved and grid is not None:  # the report shows the best weights' predictions from this file
                np.save(os.path.join(folder, PREDICTIONS_FILE), grid.permute(1, 2, 0).numpy())
            nbytes = os.path.getsize(path) if trainer.global_rank == 0 else 0
            metrics.update({policies.KIND_KEY: kind, policies.BYTES_KEY: nbytes})
            checkpoint = self.checkpoint_cls.from_directory(folder) if trainer.global_rank == 0 else None
            self._report(trainer, metrics, checkpoint)  # Ray copies the folder to the trial's storage here
            self.clock.wrote(nbytes, time.monotonic() - started, kind)

    def _report(self, trainer: pl.Trainer, metrics: dict, checkpoint) -> None:
        try:
            self.reports += 1
            self.report(metrics, checkpoint=checkpoint)
        except SystemExit:
            if trainer.world_size > 1:
                raise  # Ray Train ends every rank of a DDP trial itself
            self.stopped_by_tune(trainer)
            return
        trainer.strategy.barrier()

    def stopped_by_tune(self, trainer: pl.Trainer) -> None:
        """Tune stops a trial (ASHA, the sweep's end, a stop signal) by raising SystemExit from ``report`` in the
        training thread, and ends the trial's process a moment later, whatever that thread is doing. Unwinding
        Lightning and torch by that exception while the process went made it abort now and then, and Ray's fault
        handler printed a native stack dump into the sweep's terminal. So Lightning stops the ordinary way after
        this epoch (its teardown runs), the SystemExit is raised again only outside it (``train_trial``), and a
        process ended under the thread from here on is expected: nothing to dump."""
        faulthandler.disable()
        trainer.should_stop = True
        self.stopped = True


class DirectCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into the file. Lightning's default serialises the whole checkpoint into memory and then
    writes that copy through fsspec (an atomic write): about twice the time, for a file in a fresh temporary folder
    that nothing reads before Ray copies it to the trial's storage, after the save returned."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        torch.save(checkpoint, path)


def full_state_bytes(trainer: pl.Trainer) -> int:
    """What the full state weighs in memory (weights and optimizer state): its checkpoint's size, near enough."""
    tensors = [*trainer.lightning_module.state_dict().values()]
    for optimizer in trainer.optimizers:
        tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _fit(cfg: TrainConfig, assets, report: ReportEachEpoch, resume_from, device_share: float = 1.0,
         announce: bool = False, device_note: str = "", **trainer_overrides: Any) -> None:
    """``announce``: report the trial's device line with its results (a single-process trial), ``device_note``
    first (which of Ray's GPUs it holds)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # no data dir, no decoding: the driver's arrays
    datamodule = PetsDataModule(cfg, decoded=assets.data_for(cfg), device_share=device_share)
    if announce:
        datamodule.setup("fit")
        device = torch.device("cuda", 0) if on_gpu(cfg) else torch.device("cpu")  # Ray shows a trial its GPU as 0
        # reported with each result: the driver prints each distinct line once (tune_callbacks.Progress), where a
        # print here would come once per trial, in every worker's name
        report.extra[DEVICE_SETUP] = ((device_note + "; ") if device_note else "") + describe_device(
            cfg, datamodule.data_path(device)[1])
    module = build_module(cfg, encoder_state=assets.encoder_for(cfg))  # no download: the driver's weights
    trainer = make_trainer(cfg, None, callbacks=[report], logger=False, checkpoint=False, enable_progress_bar=False,
                           enable_model_summary=False, **trainer_overrides)
    try:
        full = None if resume_from is None else policies.full_state_for(resume_from.filesystem, resume_from.path)
        if full is None or full[0] is None:  # a new trial, or one that never wrote its full state: from epoch 1
            trainer.fit(module, datamodule=datamodule)
        else:  # an interrupted trial continues from its last full state
            report.resumed_from(full[1])
            with type(resume_from)(full[0], resume_from.filesystem).as_directory() as folder:
                trainer.fit(module, datamodule=datamodule, ckpt_path=os.path.join(folder, CHECKPOINT_FILE))
    except DivergedError as err:
        # An outcome of the hyperparameters, not a failure to retry: the trial ends with a NaN val/iou, which the
        # search records as failed and no best-trial choice can pick.
        # (every DDP rank reports, as Ray Train expects of each epoch's report)
        print(f"trial diverged: {err}", flush=True)
        report.report({SWEEP_METRIC: math.nan, DIVERGED: 1, EPOCH: err.epoch, **report.extra})
        return
    if not report.reports and not report.stopped and trainer.current_epoch < trainer.max_epochs:
        # Lightning skips an epoch without batches with a warning only; Tune would then fail the trial with a
        # message about a missing metric that says nothing of the cause. (A trial resumed from its last epoch's
        # checkpoint, when a kill came between that epoch's report and the trial's end, has nothing left to run.)
        raise RuntimeError(f"the trial ran no epoch: Lightning found no training batch to run "
                           f"({len(datamodule.train_set)} training images, batch_size {cfg.batch_size}, "
                           f"{trainer.world_size} process(es))")


def quiet() -> None:
    """Per-epoch 'checkpoint created' lines from every trial drown the sweep's progress in the driver's log."""
    quiet_lightning(placed=True)
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def trial_plugins() -> list:
    """Lightning plugins of a single-process trial. Its cluster environment is the plain one: a trial is one
    process that Ray placed, not a SLURM task, although on a SLURM allocation (sweep.sbatch) it inherits the SLURM_*
    variables of the `srun ray start` step. Detected from them, Lightning's SLURM environment would take the rank
    and world size of that step, install its requeue handler on SIGUSR1 and warn in every trial that srun is not
    used."""
    return [DirectCheckpointIO(), LightningEnvironment()]


def train_trial(params: dict[str, Any], base: dict[str, Any], cpus: float, gpus: float, workers: int,
                assets_ref: list, storage: str, checkpoint_every: str = "1") -> None:
    """The Tune trainable. ``assets_ref`` is a one-element list so Tune passes the ObjectRef, not its value."""
    end_even_from_callbacks()
    quiet()
    cfg = trial_config(params, base)
    if workers > 1:
        return _train_ddp(params, base, cpus, gpus, workers, assets_ref, storage)
    torch.set_num_threads(max(1, int(cpus)))  # the trial's CPU share, not the whole node
    cfg, gpu_note = on_assigned_gpu(cfg, gpus)
    report = ReportEachEpoch(tune.report, tune.Checkpoint, placement(world_size=1),
                             CheckpointPolicy.for_trial(checkpoint_every, workers))
    # Ray shows the trial only its own GPU (or a share of it): one device, never "all visible"
    devices = 1 if gpus > 0 else cfg.devices
    _fit(cfg, ray.get(assets_ref[0]), report, tune.get_checkpoint(), device_share=min(gpus, 1.0) or 1.0,
         announce=True, devices=devices, plugins=trial_plugins(), device_note=gpu_note)
    if report.stopped:
        raise SystemExit(0)  # how Tune's runner thread expects a stopped trial to end (no last report)


def _train_ddp(params, base, cpus, gpus, workers, assets_ref, storage) -> None:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"params": params, "base": base, "cpus": cpus, "assets_ref": assets_ref},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        # Same name and storage on a restarted trial: Ray Train resumes the run from its latest checkpoint.
        run_config=RunConfig(name=f"ddp_{trial_id}", storage_path=storage, callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SWEEP_METRIC,
                                                                checkpoint_score_order=SWEEP_MODE)),
    )
    trainer.fit()


def _ddp_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    end_even_from_callbacks()
    quiet()
    torch.set_num_threads(max(1, int(config["cpus"])))
    cfg = trial_config(config["params"], config["base"])
    world_size = ray.train.get_context().get_world_size()
    report = ReportEachEpoch(ray.train.report, ray.train.Checkpoint, placement(world_size))
    # Ray Train has set up the process group; Lightning joins it through Ray's strategy and environment
    _fit(cfg, ray.get(config["assets_ref"][0]), report, ray.train.get_checkpoint(), devices="auto",
         accelerator="auto", strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()])
