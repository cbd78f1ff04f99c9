"""segtune.checkpoint_policy: when a trial writes its full state, its weights alone, or nothing; and what a trial
resumed from a weights-only checkpoint continues from."""
from __future__ import annotations

import time

import pyarrow.fs
import pytest

from segtune import checkpoint_policy as policies
from segtune.checkpoint_policy import AUTO_FACTOR, CheckpointClock, CheckpointPolicy


@pytest.mark.parametrize("spec, expected", [("auto", CheckpointPolicy()), ("3", CheckpointPolicy(epochs=3)),
                                            ("10m", CheckpointPolicy(minutes=10)),
                                            ("0.5m", CheckpointPolicy(minutes=0.5))])
def test_parse(spec, expected):
    assert CheckpointPolicy.parse(spec) == expected


@pytest.mark.parametrize("spec", ["0", "0m", "-1", "five", "3h", ""])
def test_parse_refuses_what_is_not_a_schedule(spec):
    with pytest.raises(ValueError, match=f"'{spec}'"):
        CheckpointPolicy.parse(spec)


def test_bad_flag_is_named_with_the_other_problems():
    from segtune.settings import SweepSettings

    problems = SweepSettings(checkpoint_every="3h", max_epochs=0).problems()
    assert "--checkpoint-every '3h': use auto, a number of epochs (e.g. 5) or of minutes (e.g. 10m)" in problems
    assert len(problems) == 2


def test_ddp_trials_write_the_full_state_every_epoch_whatever_the_flag():
    assert CheckpointPolicy.for_trial("auto", workers=2) == CheckpointPolicy(epochs=1)
    assert CheckpointPolicy.for_trial("auto", workers=1) == CheckpointPolicy()


def test_every_n_epochs():
    clock = CheckpointClock(CheckpointPolicy(epochs=3))
    assert [e for e in range(1, 10) if clock.full_due(e, lambda: 10**9)] == [3, 6, 9]


def test_auto_writes_nothing_full_before_it_can_estimate_then_keeps_writing_under_a_tenth():
    clock = CheckpointClock(CheckpointPolicy())
    assert not clock.full_due(1, lambda: 1000)  # no write measured yet: the first improvement's weights come first
    clock.wrote(1000, 0.001, policies.WEIGHTS)  # 1 us per byte: a 1000-byte full state takes ~1 ms to write
    time.sleep(AUTO_FACTOR * 0.001 * 1.5)
    assert clock.full_due(2, lambda: 1000)  # trained 15 ms since the start: ten writes' worth
    assert not clock.full_due(2, lambda: 10**6)  # a 1 MB state would take 1 s: not yet
    clock.wrote(1000, 0.001, policies.FULL)
    assert not clock.full_due(3, lambda: 1000)  # just written


def test_minutes():
    clock = CheckpointClock(CheckpointPolicy(minutes=0.0005))  # 30 ms
    assert not clock.full_due(1, lambda: 1)
    time.sleep(0.05)
    assert clock.full_due(2, lambda: 1)


def test_a_weights_only_checkpoint_leads_to_the_full_state_it_names(tmp_path):
    trial = tmp_path / "trial_x"
    for name, kind, epoch, full in [("checkpoint_000000", "weights", 1, None), ("checkpoint_000001", "full", 2, 2),
                                    ("checkpoint_000002", "weights", 3, 2), ("checkpoint_000003", "full", 4, 4)]:
        (trial / name).mkdir(parents=True)  # 000003: written but not committed when a kill came
        policies.write_meta(str(trial / name), kind, epoch, full, 0.5)
    fs = pyarrow.fs.LocalFileSystem()
    folder, meta = policies.full_state_for(fs, str(trial / "checkpoint_000002"))
    assert folder == str(trial / "checkpoint_000001") and meta["epoch"] == 2 and meta["best"] == 0.5
    assert policies.full_state_for(fs, str(trial / "checkpoint_000001"))[0] == str(trial / "checkpoint_000001")
    assert policies.full_state_for(fs, str(trial / "checkpoint_000000")) == (None, {})  # no full state yet


def test_a_checkpoint_from_before_the_policy_is_a_full_state(tmp_path):
    (tmp_path / "checkpoint_000000").mkdir()
    folder = str(tmp_path / "checkpoint_000000")
    assert policies.full_state_for(pyarrow.fs.LocalFileSystem(), folder) == (folder, {})


def test_ended_trials_keep_their_best_weights_only_and_only_the_k_best_of_them():
    """segtune.saved_state.keep_best: what --keep-best leaves of each trial's checkpoints ([path, score, full])."""
    from segtune.saved_state import keep_best, needed

    def trial(*scores):  # a checkpoint per epoch, a full state every second one
        return [[f"e{i}", s, i % 2 == 0] for i, s in enumerate(scores)]

    checkpoints = {"a": trial(0.5, 0.9, 0.7), "b": trial(0.6, 0.8), "c": trial(0.2, 0.95),
                   "d": trial(0.3, 0.99), "running": trial(0.1, 0.4, 0.3)}
    ended = {"a": "completed", "b": "stopped early", "c": "completed", "d": "collapsed"}
    kept = keep_best({t: needed(c) for t, c in checkpoints.items()}, ended, k=2)
    # the two best that count (d collapsed: never the best, whatever its val/iou) keep their best epoch alone
    assert kept["c"] == [["e1", 0.95, False]] and kept["a"] == [["e1", 0.9, False]]
    assert kept["b"] == [] and kept["d"] == []
    # a running trial keeps what it may need: its latest (here also its latest full state) and its best
    assert kept["running"] == needed(checkpoints["running"]) == [["e1", 0.4, False], ["e2", 0.3, True]]
    # more room than trials: each ended trial still keeps its best epoch only
    wide = keep_best({t: needed(c) for t, c in checkpoints.items()}, ended, k=10)
    assert wide["b"] == [["e1", 0.8, False]] and wide["d"] == []
