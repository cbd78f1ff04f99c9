"""The Optuna bridge: how trial endings are told to Optuna, and proposals lost with a killed driver."""
from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import optuna
import pytest

from segcore.metrics_names import EPOCH, SWEEP_METRIC, SWEEP_MODE
from segtune.naming import TrialNames, number_of
from segtune.search import PrunedAwareOptunaSearch, optuna_storage, outcome
from segtune.spaces import load_space

S = optuna.trial.TrialState
NAMES = TrialNames(arch="fpn", encoder="resnet18")  # a sweep's fixed arch and encoder


def tune_trial(trial_id: str, config: dict, experiment_tag: str = ""):
    """What TrialNames reads of the trial Tune creates with a proposal."""
    return SimpleNamespace(trial_id=trial_id, config=config, experiment_tag=experiment_tag)


@pytest.mark.parametrize("result, error, expected", [
    ({SWEEP_METRIC: 0.7, EPOCH: 5}, False, (S.COMPLETE, 0.7)),
    ({SWEEP_METRIC: 0.4, EPOCH: 2}, False, (S.PRUNED, None)),  # stopped by ASHA before the budget
    ({SWEEP_METRIC: 0.4, EPOCH: 2}, True, (S.FAIL, None)),
    ({SWEEP_METRIC: math.nan, EPOCH: 5}, False, (S.FAIL, None)),  # diverged: never a good result
    (None, True, (S.FAIL, None)),
    ({SWEEP_METRIC: 0.2195, EPOCH: 5, "val/pet_fraction": 1.0}, False, (S.FAIL, None)),  # collapsed
    ({SWEEP_METRIC: 0.0, EPOCH: 2, "val/pet_fraction": 0.0}, False, (S.PRUNED, None)),  # stopped: a slow start
    ({SWEEP_METRIC: 0.2195, EPOCH: 5, "val/loss": 2.5e5}, False, (S.FAIL, None)),  # exploded
], ids=["complete", "stopped-early", "errored", "nan", "no-result", "collapsed", "stopped-one-class",
        "exploded"])
def test_trial_outcome_told_to_optuna(result, error, expected):
    assert outcome(result, error, SWEEP_METRIC, max_t=5) == expected


def make_searcher(experiment):
    search = PrunedAwareOptunaSearch(metric=SWEEP_METRIC, mode=SWEEP_MODE, storage=optuna_storage(experiment),
                                     study_name="s", sampler=optuna.samplers.TPESampler(seed=0), max_t=3,
                                     names=NAMES, time_attr=EPOCH)
    search.set_search_properties(SWEEP_METRIC, SWEEP_MODE, load_space("smoke").to_tune())
    return search


def test_stopped_trial_is_pruned_with_its_epoch_values(tmp_path):
    search = make_searcher(tmp_path)
    search.suggest("a")
    search.on_trial_result("a", {SWEEP_METRIC: 0.2, EPOCH: 1})
    search.on_trial_complete("a", {SWEEP_METRIC: 0.3, EPOCH: 2})  # the final result arrives here only
    search.write_committed({"a": 2})  # what saved_state does once both rows are committed
    trial = study_trials(tmp_path)[0]
    assert trial.state == S.PRUNED and trial.intermediate_values == {1: 0.2, 2: 0.3}


def study_trials(experiment) -> list:
    return optuna.load_study(study_name="s", storage=optuna_storage(experiment)).trials


