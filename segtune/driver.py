"""The sweep, as its steps: ``run_sweep`` calls them in order, each a function below.

1. ``check_and_prepare``  settings (and --resume's saved ones), storage, space, data and weights: every problem
                          found before anything expensive starts
2. ``connect``            start or join Ray; check the request against the cluster
3. ``plan``               what will run, printed (a --dry-run stops after it)
4. ``start_experiment``   sweep.yaml and space.yaml, or the newest commit put back for a resume
5. ``build_tuner``        the Tuner: trainable, search, scheduler, callbacks (or Tune's saved one, resumed)
6. ``fit``                Tune runs the trials
7. ``summarise``          trials.csv, best_config.yaml, summary.json
8. ``final_test``         the best checkpoint on the test split
9. ``report``             report.md and its plots, then the summary printed
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from segcore.config import TrainConfig
from segcore.data.dataset import dataset_complete, find_dataset
from segcore.data.decoded import DecodedSplit
from segcore.errors import UserError
from segcore.metrics_names import EPOCH, SWEEP_METRIC, SWEEP_MODE
from segtune import cluster, prepare, saved_state
from segtune.checkpoint_policy import CheckpointPolicy
from segtune.interrupts import Interrupts
from segtune.results import finished_sweep
from segtune.settings import SweepSettings, auto_resume, resume_command, save_settings, settings_for
from segtune.spaces import Space, load_space
from segtune.storage import ENDED_FILE, OPTUNA_JOURNAL, SPACE_FILE, Storage, write_text_atomic
from segtune.trainable import IN_SWEEP_WORKER

if TYPE_CHECKING:  # segtune.assets imports torch: a local Ray starts before that (check_and_prepare)
    from segtune.assets import SweepAssets

# Tune saves its state (and saved_state commits it with the results reported since) every SNAPSHOT_S seconds: a
# result becomes visible, and survives a kill, within about that time. Each save writes every trial's state, so it
# costs more as the sweep grows: past SNAPSHOT_AUTO_FROM trials Tune's own rule takes over ("auto": every 10 s or
# more, keeping the saves, commits included, near 5 % of the driver's time). bench/bookkeeping.py measured 2.6 % of
# the driver's time at 100 trials and 4.3 % at 300 with 2 s. A TUNE_GLOBAL_CHECKPOINT_S of the user's wins.
SNAPSHOT_ENV, SNAPSHOT_S, SNAPSHOT_AUTO_FROM = "TUNE_GLOBAL_CHECKPOINT_S", "2", 200
_snapshot_set: Optional[str] = None  # what this process set, told apart from a value of the user's
# SIGINT is ours (class Interrupts): it asks Tune to stop through SIGUSR1, as it does for SIGTERM.
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

# Trials get data and weights from the driver through the object store: they must not reach the Hugging Face hub
# or read its cache (which a node without a shared filesystem would not have). Enforced, so a slip fails loudly.
TRIAL_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent/segsweep-trials-get-weights-from-the-driver",
             IN_SWEEP_WORKER: "1"}


class _NoTunerRestoreHint(logging.Filter):
    """Tune ends an interrupted run with 'Resume experiment with: Tuner.restore(...)'; ours prints the command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoTunerRestoreHint())
logging.getLogger("ray.tune.execution.tune_controller").addFilter(saved_state.RefuseSilentRestart())


@dataclass
class Prepared:
    """What step 1 found and made ready."""
    settings: SweepSettings
    storage: Storage
    space: Space
    base: dict[str, Any]  # the config values every trial shares
    assets: SweepAssets  # decoded data and encoder weights, for the trials
    tests: dict[int, DecodedSplit]  # the test split at each image size, for the final test
    notes: list[str]  # lines for the plan
    commit: Optional[int]  # the saved state --resume continues from
    resources: str = ""  # the request, as checked against the machine or cluster
    ray_start: Optional[cluster.LocalStart] = None  # a local Ray starting beside the data preparation


