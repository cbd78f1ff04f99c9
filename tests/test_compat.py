"""segtune.compat, the only place that reaches into Ray's and Optuna's private attributes: each accessor checked
against the real objects of the versions it was written for, so an upgrade that breaks one fails here, by name."""
from __future__ import annotations

import optuna
import pytest

from segcore.metrics_names import EPOCH, SWEEP_METRIC
from segtune import compat
from tests.test_search import make_searcher


@pytest.mark.parametrize("package", sorted(compat.CHECKED_WITH))
def test_versions_are_the_ones_compat_was_checked_against(package):
    import importlib

    version = importlib.import_module(package).__version__
    assert version.startswith(compat.CHECKED_WITH[package]), (
        f"{package} {version}: segtune/compat.py was checked against {package} {compat.CHECKED_WITH[package]}x; "
        "run tests/test_compat.py, fix what fails there, then update CHECKED_WITH and requirements.txt")


def test_optuna_search_internals_are_where_compat_reads_them(tmp_path):
    search = make_searcher(tmp_path)
    study = compat.study_of(search)
    assert isinstance(study, optuna.Study) and study.study_name == "s"
    space = compat.optuna_space(search)
    assert space and all(isinstance(d, optuna.distributions.BaseDistribution) for d in space.values())
    search.suggest("a")
    trials = compat.optuna_trials(search)
    assert set(trials) == {"a"} and isinstance(trials["a"], optuna.trial.Trial) and trials["a"].number == 0
    search.on_trial_complete("a", {SWEEP_METRIC: 0.5, EPOCH: 3})
    assert compat.completed_trials(search) == {"a"}


def test_live_trial_reports_into_a_running_study_trial(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="x", direction="maximize")
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    live = compat.live_trial(study, frozen)
    assert live.number == frozen.number
    live.report(0.25, 1)
    assert study.get_trials()[0].intermediate_values == {1: 0.25}


def test_restored_verbosity_is_set_on_the_tuners_run_config():
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(verbose=2))
    compat.set_restored_verbosity(tuner, 0)
    assert tuner._local_tuner.get_run_config().verbose == 0