def test_optuna_is_told_only_what_is_committed_and_a_lost_epoch_is_told_as_it_ran_again(tmp_path):
    """A kill between a result and its commit loses the epoch: the trial runs it again after --resume, possibly
    to another value. Optuna must hold the value the sweep kept, so it is told only committed results."""
    search = make_searcher(tmp_path)
    search.suggest("a")
    search.on_trial_result("a", {SWEEP_METRIC: 0.2, EPOCH: 1})
    search.on_trial_result("a", {SWEEP_METRIC: 0.5, EPOCH: 2})
    search.write_committed({"a": 1})
    assert study_trials(tmp_path)[0].intermediate_values == {1: 0.2}  # epoch 2 not yet committed
    search.save(str(tmp_path / "searcher.pkl"))  # the state the commit holds
    # killed here; resumed from that state, the trial runs epoch 2 again and ends there
    resumed = make_searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("a", {SWEEP_METRIC: 0.4, EPOCH: 2})
    resumed.on_trial_complete("a", {SWEEP_METRIC: 0.6, EPOCH: 3})
    resumed.write_committed({"a": 2})
    trial = study_trials(tmp_path)[0]
    assert trial.intermediate_values == {1: 0.2, 2: 0.4} and trial.state == S.RUNNING  # epoch 3 not committed
    resumed.write_committed({"a": 3})
    resumed.write_committed({"a": 3})  # told once: a commit after a resume repeats what is already there
    trial = study_trials(tmp_path)[0]
    assert trial.intermediate_values == {1: 0.2, 2: 0.4, 3: 0.6} and trial.state == S.COMPLETE
    assert trial.value == 0.6 and len(study_trials(tmp_path)) == 1


@pytest.mark.parametrize("told_before_the_kill", [False, True], ids=["values-waiting", "values-told"])
def test_a_trial_resumed_after_its_last_epoch_ends_with_that_epochs_value(tmp_path, told_before_the_kill):
    """Killed between its last report (committed) and its end: resumed from its last epoch's checkpoint, the trial
    runs nothing and ends with a final result that holds no metric. Its outcome is still its last epoch's."""
    search = make_searcher(tmp_path)
    search.suggest("a")
    for epoch, value in enumerate([0.2, 0.5, 0.7], start=1):
        search.on_trial_result("a", {SWEEP_METRIC: value, EPOCH: epoch})
    if told_before_the_kill:
        search.write_committed({"a": 3})
    search.save(str(tmp_path / "searcher.pkl"))
    resumed = make_searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_complete("a", {"done": True, "trial_id": "a"})  # what Tune hands over: no metric, no epoch
    resumed.write_committed({"a": 3})
    trial = study_trials(tmp_path)[0]
    assert trial.state == S.COMPLETE and trial.value == 0.7
    assert trial.intermediate_values == {1: 0.2, 2: 0.5, 3: 0.7}


def test_what_a_resumed_searcher_holds_of_the_commit_it_resumes_from_is_told_without_a_new_commit(tmp_path):
    """A kill between a commit and the searcher's writes, then a resumed run that commits nothing new (its last
    trial had already ended): the resumed searcher still tells Optuna what that commit holds."""
    from segtune import saved_state

    search = make_searcher(tmp_path)
    search.suggest("a")
    search.on_trial_result("a", {SWEEP_METRIC: 0.2, EPOCH: 1})
    search.on_trial_complete("a", {SWEEP_METRIC: 0.3, EPOCH: 2})
    search.save(str(tmp_path / "searcher.pkl"))  # committed with the rows; killed before write_committed
    try:
        saved_state._announce({"trial_a": 2})  # what CommittedState.setup announces of the commit it resumes from
        resumed = make_searcher(tmp_path)
        resumed.restore(str(tmp_path / "searcher.pkl"))
        trial = study_trials(tmp_path)[0]
        assert trial.state == S.PRUNED and trial.intermediate_values == {1: 0.2, 2: 0.3}
    finally:
        saved_state._committed_counts = None


def test_the_sweeps_searcher_counts_epochs_not_tunes_reports(tmp_path):
    """A trial continued from a full state older than its latest checkpoint reports its epochs again while Tune's
    training_iteration goes on counting: Optuna's steps must be the epochs, as the rows say."""
    from segtune.search import build_search

    search = build_search("optuna", SWEEP_METRIC, SWEEP_MODE, 0, tmp_path, "s", max_t=3, num_samples=2, names=NAMES)
    search.set_search_properties(SWEEP_METRIC, SWEEP_MODE, load_space("smoke").to_tune())
    search.suggest("a")
    # reported epochs 1-3, then continued from epoch 1's full state: epochs 2 and 3 again, as reports 4 and 5
    for iteration, (epoch, value) in enumerate([(1, 0.2), (2, 0.3), (3, 0.1), (2, 0.35)], start=1):
        search.on_trial_result("a", {SWEEP_METRIC: value, EPOCH: epoch, "training_iteration": iteration})
    search.on_trial_complete("a", {SWEEP_METRIC: 0.4, EPOCH: 3, "training_iteration": 5})
    search.write_committed({"a": 3})
    trial = study_trials(tmp_path)[0]
    assert trial.intermediate_values == {1: 0.2, 2: 0.35, 3: 0.4} and trial.state == S.COMPLETE