class SweepFinished(Exception):
    """--resume auto found the sweep finished: nothing to run (a requeued job whose sweep had ended)."""

    def __init__(self, experiment: Path, summary: dict[str, Any]):
        super().__init__(str(experiment))
        self.experiment, self.summary = experiment, summary


def run_sweep(given: SweepSettings, named: set[str], interrupts: Interrupts) -> int:
    """Check everything, prepare the assets, run (or resume) the sweep, summarise it; returns the exit code."""
    try:
        job = check_and_prepare(given, named)
    except SweepFinished as done:
        from segtune.results import format_summary

        print(f"--resume auto: {done.experiment} holds a finished sweep; nothing to run", flush=True)
        print(format_summary(done.summary), flush=True)
        return 0
    stopping = None
    try:
        ray_cluster = connect(job, interrupts)
        print(plan(job), flush=True)
        if job.settings.dry_run:
            print("dry run: nothing started")
            return 0
        restore = start_experiment(job)
        tuner = build_tuner(job, ray_cluster, restore)
        results = fit(tuner, job, interrupts)
        if results is None:
            return interrupts.exit_code or 128 + signal.SIGINT
        summary = summarise(results, job, interrupted=interrupts.received is not None)
        if not job.settings.no_final_test and interrupts.received is None and summary.get("best_checkpoint"):
            summary["final_test"] = final_test(results, job, summary)
        stopping = cluster.shutdown_beside()  # Ray's work is done: its 1-2 s of shutdown beside the report's
        report(job, summary)
        return interrupts.exit_code
    finally:
        # whatever ended the sweep: the CLI exits without the interpreter's teardown, and Ray's agent processes
        # (dashboard, runtime_env) outlive a driver that did not shut Ray down
        cluster.shutdown(stopping)


def check_and_prepare(given: SweepSettings, named: set[str]) -> Prepared:
    """Step 1. Cheap checks first (settings, storage, resources), then the data decoded and weights fetched once,
    here, before any trial."""
    storage = Storage(given.storage_path, given.name)
    storage.check_writable()
    if given.resume_auto:
        given = given.replace(resume=auto_resume(storage.local))
    settings = settings_for(given, named, storage.local)
    if settings.resume_auto and settings.resume:
        summary = finished_sweep(storage.local, settings.no_final_test)
        if summary is not None:
            raise SweepFinished(storage.local, summary)
    if storage.local.exists() and not settings.resume and any(storage.local.iterdir()):
        raise UserError(f"--name {settings.name}: {storage.local} already holds an experiment; add --resume to "
                        "continue it or choose another --name (nothing is overwritten)")
    # which saved state --resume continues from, found readable now rather than after the data is decoded
    commit = saved_state.newest_readable(storage.ray_path_of_experiment) if settings.resume else None
    space = load_space(settings.space, prepare.parse_sets(settings.set), settings.search)
    data_dir = Path(settings.data_dir).resolve()
    base = prepare.base_config(space, data_dir, settings.max_epochs)
    configs: list[TrainConfig] = prepare.candidate_configs(space, base)
    resources = ""
    if settings.local_sweep:  # checked against this machine before Ray starts (torch counts GPUs when asked for)
        resources = cluster.check_resources(settings.cpus_per_trial, settings.gpus_per_trial,
                                            settings.workers_per_trial,
                                            count_gpus=settings.gpus_per_trial > 0 or settings.dry_run)
    # Every check that reads no image has passed, without torch (what SMP accepts comes from segcore.cache): Ray
    # starts now, beside the driver's imports, the data's generation or decoding and the weights' fetch, and is shut
    # down again if they find a problem. (With files missing, the data check reports them first, Ray unstarted.)
    ray_start = None
    if settings.local_sweep and not settings.dry_run and data_complete_or_generated(data_dir, settings.synthetic):
        ray_start = cluster.LocalStart(cluster.trial_env(TRIAL_ENV), dashboard=ray_dashboard(settings))
    try:
        from segtune.assets import build_assets

        pending = prepare.ensure_dataset(data_dir, settings.synthetic, settings.download, settings.synthetic_images,
                                         dry_run=settings.dry_run, synthetic_layout=settings.synthetic_layout)
        assets, tests, notes, classes = build_assets(configs, data=pending is None)
        base["classes"] = classes  # a folder of one's own: its classes, in every trial's config and checkpoint
    except BaseException:
        if ray_start is not None:
            ray_start.abandon()
        raise
    return Prepared(settings, storage, space, base, assets, tests, notes + ([pending] if pending else []), commit,
                    resources, ray_start)


