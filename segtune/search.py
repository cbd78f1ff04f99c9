"""Search: seeded Optuna TPE, its study in a journal file (ASHA stops told as pruned), or Ray's random/grid."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from segcore.metrics_names import EPOCH
from segtune import compat, naming, saved_state
from segtune.results import ERRORED, FAILED, STOPPED, finite, trial_status
from segtune.storage import OPTUNA_DB, OPTUNA_JOURNAL

# user attributes of each Optuna trial: which Tune trial it is, its run name (its folder, TensorBoard's run), and how
# it ended (trials.csv's status)
RAY_TRIAL_ATTR, RUN_NAME_ATTR, OUTCOME_ATTR = "ray_trial_id", "run_name", "outcome"


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna how each trial really ended.

    Ray's OptunaSearch tells a trial COMPLETE with its last value even when ASHA stopped it after a fraction of the
    budget; TPE would then treat a 1-epoch score as a finished result. Here a trial that ended before ``max_t``
    is PRUNED (its per-epoch values were already reported as intermediate values), a diverged or collapsed one
    (segtune.results.trial_status) FAIL, and an errored one FAIL once the sweep has ended (``fail_running``).

    What Optuna is told of a trial is what the sweep has committed of it (segtune.saved_state): values and endings
    wait here (saved with the searcher) until a commit holds their result rows. Told at once, a kill before the
    commit would leave Optuna a value of an epoch that runs again after --resume, with another value.
    """

    def __init__(self, *args, max_t: int, names: naming.TrialNames, time_attr: str = EPOCH, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = max_t
        self.names = names
        self.time_attr = time_attr
        self._unwritten: dict[tuple[str, int], float] = {}  # (trial, step) -> value, not yet told to Optuna
        # trial -> (last step, state, value, outcome); sweeps saved before the outcome was kept hold 3-tuples
        self._untold: dict[str, tuple] = {}
        self._orphans: Optional[list[optuna.trial.Trial]] = None  # found at the first suggest
        saved_state.after_commit(self.write_committed)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._orphans = None  # the study may have moved on since this state was saved: look again
        saved_state.after_commit(self.write_committed)

    def _adopt_orphans(self) -> list[optuna.trial.Trial]:
        """After a killed driver the study may hold proposals asked after the searcher's last saved state (or, for
        a sweep killed before Tune saved anything, asked by a searcher that is gone): they go to the next trials
        instead of asking anew, so the study keeps one Optuna trial per Tune trial."""
        if self._orphans is None:
            study = compat.study_of(self)
            known = {t.number for t in compat.optuna_trials(self).values()}
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            self._orphans = [compat.live_trial(study, t) for t in running if t.number not in known]
        return self._orphans

    def suggest(self, trial_id: str) -> Optional[dict]:
        trials = compat.optuna_trials(self)
        if trial_id not in trials and compat.optuna_space(self) and self._adopt_orphans():
            orphan = self._orphans.pop(0)
            complete_params(orphan, compat.optuna_space(self))  # a driver killed mid-ask leaves a partial proposal
            trials[trial_id] = orphan
        suggested = super().suggest(trial_id)
        if trial_id in trials:
            study = compat.study_of(self)
            if not study.metric_names:  # optuna-dashboard and study.trials_dataframe() name the value by it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([self.metric])
            # the trial's number is Optuna's: Tune names the trial it is about to create with it (segtune.naming)
            number = trials[trial_id].number
            naming.record_number(trial_id, number)
            trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
            names = getattr(self, "names", None)  # None in a searcher saved before trials had numbers
            if isinstance(suggested, dict) and names is not None:
                trials[trial_id].set_user_attr(RUN_NAME_ATTR, names.name(number, suggested))
        return suggested

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        step = result.get(self.time_attr)
        if trial_id in compat.completed_trials(self) or trial_id not in compat.optuna_trials(self) or step is None:
            return
        if value is not None and math.isfinite(value):  # Optuna refuses NaN intermediate values
            self._unwritten[(trial_id, int(step))] = float(value)  # a step run again replaces its lost value

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        trials, completed = compat.optuna_trials(self), compat.completed_trials(self)
        if trial_id in completed or trial_id not in trials:
            return super().on_trial_complete(trial_id, result, error)
        if error:
            # Left RUNNING for now: a trial that errored because its job was preempted continues on --resume and
            # is told then. A sweep that ends without interruption tells what is still running FAIL (fail_running).
            return None
        if result and result.get(self.metric) is None:
            # A trial restarted from its last epoch's checkpoint (a kill came between its last report and its end)
            # ends without reporting again: its outcome is that of its last reported epoch.
            result = {**result, **self._last_reported(trial_id)}
        if result:  # Tune hands a trial's final result here, not to on_trial_result
            self.on_trial_result(trial_id, result)
        state, value = outcome(result, error, self.metric, self.max_t)
        label = trial_status(result or {}, self.max_t, errored=False, ended=True)
        self._untold[trial_id] = (int((result or {}).get(self.time_attr) or 0), state, value, label)
        completed.add(trial_id)

    def _last_reported(self, trial_id: str) -> dict[str, Any]:
        """{time_attr: step, metric: value} of the trial's last reported epoch (waiting here or already told to
        Optuna), or {} if it reported none."""
        steps = {step: value for (t, step), value in self._unwritten.items() if t == trial_id}
        if not steps:
            number = compat.optuna_trials(self)[trial_id].number
            steps = compat.study_of(self).get_trials(deepcopy=False)[number].intermediate_values
        if not steps:
            return {}
        last = max(steps)
        return {self.time_attr: last, self.metric: steps[last]}

    def write_committed(self, committed: dict[str, int]) -> None:
        """Tell Optuna the values and endings whose result rows are now committed (``committed``: each trial's
        committed epochs). Written again after a resume, a value or ending Optuna already holds is left as is."""
        ready = [key for key in self._unwritten if key[1] <= committed.get(key[0], 0)]
        endings = [t for t, (step, *_) in self._untold.items() if step <= committed.get(t, 0)]
        if not ready and not endings:
            return
        study, trials = compat.study_of(self), compat.optuna_trials(self)
        stored = study.get_trials(deepcopy=False)  # read once: what this call writes does not change what it checks
        for trial_id, step in sorted(ready):
            if step not in stored[trials[trial_id].number].intermediate_values:
                trials[trial_id].report(self._unwritten[(trial_id, step)], step)
            del self._unwritten[(trial_id, step)]
        waiting = {trial_id for trial_id, _ in self._unwritten}  # values not yet committed: the ending waits too
        for trial_id in sorted(set(endings) - waiting):
            _, state, value, *label = self._untold.pop(trial_id)
            number = trials[trial_id].number
            if not stored[number].state.is_finished():
                if label:
                    trials[trial_id].set_user_attr(OUTCOME_ATTR, label[0])
                study.tell(number, value, state=state)


def complete_params(trial: optuna.trial.Trial, space: dict) -> None:
    """Sample, through Optuna's own suggest API, any parameter of ``space`` the trial does not have yet."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    for name, dist in space.items():
        if name in trial.params:
            continue
        if isinstance(dist, FloatDistribution):
            trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)


def outcome(result: Optional[dict], error: bool, metric: str,
            max_t: int) -> tuple[optuna.trial.TrialState, Optional[float]]:
    """What Optuna is told of an ended trial, from segtune.results.trial_status (the one rule): FAIL when it raised,
    diverged, collapsed or has no finite value; PRUNED when the scheduler stopped it; else COMPLETE with its value."""
    S = optuna.trial.TrialState
    result = result or {}
    value = finite(result.get(metric))
    status = trial_status(result, max_t, errored=error, ended=not error)
    if error or value is None or status in FAILED:
        return S.FAIL, None
    if status == STOPPED:
        return S.PRUNED, None
    return S.COMPLETE, value


def fail_running(experiment_dir: Path, study_name: str) -> int:
    """At the end of a sweep that was not interrupted, every trial Optuna still holds as RUNNING errored: tell it
    FAIL. Returns how many."""
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(experiment_dir))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        compat.live_trial(study, trial).set_user_attr(OUTCOME_ATTR, ERRORED)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


def optuna_storage(experiment_dir: Path) -> optuna.storages.BaseStorage:
    """The sweep's study storage: its journal file (Optuna's JournalFileBackend; the driver is its only writer), or
    the SQLite file of a sweep started before the journal (``optuna-dashboard`` reads either; so does
    ``optuna.load_study(study_name=NAME, storage=optuna_storage(<dir>))``)."""
    folder = experiment_dir.resolve()
    if (folder / OPTUNA_DB).is_file():
        return optuna.storages.RDBStorage(f"sqlite:///{folder / OPTUNA_DB}")
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(folder / OPTUNA_JOURNAL)))


def repair_journal(path: Path) -> None:
    """Undo what a driver killed mid-append left: a last line cut short (Optuna would glue the next change onto it
    and then fail to read the journal at all) and the lock file of the append (Optuna waits 30 s before breaking a
    lock). Called by the driver before its searcher (new, or Tune's restored one) opens the journal: never by a reader,
    which could cut a line the driver is appending."""
    lock = path.with_name(path.name + ".lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        data = (f.seek(0), f.read())[1]
        f.truncate(data.rfind(b"\n") + 1)


def build_search(kind: str, metric: str, mode: str, seed: int, experiment_dir: Path, study_name: str,
                 max_t: int, num_samples: int, names: naming.TrialNames):
    if kind == "random":
        # Ray's variant generator: random sampling that also expands grid_search values
        return BasicVariantGenerator(random_state=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines would drown the status line
    # TPE starts modelling after a few random trials; scale that with the budget so small sweeps still use it
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, num_samples // 3)))
    # Steps are epochs, as for ASHA: Tune's training_iteration counts reports, and runs ahead of the epochs when a
    # trial continues from a full state older than its latest checkpoint (segtune.checkpoint_policy)
    return PrunedAwareOptunaSearch(metric=metric, mode=mode, sampler=sampler, study_name=study_name,
                                   storage=optuna_storage(experiment_dir), max_t=max_t, names=names,
                                   time_attr=EPOCH)
