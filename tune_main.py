"""Hyperparameter sweep: Ray Tune runs segcore trials, Optuna proposes configs, ASHA stops weak trials early.

    python tune_main.py --synthetic --space smoke          # a small sweep on a generated dataset
    python tune_main.py --data-dir data --space default --num-samples 64 --gpus-per-trial 0.5
    python tune_main.py --resume --name NAME               # continue an interrupted sweep

Flags -> SweepSettings -> segtune.driver.run_sweep, whose steps are listed at the top of segtune/driver.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from segcore.errors import UserError, cli_entry
from segtune.settings import NOT_SETTINGS, SCHEDULERS, SEARCHES, SweepSettings
from segtune.spaces import list_spaces

D = SweepSettings()  # the defaults, defined once


def build_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """The flags. ``given_only``: no defaults, so parsing yields only the flags on the command line."""
    p = argparse.ArgumentParser(prog="tune_main.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def default(value):
        return argparse.SUPPRESS if given_only else value

    p.add_argument("--space", default=default(D.space), help="a named space (see --list-spaces) or a YAML file")
    p.add_argument("--list-spaces", action="store_true", default=default(False),
                   help="list the named search spaces and exit")
    p.add_argument("--data-dir", default=default(D.data_dir), help="Oxford-IIIT Pet folder (official layout)")
    p.add_argument("--download", action="store_true", default=default(D.download),
                   help="download the dataset into --data-dir first")
    p.add_argument("--synthetic", action="store_true", default=default(D.synthetic),
                   help="generate a stand-in dataset in --data-dir if empty")
    p.add_argument("--synthetic-images", type=int, default=default(D.synthetic_images),
                   help="with --synthetic: images to generate (pets: half trainval, half test; folder: 60/20/20)")
    p.add_argument("--synthetic-layout", choices=("pets", "folder"), default=default(D.synthetic_layout),
                   help="with --synthetic: Oxford-IIIT Pet's layout (pet / background), or a folder of images and "
                        "palette masks with three classes (background, pet, toy: README, 'Your own data')")
    p.add_argument("--num-samples", type=int, default=default(D.num_samples),
                   help="trials to run (x grid size with grid values)")
    p.add_argument("--max-epochs", type=int, default=default(D.max_epochs),
                   help="epochs of a trial that is never stopped")
    p.add_argument("--grace-period", type=int, default=default(D.grace_period),
                   help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", type=int, default=default(D.reduction_factor),
                   help="ASHA: keep 1/N of trials at each rung")
    p.add_argument("--search", choices=SEARCHES, default=default(D.search),
                   help="optuna = seeded TPE; random = Ray's variant generator (also expands grid values)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=default(D.scheduler),
                   help="asha stops weak trials early")
    p.add_argument("--cpus-per-trial", type=float, default=default(D.cpus_per_trial))
    p.add_argument("--gpus-per-trial", type=float, default=default(D.gpus_per_trial),
                   help="fractional allowed: 0.25 = 4 trials/GPU")
    p.add_argument("--workers-per-trial", type=int, default=default(D.workers_per_trial),
                   help="DDP workers per trial (Ray Train); --cpus/--gpus-per-trial are then per worker")
    p.add_argument("--max-concurrent", type=int, default=default(D.max_concurrent),
                   help="trials at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, default=default(D.max_failures), help="retries of a trial that raises")
    p.add_argument("--checkpoint-every", default=default(D.checkpoint_every), metavar="auto|N|Nm",
                   help="how often a trial writes its full training state (what a kill or a retry continues from): "
                        "every N epochs, every N minutes, or auto: when writing it costs under a tenth of the "
                        "training since the last one (every epoch when an epoch takes long; every few when epochs "
                        "take seconds). A kill costs each running trial the epochs since its last full state. The "
                        "weights alone are written whenever val/iou improves. DDP trials write it every epoch")
    p.add_argument("--keep-best", type=int, default=default(D.keep_best), metavar="K",
                   help="keep the best weights of the K best trials once they end (the others' are deleted, so a "
                        "sweep of a thousand trials keeps K models, not a thousand; trials.csv says whose are "
                        "kept); running trials keep their full state until they end")
    p.add_argument("--storage-path", default=default(D.storage_path),
                   help="where experiments are kept: a local or shared path, or an s3:// / gs:// URI")
    p.add_argument("--name", default=default(D.name), help="experiment name: <storage-path>/<name>")
    p.add_argument("--resume", nargs="?", const=True, default=default(D.resume), metavar="auto",
                   help="continue the interrupted sweep <storage-path>/<name>; --resume auto: continue it if it "
                        "exists, else start it (one command for jobs a scheduler may requeue; a finished sweep is "
                        "reported, not run again)")
    p.add_argument("--address", default=default(D.address),
                   help="join a running Ray cluster (default: start a local one)")
    p.add_argument("--seed", type=int, default=default(D.seed), help="seeds the search algorithm")
    p.add_argument("--set", action="append", default=default(list(D.set)), metavar="KEY=VALUE",
                   help="fix a config field for all trials, e.g. --set image_size=128 (repeatable)")
    p.add_argument("--dry-run", action="store_true", default=default(D.dry_run),
                   help="check data, space and resources, print the plan, stop")
    p.add_argument("--dashboard", action="store_true", default=default(D.dashboard),
                   help="start Ray's dashboard with a local sweep (always on with --workers-per-trial > 1)")
    p.add_argument("--no-final-test", action="store_true", default=default(D.no_final_test),
                   help="skip evaluating the best checkpoint on the test split after the sweep")
    p.add_argument("--report", metavar="DIR", type=Path, default=default(None),
                   help="only rebuild DIR/report.md (and its plots) from an experiment folder, finished or not")
    p.add_argument("--verbose", action="store_true", default=default(D.verbose),
                   help="Ray's full progress tables instead of the one-line status")
    return p


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
    values = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    if values["resume"] == "auto":
        values.update(resume=False, resume_auto=True)
    elif not isinstance(values["resume"], bool):
        raise UserError(f"--resume {values['resume']!r}: give --resume alone (continue the sweep) or --resume auto "
                        "(continue it if it exists, else start it)")
    settings = SweepSettings.from_dict(values)
    named = set(vars(build_parser(given_only=True).parse_args(argv)))  # what --resume may not change
    from segtune.driver import run_sweep  # imports Ray: not for the modes above
    from segtune.interrupts import Interrupts

    with Interrupts() as interrupts:
        return run_sweep(settings, named, interrupts)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of torch, Lightning and Ray modules (1.5-2 s that do nothing for us:
    every file is closed and Ray is shut down by then)."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def console_main() -> None:
    """The ``segsweep`` command (pyproject.toml)."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