def data_complete_or_generated(data_dir: Path, synthetic: bool) -> bool:
    """Whether every listed file is there, or a stand-in is about to be generated into an empty folder."""
    if dataset_complete(data_dir):
        return True
    try:
        find_dataset(data_dir)
        return False  # a dataset with files missing: the data check says which, with Ray unstarted
    except UserError:
        return synthetic


def ray_dashboard(s: SweepSettings) -> bool:
    # Ray Train frees a stopped DDP trial's workers through the state API, which the dashboard serves
    return s.dashboard or s.workers_per_trial > 1


def connect(job: Prepared, interrupts: Interrupts) -> Optional[cluster.Cluster]:
    """Step 2. Start Ray here, or join --address, and check the request against what it has. A local dry run
    starts nothing."""
    s = job.settings
    if s.dry_run and s.local_sweep:
        return None
    if job.ray_start is not None:
        ray_cluster = job.ray_start.result()
    else:
        ray_cluster = cluster.connect(s.address, cluster.trial_env(TRIAL_ENV), dashboard=ray_dashboard(s))
    interrupts.install()
    # (a local sweep was checked against this machine before Ray started; Ray's own count is what Tune schedules by)
    job.resources = cluster.check_resources(s.cpus_per_trial, s.gpus_per_trial, s.workers_per_trial,
                                            ray_cluster.resources, ray_cluster.node_cpus)
    if len(ray_cluster.hosts) > 1 and not job.storage.is_uri:
        cluster.check_storage_shared(job.storage.local.parent, ray_cluster.node_ids,
                                      ray_cluster.node_addresses)
    if job.assets.decoded:  # how the decoded data reaches the trials, now that the object store's size is known
        from segtune.assets import choose_data_path

        job.notes.append(choose_data_path(job.assets))
    return ray_cluster


def plan(job: Prepared) -> str:
    """Step 3. What will run, in a few lines."""
    s, space = job.settings, job.space
    searched = ", ".join(f"{k}~{kind}{vals}" for k, (kind, vals) in space.searched.items()) or "nothing"
    fixed = ", ".join(f"{k}={v}" for k, v in space.fixed.items()) or "none"
    workers = f", {s.workers_per_trial} DDP workers each" if s.workers_per_trial > 1 else ""
    sched = (f"ASHA (grace {s.grace_period}, reduction {s.reduction_factor}, max {s.max_epochs} epochs)"
             if s.scheduler == "asha" else f"FIFO ({s.max_epochs} epochs each)")
    period = snapshot_period(s.num_samples, apply=False)
    lines = [f"space {space.name} ({space.path}): {space.description}", f"  searched: {searched}",
             f"  fixed: {fixed}",
             f"search {s.search} (seed {s.seed}), {s.num_samples} samples, scheduler {sched}",
             f"metric {SWEEP_METRIC} ({SWEEP_MODE}); per trial {s.cpus_per_trial:g} CPU, "
             f"{s.gpus_per_trial:g} GPU{workers}; max concurrent {s.max_concurrent or 'as resources allow'}",
             "checkpoints: " + CheckpointPolicy.for_trial(s.checkpoint_every, s.workers_per_trial).describe()
             + f", best weights; kept once a trial ends: the best weights of the {s.keep_best} best trials",
             "results committed (visible in result.json, kept through a kill) "
             + (f"every 10 s or more (Tune's auto rule: a sweep of over {SNAPSHOT_AUTO_FROM} trials)"
                if period == "auto" else f"every {period} s"),
             f"resources: {job.resources}", *job.notes, f"experiment: {job.storage.shown}"]
    return "\n".join(lines)