def test_proposal_asked_after_the_last_snapshot_is_reused_on_resume(tmp_path):
    search = make_searcher(tmp_path)
    first = search.suggest("a")
    search.save(str(tmp_path / "searcher.pkl"))
    # the driver asks for the next proposal, writes part of it, and is killed before the next snapshot
    study = optuna.load_study(study_name="s", storage=optuna_storage(tmp_path))
    lost = study.ask()
    lost.suggest_categorical("arch", ["fpn", "unet"])

    resumed = make_searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    second = resumed.suggest("b")
    assert set(second) == set(first)  # a whole config, nothing left as a search domain
    trials = optuna.load_study(study_name="s", storage=optuna_storage(tmp_path)).trials
    assert len(trials) == 2  # one Optuna trial per Tune trial: the lost proposal was adopted, not abandoned
    assert trials[1].params["arch"] == second["arch"] == lost.params["arch"]
    # named by the adopted proposal's number, in Tune's folder and in Optuna alike
    assert number_of(NAMES(tune_trial("b", second))) == 1 == trials[1].number
    assert trials[1].user_attrs["run_name"] == NAMES(tune_trial("b", second))


def test_tune_names_each_trial_by_its_optuna_number(tmp_path):
    search = make_searcher(tmp_path)
    configs = {tid: search.suggest(tid) for tid in ("x", "y", "z")}
    trials = optuna.load_study(study_name="s", storage=optuna_storage(tmp_path)).trials
    for number, (tid, config) in enumerate(configs.items()):
        # Tune's counter (in the tag) starts at 1 for a search algorithm's trials: the name does not use it
        name = NAMES(tune_trial(tid, {"lr": 0.1, **config}, experiment_tag=f"{number + 1}_lr=0.1"))
        assert name == f"{number:03d}-{config['arch']}-{config['encoder']}"  # smoke searches both
        assert trials[number].user_attrs == {"ray_trial_id": tid, "run_name": name}


def test_random_search_trials_are_named_by_tunes_count():
    """Ray's variant generator numbers its trials from 0 in their tag; a space that fixes arch and encoder names
    the trial with them."""
    assert NAMES(tune_trial("abc_00012", {"lr": 0.1}, experiment_tag="12_lr=0.1")) == "012-fpn-resnet18"
    assert NAMES(tune_trial("abc_01000", {"arch": "UnetPlusPlus", "encoder": "tu-convnext/atto"},
                            experiment_tag="1000")) == "1000-unetplusplus-tu-convnext_atto"


def test_a_journal_cut_short_by_a_kill_is_repaired_before_the_driver_writes_again(tmp_path):
    """A driver killed mid-append leaves a last line cut short and the append's lock: Optuna would glue the next
    change onto that line (and then fail to read the journal at all) and wait 30 s for the lock."""
    from segtune.search import repair_journal

    search = make_searcher(tmp_path)
    search.suggest("a")
    journal = tmp_path / "optuna.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "para')  # cut mid-line
    (tmp_path / "optuna.journal.lock").symlink_to(tmp_path / "nowhere")
    repair_journal(journal)
    assert journal.read_bytes() == whole and not os.path.lexists(tmp_path / "optuna.journal.lock")
    started = time.monotonic()
    search.suggest("b")  # writes again, at once
    assert time.monotonic() - started < 10
    assert [t.number for t in study_trials(tmp_path)] == [0, 1]
    repair_journal(journal)  # a whole journal is left as it is
    assert journal.read_bytes().endswith(b"\n") and len(study_trials(tmp_path)) == 2
