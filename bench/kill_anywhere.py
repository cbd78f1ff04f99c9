"""Kill a sweep anywhere, resume it, and check that nothing reported was lost or repeated.

One sweep of the `smoke` space on generated data; its driver's process group is killed with SIGKILL at points
drawn from --seed over the sweep's whole life, and the same command (with --resume auto, as a requeued job runs it)
is run again after each kill, until it ends. The points:

  startup      a random moment before any trial has started
  launch       right after a trial's folder appears (trials launching)
  result       right after a new result row becomes visible in a trial's result.json
  commit       right after a new folder of resume_state/ appears (the sweep's state being saved)
  final-test   right after the driver prints that the final test starts
  report       right after the report's first plot appears

"Nothing lost, nothing repeated" (check_sweep) means, read back from the files once the sweep has ended:
- every result row seen in a trial's result.json after any kill is still there, at the same place, unchanged in
  every field (its timestamp, process id and times too: the epoch was not run again);
- each trial's rows are its epochs 1, 2, ..., each once;
- the sweep has as many trials as it was asked for, like an uninterrupted one;
- with Optuna: one Optuna trial per sweep trial, none left RUNNING, and its per-epoch values are its trial's;
- trials.csv, summary.json, test_metrics.json and report.md are there and agree with each other and the rows.

    python bench/kill_anywhere.py --kills 15 --search optuna --scheduler asha [--seed 0] [--json out.json]
    python bench/kill_anywhere.py --kills 15 --search random --scheduler fifo
    python bench/kill_anywhere.py --quick     # 3 kills on the smallest sweep: proves it runs
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from segtune import naming
from segtune.results import MEANINGLESS

REPO = Path(__file__).resolve().parents[1]
POINTS = ("startup", "launch", "result", "commit", "final-test", "report")
METRIC = "val/iou"  # the sweep's metric, as it appears in result rows and trials.csv


def read_rows(experiment: Path) -> dict[str, list[dict]]:
    """Every trial's visible result rows (a last line cut short by the kill is not a row yet)."""
    out = {}
    for path in naming.result_files(experiment):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
        out[path.parent.name] = rows
    return out


def count_rows(experiment: Path) -> int:
    return sum(len(rows) for rows in read_rows(experiment).values()) if experiment.exists() else 0


def check_sweep(experiment: Path, num_samples: int, seen: list[dict[str, list[dict]]], max_epochs: int,
                optuna_study: bool, final_test: bool = True) -> list[str]:
    """What is wrong with a finished sweep, given the rows ``seen`` after each kill (empty list: all is well)."""
    problems = []
    final = read_rows(experiment)
    for n, snapshot in enumerate(seen, 1):
        for trial, rows in snapshot.items():
            kept = final.get(trial, [])[:len(rows)]
            if kept != rows:
                changed = [r.get("epoch") for r, k in zip(rows, kept + [None] * len(rows)) if r != k]
                problems.append(f"after kill {n}: {trial} epochs {changed} were lost or reported again")
    for trial, rows in final.items():
        epochs = [r.get("epoch") for r in rows]
        if epochs != list(range(1, len(epochs) + 1)):
            problems.append(f"{trial}: epochs {epochs}, not 1..{len(epochs)} once each")
    trials = [p.name for p in naming.trial_folders(experiment)]
    if len(trials) != num_samples:
        problems.append(f"{len(trials)} trial folders, the sweep asked for {num_samples}")
    if optuna_study:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from segtune.search import optuna_storage

        study = optuna.load_study(study_name=experiment.name, storage=optuna_storage(experiment))
        running = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if running:
            problems.append(f"Optuna trials {running} left RUNNING")
        if len(study.trials) != len(trials):
            problems.append(f"{len(study.trials)} Optuna trials for {len(trials)} sweep trials")
        told = sorted(tuple(round(v, 6) for _, v in sorted(t.intermediate_values.items())) for t in study.trials)
        reported = sorted(tuple(round(r[METRIC], 6) for r in rows if r.get(METRIC) == r.get(METRIC))
                          for rows in final.values())
        if told != reported:
            problems.append("Optuna's per-epoch values are not the trials' reported ones")
    problems += check_outputs(experiment, final, max_epochs, final_test)
    return problems