def start_experiment(job: Prepared) -> bool:
    """Step 4. A new sweep writes sweep.yaml first (with it --resume can continue, from the space file it names);
    a resumed one is put back to its newest commit. True when Tune is to restore the experiment."""
    s, storage = job.settings, job.storage
    storage.local.mkdir(parents=True, exist_ok=True)
    if not s.resume:
        save_settings(s, storage.local)
        job.space.save(storage.local / SPACE_FILE)
    saved_state.KEEP_BEST, saved_state.MAX_EPOCHS = s.keep_best, s.max_epochs
    if s.search == "optuna":  # a driver killed mid-append left the study's journal cut short
        from segtune.search import repair_journal

        repair_journal(storage.local / OPTUNA_JOURNAL)
    return saved_state.prepare(storage.ray_path_of_experiment, job.commit, s.resume, s.state_format)


def snapshot_period(num_samples: int, apply: bool = True) -> str:
    """TUNE_GLOBAL_CHECKPOINT_S for a sweep of ``num_samples`` trials, set for Tune to read as ``fit`` starts."""
    global _snapshot_set
    given = os.environ.get(SNAPSHOT_ENV)
    if given is None or given == _snapshot_set:
        given = "auto" if num_samples > SNAPSHOT_AUTO_FROM else SNAPSHOT_S
        if apply:
            _snapshot_set = os.environ[SNAPSHOT_ENV] = given
    return given


