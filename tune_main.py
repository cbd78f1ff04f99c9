"""Hyperparameter sweep: Ray Tune runs segcore trials, Optuna proposes configs, ASHA stops weak trials early.

    python tune_main.py --synthetic --space smoke          # a small sweep on a generated dataset
    python tune_main.py --data-dir data --space default --num-samples 64 --gpus-per-trial 0.5
    python tune_main.py --resume --name NAME               # continue an interrupted sweep
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from segcore.errors import UserError, cli_entry
from segcore.metrics_names import EPOCH, SWEEP_METRIC, SWEEP_MODE
from segtune import cluster, prepare, saved_state
from segtune.assets import build_assets
from segtune.interrupts import Interrupts
from segtune.settings import given_flags, resume_command, save_settings, settings_for
from segtune.spaces import list_spaces, load_space
from segtune.storage import SPACE_FILE, Storage

# Tune saves its state (and saved_state commits it with the results reported since) every this many seconds: a
# result becomes visible, and survives a kill, within about that time. Tune's default adapts between 10 s and more.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# SIGINT is ours (class Interrupts): it asks Tune to stop through SIGUSR1, as it does for SIGTERM.
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


class _NoTunerRestoreHint(logging.Filter):
    """Tune ends an interrupted run with 'Resume experiment with: Tuner.restore(...)'; ours prints the command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoTunerRestoreHint())
logging.getLogger("ray.tune.execution.tune_controller").addFilter(saved_state.RefuseSilentRestart())

# Trials get data and weights from the driver through the object store: they must not reach the Hugging Face hub
# or read its cache (which a node without a shared filesystem would not have). Enforced, so a slip fails loudly.
TRIAL_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent/segsweep-trials-get-weights-from-the-driver"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune_main.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--space", default="default", help="a named space (see --list-spaces) or a YAML file")
    p.add_argument("--list-spaces", action="store_true", help="list the named search spaces and exit")
    p.add_argument("--data-dir", default="data", help="Oxford-IIIT Pet folder (official layout)")
    p.add_argument("--download", action="store_true", help="download the dataset into --data-dir first")
    p.add_argument("--synthetic", action="store_true", help="generate a stand-in dataset in --data-dir if empty")
    p.add_argument("--num-samples", type=int, default=16, help="trials to run (x grid size with grid values)")
    p.add_argument("--max-epochs", type=int, default=10, help="epochs of a trial that is never stopped")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1/N of trials at each rung")
    p.add_argument("--search", choices=("optuna", "random"), default="optuna",
                   help="optuna = seeded TPE; random = Ray's variant generator (also expands grid values)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha", help="asha stops weak trials early")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional allowed: 0.25 = 4 trials/GPU")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="DDP workers per trial (Ray Train); --cpus/--gpus-per-trial are then per worker")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a trial that raises")
    p.add_argument("--storage-path", default="results",
                   help="where experiments are kept: a local or shared path, or an s3:// / gs:// URI")
    p.add_argument("--name", default="sweep", help="experiment name: <storage-path>/<name>")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep <storage-path>/<name>")
    p.add_argument("--address", default=None, help="join a running Ray cluster (default: start a local one)")
    p.add_argument("--seed", type=int, default=0, help="seeds the search algorithm")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config field for all trials, e.g. --set image_size=128 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="check data, space and resources, print the plan, stop")
    p.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard with a local sweep (always on with --workers-per-trial > 1)")
    p.add_argument("--no-final-test", action="store_true",
                   help="skip evaluating the best checkpoint on the test split after the sweep")
    p.add_argument("--report", metavar="DIR", type=Path,
                   help="only rebuild DIR/report.md (and its plots) from an experiment folder, finished or not")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's full progress tables instead of the one-line status")
    return p


