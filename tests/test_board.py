"""TensorBoard's view of a trial resumed after a kill: what the killed run wrote of the epochs that run again is
taken out, so each epoch shows once (read back through TensorBoard's own loader)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from segtune.board import config_summary, domains, forget, session_summaries


def write_killed_run(folder: Path) -> None:
    """What a run killed during epoch 3 of a trial left: epochs 1-2 (two steps each) and the ending of an earlier
    attempt's session."""
    writer = SummaryWriter(str(folder))
    for epoch in (1, 2):
        writer.add_scalar("val/iou", epoch / 10, global_step=epoch)
        for step in (2 * epoch - 1, 2 * epoch):
            writer.add_scalar("train/loss_step", 1 / step, global_step=step)
    doms = domains({"lr": ("loguniform", [1e-4, 1e-1])}, {})
    for summary in session_summaries(doms, {"lr": 0.01}, "completed", "000-fpn-resnet18", 0.0):
        writer.file_writer.add_summary(summary)
    writer.file_writer.add_summary(config_summary(doms))
    writer.close()


def load(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_a_resumed_trial_forgets_the_epochs_it_runs_again_and_its_session(tmp_path):
    write_killed_run(tmp_path)
    # committed: epoch 1; the resumed trial runs epoch 2 again. The best so far goes on from the kept epoch's 0.1,
    # not from the lost epoch's 0.2
    assert forget(tmp_path, epoch=2, first_step=3) == pytest.approx(0.1)
    # the resumed run writes epoch 2 again, with what it computes now
    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("val/iou", 0.25, global_step=2)
    writer.close()
    acc = load(tmp_path)
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("val/iou")] == [(1, 0.1), (2, 0.25)]
    assert [e.step for e in acc.Scalars("train/loss_step")] == [1, 2]
    tags = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" not in tags and "_hparams_/session_end_info" not in tags
    assert "_hparams_/experiment" in tags  # not a trial's: kept
    assert [p.name for p in tmp_path.iterdir() if "tfevents" not in p.name] == []  # replaced whole, no part left


def test_a_trial_that_runs_on_after_its_last_point_leaves_its_files_as_they_are(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("val/iou", 0.1, global_step=1)
    writer.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert forget(tmp_path, epoch=2, first_step=3) == pytest.approx(0.1)  # nothing at or after epoch 2, no session
    assert forget(tmp_path / "missing", epoch=1, first_step=1) is None  # a trial's first run: no folder yet
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_collapsed_or_diverged_trial_is_a_failed_session_with_its_outcome():
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    doms = domains({"lr": ("loguniform", [1e-4, 1e-1])}, {})
    for status, ended in (("collapsed", api_pb2.STATUS_FAILURE), ("diverged", api_pb2.STATUS_FAILURE),
                          ("stopped early", api_pb2.STATUS_UNKNOWN), ("completed", api_pb2.STATUS_SUCCESS)):
        start, end = session_summaries(doms, {"lr": 0.01}, status, "003-fpn-resnet18", 0.0)
        data = [plugin_data_pb2.HParamsPluginData.FromString(s.value[0].metadata.plugin_data.content)
                for s in (start, end)]
        assert data[0].session_start_info.hparams["outcome"].string_value == status
        assert data[1].session_end_info.status == ended
    assert "collapsed" in doms["outcome"][1]  # a value to filter on in TensorBoard


def test_the_board_writes_events_tensorboard_reads_without_importing_torch(tmp_path):
    """The driver opens a trial's events file as Tune starts the trial: importing torch there (torch's SummaryWriter,
    1.5 s of the driver's one thread) held back every first trial's first step."""
    code = ("import sys; from segtune.board import EventWriter; w = EventWriter(sys.argv[1]); "
            "w.add_scalar('val/iou', 0.5, global_step=3); w.close(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    [point] = load(tmp_path).Scalars("val/iou")
    assert (point.step, point.value) == (3, 0.5)