def build_tuner(job: Prepared, ray_cluster: cluster.Cluster, restore: bool):
    """Step 5. The Tuner: Tune's saved one for a resume, else a new one from the settings."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from segtune import compat, naming, tune_callbacks
    from segtune.board import TrialBoard
    from segtune.search import build_search
    from segtune.trainable import train_trial

    s, storage = job.settings, job.storage
    snapshot_period(s.num_samples)
    workers = s.workers_per_trial
    trainable = tune.with_parameters(train_trial, base=job.base, cpus=s.cpus_per_trial, gpus=s.gpus_per_trial,
                                     workers=workers, assets_ref=[ray.put(job.assets)],
                                     storage=storage.ray_path_of_experiment, checkpoint_every=s.checkpoint_every)
    # A DDP trial's own process only coordinates (a sliver of a CPU); its Ray Train workers hold the CPUs / GPUs.
    trial_resources = ({"cpu": cluster.DDP_DRIVER_CPU} if workers > 1
                       else {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})
    trainable = tune.with_resources(trainable, trial_resources)
    tune_callbacks.SHOW_PROGRESS = not s.verbose
    ray_verbosity = 2 if s.verbose else 0  # 0: our one-line status (tune_callbacks.Progress) instead
    # Tune's newer console output prints an experiment banner even at verbosity 0; its classic one is silent
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if s.verbose else "0"
    if restore and tune.Tuner.can_restore(storage.ray_path_of_experiment):
        # errored trials too, unless the sweep ended since (they are final then, FAIL in Optuna): a trial killed with
        # the job (preemption) errors, and continues from its last full state
        tuner = tune.Tuner.restore(storage.ray_path_of_experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=not (storage.local / ENDED_FILE).is_file())
        compat.set_restored_verbosity(tuner, ray_verbosity)
        return tuner
    # new, or stopped before Tune saved anything: start it (again) with its settings
    scheduler = (ASHAScheduler(time_attr=EPOCH, max_t=s.max_epochs, grace_period=s.grace_period,
                               reduction_factor=s.reduction_factor)
                 if s.scheduler == "asha" else FIFOScheduler())
    fixed = {**job.base, **job.space.fixed}  # what names a trial whose space does not search arch or encoder
    names = naming.TrialNames(fixed["arch"], fixed["encoder"])
    search = build_search(s.search, SWEEP_METRIC, SWEEP_MODE, s.seed, storage.local, s.name, s.max_epochs,
                          s.num_samples, names)
    max_concurrent = s.max_concurrent or cluster.trial_concurrency(s.cpus_per_trial, s.gpus_per_trial, workers,
                                                                   ray_cluster.resources)
    return tune.Tuner(
        trainable,
        param_space=job.space.to_tune(),
        tune_config=tune.TuneConfig(metric=SWEEP_METRIC, mode=SWEEP_MODE, search_alg=search, scheduler=scheduler,
                                    num_samples=s.num_samples, max_concurrent_trials=max_concurrent,
                                    reuse_actors=workers == 1,
                                    trial_name_creator=names, trial_dirname_creator=names),
        run_config=tune.RunConfig(
            name=s.name, storage_path=storage.ray_path,
            # every checkpoint kept by Tune: saved_state.CommittedState deletes those no commit needs
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=SWEEP_METRIC,
                                                    checkpoint_score_order=SWEEP_MODE),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            callbacks=[saved_state.CommittedState(),
                       TrialBoard(job.space.searched, job.space.fixed, s.max_epochs, job.base.get("classes")),
                       tune_callbacks.StopWhenSaved(), tune_callbacks.Progress(s.max_epochs)],
            verbose=ray_verbosity),
    )


def fit(tuner, job: Prepared, interrupts: Interrupts):
    """Step 6. Tune runs the trials; returns its ResultGrid, or None when a second signal stopped it at once."""

    from segtune.search import fail_running

    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # a second signal: no final snapshot, the last periodic one stands
        print(f"stopped at once; continue from the last saved state with  {resume_command(job.settings, job.storage)}",
              file=sys.stderr, flush=True)
        return None
    if interrupts.received is None:  # errored trials: not resumed any more
        write_text_atomic(job.storage.local / ENDED_FILE, json.dumps({"ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        if job.settings.search == "optuna":
            fail_running(job.storage.local, job.settings.name)
    return results


def summarise(results, job: Prepared, interrupted: bool) -> dict[str, Any]:
    """Step 7. trials.csv, best_config.yaml and summary.json."""
    from segtune import results as sweep_results

    return sweep_results.summarise(results, list(job.space.searched), job.base, job.settings.max_epochs,
                                   job.storage.local, interrupted=interrupted,
                                   resume_command=resume_command(job.settings, job.storage))


def final_test(results, job: Prepared, summary: dict[str, Any]) -> dict[str, Any]:
    """Step 8. The best checkpoint evaluated once on the test split, with one trial's resources."""
    from segtune.final_test import run_final_test
    from segtune.results import best_checkpoint, best_trial, write_summary

    print("final test: the best checkpoint on the test split ...", flush=True)
    s = job.settings
    size = int(summary["best_config"]["image_size"])
    # the test split as the trials got their data: through the object store, or from the node's own cache
    test = job.assets.recipe if job.assets.node_cache else job.tests[size]
    checkpoint = best_checkpoint(best_trial(results, s.max_epochs))  # the summary's best trial
    metrics = run_final_test(checkpoint, test, size, s.cpus_per_trial, s.gpus_per_trial, job.storage.local,
                             summary.get("best_trial_id"))
    write_summary({**summary, "final_test": metrics}, job.storage.local)  # again, with the final test's figures
    return metrics


def report(job: Prepared, summary: dict[str, Any]) -> None:
    """Step 9. report.md and its plots (a failure here must not cost the sweep's summary: it is shown, with how
    to retry), results uploaded to a URI storage, the summary printed. (Ray is shutting down meanwhile.)"""

    from segtune.report import build_report
    from segtune.results import format_summary

    experiment = job.storage.local
    try:
        print(f"report: {build_report(experiment)}", flush=True)
    except Exception:  # noqa: BLE001 - a bug, shown with its traceback
        traceback.print_exc()
        print(f"the report failed (above); rebuild it with  python tune_main.py --report {experiment}",
              file=sys.stderr, flush=True)
    job.storage.upload()
    print(format_summary(summary), flush=True)
