"""The Optuna bridge: how trial endings are told to Optuna, and proposals lost with a killed driver."""
from __future__ import annotations

import math

import optuna
import pytest

from segcore.metrics_names import EPOCH, SWEEP_METRIC, SWEEP_MODE
from segtune.search import PrunedAwareOptunaSearch, optuna_storage, outcome
from segtune.spaces import load_space

S = optuna.trial.TrialState


@pytest.mark.parametrize("result, error, expected", [
    ({SWEEP_METRIC: 0.7, EPOCH: 5}, False, (S.COMPLETE, 0.7)),
    ({SWEEP_METRIC: 0.4, EPOCH: 2}, False, (S.PRUNED, None)),  # stopped by ASHA before the budget
    ({SWEEP_METRIC: 0.4, EPOCH: 2}, True, (S.FAIL, None)),
    ({SWEEP_METRIC: math.nan, EPOCH: 5}, False, (S.FAIL, None)),  # diverged: never a good result
    (None, True, (S.FAIL, None)),
], ids=["complete", "stopped-early", "errored", "nan", "no-result"])
def test_trial_outcome_told_to_optuna(result, error, expected):
    assert outcome(result, error, SWEEP_METRIC, EPOCH, max_t=5) == expected


def make_searcher(experiment):
    search = PrunedAwareOptunaSearch(metric=SWEEP_METRIC, mode=SWEEP_MODE, storage=optuna_storage(experiment),
                                     study_name="s", sampler=optuna.samplers.TPESampler(seed=0), max_t=3,
                                     time_attr=EPOCH)
    search.set_search_properties(SWEEP_METRIC, SWEEP_MODE, load_space("smoke").to_tune())
    return search


def test_stopped_trial_is_pruned_with_its_epoch_values(tmp_path):
    search = make_searcher(tmp_path)
    search.suggest("a")
    search.on_trial_result("a", {SWEEP_METRIC: 0.2, EPOCH: 1})
    search.on_trial_complete("a", {SWEEP_METRIC: 0.3, EPOCH: 2})  # the final result arrives here only
    trial = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[0]
    assert trial.state == S.PRUNED and trial.intermediate_values == {1: 0.2, 2: 0.3}


def test_proposal_asked_after_the_last_snapshot_is_reused_on_resume(tmp_path):
    search = make_searcher(tmp_path)
    first = search.suggest("a")
    search.save(str(tmp_path / "searcher.pkl"))
    # the driver asks for the next proposal, writes part of it, and is killed before the next snapshot
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    lost = study.ask()
    lost.suggest_categorical("arch", ["fpn", "unet"])

    resumed = make_searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    second = resumed.suggest("b")
    assert set(second) == set(first)  # a whole config, nothing left as a search domain
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert len(trials) == 2  # one Optuna trial per Tune trial: the lost proposal was adopted, not abandoned
    assert trials[1].params["arch"] == second["arch"] == lost.params["arch"]
