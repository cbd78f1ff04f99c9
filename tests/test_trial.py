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