def plan(args, space, base_notes: list[str], resources: str, experiment: str) -> str:
    searched = ", ".join(f"{k}~{kind}{vals}" for k, (kind, vals) in space.searched.items()) or "nothing"
    fixed = ", ".join(f"{k}={v}" for k, v in space.fixed.items()) or "none"
    workers = f", {args.workers_per_trial} DDP workers each" if args.workers_per_trial > 1 else ""
    sched = (f"ASHA (grace {args.grace_period}, reduction {args.reduction_factor}, max {args.max_epochs} epochs)"
             if args.scheduler == "asha" else f"FIFO ({args.max_epochs} epochs each)")
    lines = [f"space {space.name} ({space.path}): {space.description}", f"  searched: {searched}",
             f"  fixed: {fixed}",
             f"search {args.search} (seed {args.seed}), {args.num_samples} samples, scheduler {sched}",
             f"metric {SWEEP_METRIC} ({SWEEP_MODE}); per trial {args.cpus_per_trial:g} CPU, "
             f"{args.gpus_per_trial:g} GPU{workers}; max concurrent {args.max_concurrent or 'as resources allow'}",
             f"resources: {resources}", *base_notes, f"experiment: {experiment}"]
    return "\n".join(lines)


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_spaces:
        for name, description in list_spaces():
            print(f"{name:12s} {description}")
        return 0
    if args.report:
        from segtune.report import build_report

        print(f"report: {build_report(args.report.resolve())}")
        return 0
    with Interrupts() as interrupts:
        return sweep(args, given_flags(build_parser(), argv), interrupts)