def check_outputs(experiment: Path, final: dict[str, list[dict]], max_epochs: int, final_test: bool) -> list[str]:
    """trials.csv, summary.json, test_metrics.json and report.md: there, and consistent with the rows."""
    problems = []
    names = ["trials.csv", "summary.json", "report.md"] + (["test_metrics.json"] if final_test else [])
    missing = [n for n in names if not (experiment / n).is_file()]
    if missing:
        return [f"missing: {', '.join(missing)}"]
    with open(experiment / "trials.csv") as f:
        table = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    summary = json.loads((experiment / "summary.json").read_text())
    if set(table) != set(final):
        problems.append(f"trials.csv lists {sorted(table)}, the folders hold {sorted(final)}")
    if summary.get("trials") != len(table) or summary.get("interrupted"):
        problems.append(f"summary.json: {summary.get('trials')} trials, interrupted={summary.get('interrupted')}")
    for trial, rows in final.items():
        row = table.get(trial, {})
        if str(len(rows)) != row.get("epochs", str(len(rows))):
            problems.append(f"trials.csv: {trial} has {row.get('epochs')} epochs, result.json {len(rows)}")
    # the sweep's best: of the trials that neither diverged nor collapsed (segtune.results.MEANINGLESS)
    values = [r[METRIC] for trial, rows in final.items() for r in rows if r.get(METRIC) == r.get(METRIC)
              and table.get(trial, {}).get("status") not in MEANINGLESS]
    best = max(values) if values else None
    if best is None or abs(summary.get("best_value", -1) - best) > 1e-9:
        problems.append(f"summary.json best {summary.get('best_value')}, the rows' best {best}")
    if final_test:
        test = json.loads((experiment / "test_metrics.json").read_text())
        if test.get("trial_id") != summary.get("best_trial_id"):
            problems.append(f"test_metrics.json tests trial {test.get('trial_id')}, "
                            f"the best is {summary.get('best_trial_id')}")
    if best is not None and f"{best:.4f}" not in (experiment / "report.md").read_text():
        problems.append(f"report.md does not show the best {METRIC} {best:.4f}")
    return problems


