"""The end-of-sweep summary tells an interrupted sweep how to continue, and only then."""
from __future__ import annotations

from segtune.results import COMPLETED, ERRORED, STOPPED, UNFINISHED, format_summary


def summary(unfinished: int) -> dict:
    return {"trials": 3 + unfinished, "experiment": "/runs/results/pets",
            "counts": {COMPLETED: 2, STOPPED: 1, ERRORED: 0, UNFINISHED: unfinished}}


def test_interrupted_sweep_summary_prints_the_resume_command():
    text = format_summary(summary(unfinished=2))
    assert "2 unfinished" in text
    assert "python tune_main.py --resume --storage-path /runs/results --name pets" in text


def test_finished_sweep_summary_has_no_resume_hint():
    text = format_summary(summary(unfinished=0))
    assert "--resume" not in text and "unfinished" not in text
    assert "tensorboard --logdir /runs/results/pets" in text
