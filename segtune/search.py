"""Search algorithms: seeded Optuna TPE stored in SQLite (with ASHA stops told as pruned) or Ray's random/grid."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import optuna
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from segtune.storage import OPTUNA_DB


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna how each trial really ended.

    Ray's OptunaSearch tells a trial COMPLETE with its last value even when ASHA stopped it after a fraction of the
    budget; TPE would then treat a 1-epoch score as a finished result. Here a trial that ended before ``max_t``
    is PRUNED (its per-epoch values were already reported as intermediate values), a non-finite value (diverged)
    FAIL, and an errored one FAIL once the sweep has ended (``fail_running``).
    """

    def __init__(self, *args, max_t: int, time_attr: str = "training_iteration", **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = max_t
        self.time_attr = time_attr
        self._reported: dict[str, set[int]] = {}  # steps told to Optuna per trial (saved with the searcher)
        self._orphans: Optional[list[optuna.trial.Trial]] = None  # found at the first suggest

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._orphans = None  # the study may have moved on since this state was saved: look again

    def _adopt_orphans(self) -> list[optuna.trial.Trial]:
        """After a killed driver the study may hold proposals asked after the searcher's last saved state (or, for
        a sweep killed before Tune saved anything, asked by a searcher that is gone): they go to the next trials
        instead of asking anew, so the study keeps one Optuna trial per Tune trial."""
        if self._orphans is None:
            known = {t._trial_id for t in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            self._orphans = [optuna.trial.Trial(self._ot_study, t._trial_id) for t in running
                             if t._trial_id not in known]
        return self._orphans

    def suggest(self, trial_id: str) -> Optional[dict]:
        if trial_id not in self._ot_trials and self._space and self._adopt_orphans():
            orphan = self._orphans.pop(0)
            complete_params(orphan, self._space)  # a driver killed mid-ask leaves a partly sampled proposal
            self._ot_trials[trial_id] = orphan
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        step = result.get(self.time_attr)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or step is None:
            return
        if value is not None and math.isfinite(value) and step not in self._reported.setdefault(trial_id, set()):
            # Optuna refuses NaN intermediate values, and a resumed trial may repeat a step
            self._ot_trials[trial_id].report(float(value), int(step))
            self._reported[trial_id].add(step)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if error:
            # Left RUNNING for now: a trial that errored because its job was preempted continues on --resume and
            # is told then. A sweep that ends without interruption tells what is still running FAIL (fail_running).
            return None
        if result:  # Tune hands a trial's final result here, not to on_trial_result
            self.on_trial_result(trial_id, result)
        state, value = outcome(result, error, self.metric, self.time_attr, self.max_t)
        ot_trial = self._ot_trials[trial_id]
        # After a killed driver, Tune may finish again a trial whose end Optuna already recorded (the searcher's
        # saved state predates it): the study keeps the first, real ending.
        if not self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)


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


def outcome(result: Optional[dict], error: bool, metric: str, time_attr: str,
            max_t: int) -> tuple[optuna.trial.TrialState, Optional[float]]:
    S = optuna.trial.TrialState
    value = (result or {}).get(metric)
    if error or value is None or not math.isfinite(value):
        return S.FAIL, None
    if (result or {}).get(time_attr, 0) < max_t:
        return S.PRUNED, None
    return S.COMPLETE, float(value)


def fail_running(experiment_dir: Path, study_name: str) -> int:
    """At the end of a sweep that was not interrupted, every trial Optuna still holds as RUNNING errored: tell it
    FAIL. Returns how many."""
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(experiment_dir))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


def optuna_storage(experiment_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{experiment_dir.resolve() / OPTUNA_DB}")


def build_search(kind: str, metric: str, mode: str, seed: int, experiment_dir: Path, study_name: str,
                 max_t: int, num_samples: int):
    if kind == "random":
        # Ray's variant generator: random sampling that also expands grid_search values
        return BasicVariantGenerator(random_state=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines would drown the status line
    # TPE starts modelling after a few random trials; scale that with the budget so small sweeps still use it
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, num_samples // 3)))
    return PrunedAwareOptunaSearch(metric=metric, mode=mode, sampler=sampler, study_name=study_name,
                                   storage=optuna_storage(experiment_dir), max_t=max_t)