class Run:
    """One driver process (a new process group, as a batch job's would be), its log in ``log``."""

    def __init__(self, argv: list[str], log: Path):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """True once ``condition`` holds; False if the driver ended first (or time ran out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        time.sleep(0.5)  # Ray's processes of the group go with it; let the kernel reap them


def condition_for(point: str, run: Run, experiment: Path, rng: random.Random) -> Callable[[], bool]:
    commits = lambda: len(list((experiment / "resume_state").glob("[0-9]*")))  # noqa: E731
    if point == "startup":
        deadline = time.monotonic() + rng.uniform(0.0, 12.0)
        return lambda: time.monotonic() >= deadline or any(
            (f / "params.json").is_file() for f in naming.trial_folders(experiment))
    if point == "launch":
        before = len(naming.trial_folders(experiment))
        return lambda: len(naming.trial_folders(experiment)) > before
    if point == "result":
        before = count_rows(experiment)
        return lambda: count_rows(experiment) > before
    if point == "commit":
        before = commits() if experiment.exists() else 0
        return lambda: experiment.exists() and commits() != before
    if point == "final-test":
        return lambda: "final test:" in run.text()
    return lambda: any(experiment.glob("report_*.png"))


def sweep_argv(args, data: Path, storage: Path, name: str) -> list[str]:
    return ["tune_main.py", "--synthetic", "--data-dir", str(data), "--space", "smoke", "--set", "image_size=64",
            "--set", "encoder=resnet18", "--set", "batch_size=8", "--num-samples", str(args.num_samples),
            "--max-epochs", str(args.max_epochs), "--grace-period", "1", "--reduction-factor", "2",
            "--search", args.search, "--scheduler", args.scheduler, "--seed", str(args.seed),
            "--storage-path", str(storage), "--name", name]


def shuffled_rounds(rng: random.Random):
    """The points in rounds, each round in an order drawn from ``rng``: every point is hit about equally often."""
    while True:
        yield from rng.sample(POINTS, len(POINTS))


def one_sweep(args, rng: random.Random, points, work: Path, name: str, kills_left: int) -> dict:
    """Run one sweep to its end, killing it ``kills_left`` times at most; returns what happened."""
    storage, data = work / "results", work / "data"
    experiment = storage / name
    # one command for every start and restart, as a scheduler requeues a job: --resume auto starts the sweep, or
    # continues it when a run before was killed (also before it saved anything)
    argv = [*sweep_argv(args, data, storage, name), "--resume", "auto"]
    seen, kills, runs = [], [], 0
    started = time.monotonic()
    while True:
        run = Run(argv, work / f"{name}-run{runs}.log")
        runs += 1
        if len(kills) < kills_left:
            point = next(points)
            hit = run.wait_for(condition_for(point, run, experiment, rng), timeout=600)
            if hit:
                time.sleep(rng.uniform(0.0, 0.05))  # a little later still: any moment near the point
                run.kill()
                kills.append(point)
                seen.append(read_rows(experiment))
                print(f"  kill {len(kills)}: {point:10s} (run {runs}), {count_rows(experiment)} rows seen",
                      flush=True)
                continue
        code = run.proc.wait(timeout=1800)
        if code != 0:
            return {"name": name, "kills": kills, "exit": code, "problems": [f"exit {code}: {run.text()[-2000:]}"],
                    "seconds": time.monotonic() - started}
        problems = check_sweep(experiment, args.num_samples, seen, args.max_epochs, args.search == "optuna")
        return {"name": name, "kills": kills, "exit": code, "problems": problems,
                "seconds": round(time.monotonic() - started, 1)}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=15, help="kills in all (over as many sweeps as that takes)")
    p.add_argument("--search", choices=("optuna", "random"), default="optuna")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="kept for inspection (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="3 kills, 3 trials of 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.kills, args.num_samples, args.max_epochs = 3, 3, 2
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill-anywhere-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"kill_anywhere: {args.search} + {args.scheduler}, {args.num_samples} trials x {args.max_epochs} epochs, "
          f"{args.kills} kills, seed {args.seed}, in {work}", flush=True)
    sweeps, points = [], shuffled_rounds(rng)
    while sum(len(s["kills"]) for s in sweeps) < args.kills:
        name = f"{args.search}-{args.scheduler}-{len(sweeps)}"
        print(f"sweep {name}", flush=True)
        sweeps.append(one_sweep(args, rng, points, work, name, args.kills - sum(len(s["kills"]) for s in sweeps)))
        s = sweeps[-1]
        print(f"  -> exit {s['exit']}, {len(s['kills'])} kills, {s['seconds']} s: "
              + ("nothing lost or repeated" if not s["problems"] else "; ".join(s["problems"])), flush=True)
    kills = [k for s in sweeps for k in s["kills"]]
    survived = sum(len(s["kills"]) for s in sweeps if not s["problems"])
    by_point = {p: kills.count(p) for p in POINTS}
    print(f"kills: {len(kills)} ({', '.join(f'{p} {n}' for p, n in by_point.items())}); "
          f"sweeps: {len(sweeps)}; kills survived: {survived} / {len(kills)}")
    if args.json:
        args.json.write_text(json.dumps({"search": args.search, "scheduler": args.scheduler, "seed": args.seed,
                                         "kills": len(kills), "by_point": by_point, "survived": survived,
                                         "sweeps": sweeps}, indent=2))
    return 0 if survived == len(kills) else 1


if __name__ == "__main__":
    sys.exit(main())