def sweep(args: argparse.Namespace, given: set[str], interrupts: Interrupts) -> int:
    """Check everything, prepare the assets, run (or resume) the sweep, summarise it; returns the exit code."""
    prepare.check_name(args.name)  # before it becomes part of any path
    storage = Storage(args.storage_path, args.name)
    args = settings_for(args, storage.local, given)
    prepare.check_flags(args)
    storage.check_writable()
    if storage.local.exists() and not args.resume and any(storage.local.iterdir()):
        raise UserError(f"--name {args.name}: {storage.local} already holds an experiment; add --resume to "
                        "continue it or choose another --name (nothing is overwritten)")
    # which saved state --resume continues from, found readable now rather than after the data is decoded
    commit = saved_state.newest_readable(storage.ray_path_of_experiment) if args.resume else None
    space = load_space(args.space, prepare.parse_sets(args.set), args.search)
    data_dir = Path(args.data_dir).resolve()
    pending = prepare.ensure_dataset(data_dir, args.synthetic, args.download, dry_run=args.dry_run)
    base = prepare.base_config(space, data_dir, args.max_epochs)
    configs = prepare.candidate_configs(space, base)
    if not args.address:  # a local sweep: check the request against this machine before starting anything
        resources = cluster.check_resources(args.cpus_per_trial, args.gpus_per_trial, args.workers_per_trial)
    # data decoded and weights fetched once, here, before any trial
    assets, tests, notes = build_assets(configs, data=pending is None)
    notes += [pending] if pending else []

    if not (args.dry_run and not args.address):
        # Ray Train frees a stopped DDP trial's workers through the state API, which the dashboard serves
        ray_cluster = cluster.connect(args.address, TRIAL_ENV, dashboard=args.dashboard or args.workers_per_trial > 1)
        interrupts.install()
        if args.address:  # a local sweep was checked against this machine before Ray started
            resources = cluster.check_resources(args.cpus_per_trial, args.gpus_per_trial, args.workers_per_trial,
                                                ray_cluster.resources, ray_cluster.node_cpus)
        if len(ray_cluster.hosts) > 1 and not storage.is_uri:
            cluster.check_storage_shared(storage.local.parent, ray_cluster.node_ids)
    print(plan(args, space, notes, resources, storage.shown), flush=True)
    if args.dry_run:
        print("dry run: nothing started")
        return 0
    storage.local.mkdir(parents=True, exist_ok=True)
    if not args.resume:  # sweep.yaml first: with it --resume can continue (from the space file it names)
        save_settings(args, storage.local)
        space.save(storage.local / SPACE_FILE)

    import ray
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from segtune import tune_callbacks
    from segtune.results import format_summary, summarise, write_summary
    from segtune.search import build_search, fail_running
    from segtune.trial import train_trial

    workers = args.workers_per_trial
    trainable = tune.with_parameters(train_trial, base=base, cpus=args.cpus_per_trial, gpus=args.gpus_per_trial,
                                     workers=workers, assets_ref=[ray.put(assets)],
                                     storage=storage.ray_path_of_experiment)
    # A DDP trial's own process only coordinates (a sliver of a CPU); its Ray Train workers hold the CPUs / GPUs.
    trial_resources = ({"cpu": cluster.DDP_DRIVER_CPU} if workers > 1
                       else {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    trainable = tune.with_resources(trainable, trial_resources)
    max_concurrent = args.max_concurrent or cluster.trial_concurrency(
        args.cpus_per_trial, args.gpus_per_trial, workers, ray_cluster.resources)
    tune_callbacks.SHOW_PROGRESS = not args.verbose
    ray_verbosity = 2 if args.verbose else 0  # 0: our one-line status (tune_callbacks.Progress) instead
    # Tune's newer console output prints an experiment banner even at verbosity 0; its classic one is silent
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if args.verbose else "0"
    restore = saved_state.prepare(storage.ray_path_of_experiment, commit, args.resume, args.state_format)
    if restore and tune.Tuner.can_restore(storage.ray_path_of_experiment):
        # errored trials too: a trial killed with the job (preemption) errors, and continues from its checkpoint
        tuner = tune.Tuner.restore(storage.ray_path_of_experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        # the run config comes back pickled; only the verbosity is this run's (Tune offers no public setter)
        tuner._local_tuner.get_run_config().verbose = ray_verbosity
    else:  # new, or stopped before Tune saved anything: start it (again) with its settings
        scheduler = (ASHAScheduler(time_attr=EPOCH, max_t=args.max_epochs, grace_period=args.grace_period,
                                   reduction_factor=args.reduction_factor)
                     if args.scheduler == "asha" else FIFOScheduler())
        search = build_search(args.search, SWEEP_METRIC, SWEEP_MODE, args.seed, storage.local, args.name,
                              args.max_epochs, args.num_samples)
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(metric=SWEEP_METRIC, mode=SWEEP_MODE, search_alg=search,
                                        scheduler=scheduler, num_samples=args.num_samples,
                                        max_concurrent_trials=max_concurrent, reuse_actors=workers == 1,
                                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(
                name=args.name, storage_path=storage.ray_path,
                # every checkpoint kept by Tune: saved_state.CommittedState deletes those no commit needs
                checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=SWEEP_METRIC,
                                                        checkpoint_score_order=SWEEP_MODE),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                callbacks=[saved_state.CommittedState(), TBXLoggerCallback(), tune_callbacks.StopWhenSaved(),
                           tune_callbacks.Progress(args.max_epochs)],
                verbose=ray_verbosity),
        )
    resume = resume_command(args, storage)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # a second signal: no final snapshot, the last periodic one stands
        print(f"stopped at once; continue from the last saved state with  {resume}", file=sys.stderr, flush=True)
        ray.shutdown()
        return interrupts.exit_code or 128 + signal.SIGINT
    if args.search == "optuna" and interrupts.received is None:
        fail_running(storage.local, args.name)  # errored trials: not resumed any more
    summary = summarise(results, list(space.searched), base, args.max_epochs, storage.local,
                        interrupted=interrupts.received is not None, resume_command=resume)
    if not args.no_final_test and interrupts.received is None and summary.get("best_checkpoint"):
        print("final test: the best checkpoint on the test split ...", flush=True)
        summary["final_test"] = final_test(results, tests, summary, args, storage)
        write_summary(summary, storage.local)  # again, with the final test's figures
    write_report(storage.local)
    storage.upload()
    print(format_summary(summary), flush=True)
    ray.shutdown()
    return interrupts.exit_code


def final_test(results, tests, summary: dict, args: argparse.Namespace, storage: Storage) -> dict:
    from segtune.final_test import run_final_test
    from segtune.results import best_checkpoint, best_trial

    best = best_trial(results)
    return run_final_test(best_checkpoint(best), tests, int(summary["best_config"]["image_size"]),
                          args.cpus_per_trial, args.gpus_per_trial, storage.local, summary.get("best_trial_id"))


def write_report(experiment: Path) -> None:
    """report.md and its plots. A failure here must not cost the sweep's summary: it is shown, with how to retry."""
    from segtune.report import build_report

    try:
        print(f"report: {build_report(experiment)}", flush=True)
    except Exception:  # noqa: BLE001 - a bug, shown with its traceback
        traceback.print_exc()
        print(f"the report failed (above); rebuild it with  python tune_main.py --report {experiment}",
              file=sys.stderr, flush=True)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of torch, Lightning and Ray modules (1.5-2 s that do nothing for us:
    every file is closed and Ray is shut down by then)."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
