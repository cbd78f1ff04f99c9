"""Everything the sweep needs from Ray and Optuna that has no public API, in one place.

Checked against the versions in ``CHECKED_WITH`` by tests/test_compat.py, which fails naming what broke when an
upgrade changes one of these. (saved_state.py, which follows Tune's state files, is checked by
tests/test_saved_state.py the same way.)
"""
from __future__ import annotations

from typing import Any

import optuna

CHECKED_WITH = {"ray": "2.60.", "optuna": "5.0."}  # version prefixes


def set_restored_verbosity(tuner, verbosity: int) -> None:
    """A restored Tuner brings back its pickled RunConfig; only the console verbosity is this run's to choose.
    Ray offers no public setter: Tuner holds its run config in its private local tuner."""
    tuner._local_tuner.get_run_config().verbose = verbosity


# Ray's OptunaSearch keeps its study and its Tune-trial -> Optuna-trial map in private attributes; a subclass that
# tells Optuna how each trial ended (segtune.search) has to read and extend them.

def study_of(search) -> optuna.Study:
    return search._ot_study


def optuna_trials(search) -> dict[str, optuna.trial.Trial]:
    """Tune trial id -> its Optuna trial (changed in place to adopt a proposal)."""
    return search._ot_trials


def completed_trials(search) -> set[str]:
    """Tune trial ids whose end OptunaSearch has told Optuna (changed in place)."""
    return search._completed_trials


def optuna_space(search) -> dict[str, Any]:
    """The search space as Optuna distributions (empty before Tune hands the searcher its space)."""
    return search._space or {}


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A Trial object for a study trial that is still RUNNING, to report and sample through (Optuna's public API
    gives one only for a trial just asked)."""
    return optuna.trial.Trial(study, frozen._trial_id)
