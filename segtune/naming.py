"""One number per trial, everywhere: a trial's folder (TensorBoard's run name), ``trials.csv``, ``report.md``, the
status line and Optuna all name it ``007-unet-resnet18``, or trial 7.

With Optuna the number is the Optuna trial's own (0-based, as optuna-dashboard shows it), recorded by the searcher
when it proposes the trial, before Tune creates it; with Ray's random / grid search, the 0-based count Tune keeps in
the trial's experiment tag.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from segtune.storage import RESULT_FILE

LEGACY_PREFIX = "trial_"  # sweeps started before trials had numbers: folders named trial_<Tune trial id>
_NAME = re.compile(r"^(\d{3,})-")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_numbers: dict[str, int] = {}  # Tune trial id -> its Optuna trial number, set by the searcher (driver process)


def record_number(trial_id: str, number: int) -> None:
    _numbers[trial_id] = number


def run_name(number: int, arch: Any, encoder: Any) -> str:
    """``007-unet-resnet18``: sorts by number, says what was trained, no '/' (a folder name)."""
    return _UNSAFE.sub("_", f"{number:03d}-{str(arch).lower()}-{encoder}")


def number_of(name: str) -> Optional[int]:
    """The trial number a folder name starts with, or None (a legacy ``trial_<id>`` folder, or not a trial)."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def is_trial_folder(name: str) -> bool:
    return number_of(name) is not None or name.startswith(LEGACY_PREFIX)


def trial_folders(experiment: Path) -> list[Path]:
    """The experiment's trial folders, by number (legacy ones last, by name)."""
    found = [p for p in experiment.iterdir() if p.is_dir() and is_trial_folder(p.name)] if experiment.is_dir() else []
    return sorted(found, key=lambda p: (number_of(p.name) is None, number_of(p.name) or 0, p.name))


class TrialNames:
    """Tune's ``trial_name_creator`` and ``trial_dirname_creator``: the run name of a trial being created. ``arch``
    and ``encoder`` are the sweep's fixed ones, for a space that does not search them. Pickled with the Tuner."""

    def __init__(self, arch: str, encoder: str):
        self.arch, self.encoder = arch, encoder

    def name(self, number: int, config: dict[str, Any]) -> str:
        return run_name(number, config.get("arch", self.arch), config.get("encoder", self.encoder))

    def __call__(self, trial) -> str:
        number = _numbers.get(trial.trial_id)
        if number is None:  # Ray's variant generator: its tag starts with its 0-based count
            number = int(str(trial.experiment_tag).split("_", 1)[0] or 0)
        return self.name(number, trial.config or {})


def result_files(experiment: Path) -> list[Path]:
    """Each trial's ``result.json`` that exists, by trial number."""
    return [f / RESULT_FILE for f in trial_folders(experiment) if (f / RESULT_FILE).is_file()]
