"""segtune.trial without Ray: one trial's fit on the driver's assets, reporting each epoch through the callable."""
from __future__ import annotations

import pytest

from segcore.metrics_names import SWEEP_METRIC
from segtune.assets import build_assets
from segtune.trial import ReportEachEpoch, _fit


class Checkpoint:  # what the report callable gets as checkpoint_cls: Tune's is made from a folder the same way
    @classmethod
    def from_directory(cls, folder):
        return folder


@pytest.fixture
def assets(tiny_config):
    return build_assets([tiny_config])[0]


def test_fit_reports_each_epoch_with_the_sweep_metric(tiny_config, assets):
    reports = []
    report = ReportEachEpoch(lambda metrics, checkpoint: reports.append(metrics), Checkpoint, {"world_size": 1})
    _fit(tiny_config.replace(epochs=2), assets, report, None)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(SWEEP_METRIC in r and r["world_size"] == 1 for r in reports)


def test_a_fit_that_runs_no_epoch_says_why_instead_of_ending_without_a_result(tiny_config, assets):
    report = ReportEachEpoch(lambda metrics, checkpoint: None, Checkpoint, {})
    with pytest.raises(RuntimeError, match=r"the trial ran no epoch: Lightning found no training batch "
                                           r"to run \(11 training images, batch_size 4, 1 process\(es\)\)"):
        _fit(tiny_config, assets, report, None, limit_train_batches=0)


def test_a_trial_resumed_from_its_last_epochs_checkpoint_ends_without_running_or_reporting(tiny_config, assets,
                                                                                           tmp_path):
    """A kill between the last epoch's report and the trial's end: Tune restarts the trial from that checkpoint,
    and there is nothing left to run."""
    from ray.tune import Checkpoint

    kept = tmp_path / "kept"
    report = ReportEachEpoch(lambda metrics, checkpoint: checkpoint.to_directory(str(kept)), Checkpoint, {})
    _fit(tiny_config, assets, report, None)  # epochs=1: the checkpoint of its last epoch is kept
    again = ReportEachEpoch(lambda metrics, checkpoint: pytest.fail("no epoch is left to report"), Checkpoint, {})
    _fit(tiny_config, assets, again, Checkpoint.from_directory(str(kept)))
    assert again.reports == 0


def test_a_policy_writes_the_full_state_on_schedule_the_weights_when_improved_and_resume_finds_the_full_state(
        tiny_config, assets, tmp_path):
    import math
    import shutil

    import pyarrow.fs
    import torch
    from ray.tune import Checkpoint

    from segtune.checkpoint_policy import BYTES_KEY, KIND_KEY, CheckpointPolicy, read_meta

    trial, reports = tmp_path / "trial_x", []

    def keep(metrics, checkpoint):  # as Tune does: each reported checkpoint copied into the trial's folder
        reports.append(metrics)
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, trial / f"checkpoint_{len(list(trial.glob('checkpoint_*'))):06d}")

    trial.mkdir()
    _fit(tiny_config.replace(epochs=3), assets, ReportEachEpoch(keep, Checkpoint, {}, CheckpointPolicy(epochs=2)),
         None)
    kinds = [r.get(KIND_KEY) for r in reports]
    assert kinds[:2] == ["weights", "full"] and kinds[2] in ("weights", None)  # epoch 3: weights if it improved
    best = [max(r[SWEEP_METRIC] for r in reports[:e]) for e in range(1, 4)]
    assert (kinds[2] == "weights") == (reports[2][SWEEP_METRIC] > best[1])
    folders = sorted(trial.glob("checkpoint_*"))
    weights = torch.load(folders[0] / "checkpoint.ckpt", weights_only=False)
    full = torch.load(folders[1] / "checkpoint.ckpt", weights_only=False)
    assert "optimizer_states" not in weights and full["optimizer_states"]
    from segcore.build import load_module  # what the final test and segcore.predict read a trial's best with

    loaded = load_module(folders[0] / "checkpoint.ckpt").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights["state_dict"].items())
    assert reports[0][BYTES_KEY] < reports[1][BYTES_KEY]  # Adam's state: the full one is about 3x the weights
    assert read_meta(pyarrow.fs.LocalFileSystem(), str(folders[1])) == \
        {"kind": "full", "epoch": 2, "full_epoch": 2, "best": pytest.approx(best[1])}
    assert all(math.isfinite(r[SWEEP_METRIC]) for r in reports)

    # resumed from its latest checkpoint (epoch 3's weights, or epoch 2's full state): it continues after epoch 2
    resumed = []
    again = ReportEachEpoch(lambda metrics, checkpoint: resumed.append(metrics), Checkpoint, {},
                            CheckpointPolicy(epochs=2))
    _fit(tiny_config.replace(epochs=4), assets, again, Checkpoint.from_directory(str(folders[-1])))
    assert [r["epoch"] for r in resumed] == [3, 4]
    assert resumed[1][KIND_KEY] == "full"
    assert again.best >= best[1]  # the best so far came with the full state: no epoch-3 weights if not better


def test_a_trial_on_a_slurm_allocation_is_not_taken_for_a_slurm_task(tiny_config, monkeypatch, tmp_path):
    """sweep.sbatch's trials (and its final test) inherit the SLURM_* variables of the `srun ray start` step (here
    a worker step of 3 tasks): their Trainers keep the plain environment, one process of rank 0, no requeue
    handler."""
    import signal
    import warnings

    from pytorch_lightning.plugins.environments import LightningEnvironment

    from segcore.build import make_trainer, test_trainer
    from segtune.trial import trial_plugins

    srun = tmp_path / "srun"  # what Lightning looks for on PATH before it warns that srun is not used
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    for key, value in dict(SLURM_JOB_ID="7", SLURM_JOB_NAME="segsweep", SLURM_NTASKS="3", SLURM_PROCID="2",
                           SLURM_LOCALID="0", SLURM_NODEID="2", SLURM_NTASKS_PER_NODE="1",
                           SLURM_NODELIST="node[1-3]", SLURM_JOB_NUM_NODES="3").items():
        monkeypatch.setenv(key, value)
    before = signal.getsignal(signal.SIGUSR1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "srun is available but not used" would raise here
        trainer = make_trainer(tiny_config, None, logger=False, checkpoint=False, plugins=trial_plugins())
        final_test = test_trainer(tiny_config)  # the sweep's final test, a Ray task on the same allocation
    for t in (trainer, final_test):
        assert type(t._accelerator_connector.cluster_environment) is LightningEnvironment
        assert (t.global_rank, t.world_size) == (0, 1)
    assert signal.getsignal(signal.SIGUSR1) == before
