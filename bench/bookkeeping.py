"""The sweep's own cost as it grows: N trials that sleep, through the sweep's whole path and through bare Tune.

The trials are a stand-in that sleeps ``--seconds`` per result for ``--results`` results (as Ray's bookkeeping
release test does: they take no CPU), one CPU each, on 2 CPUs, so what is measured is bookkeeping. Three ways:

  ours      tune_main's path as users run it: Optuna (TPE, its study in the experiment folder) + ASHA, the commits
            (segtune.saved_state), the TensorBoard board, the status line, trials.csv / summary.json / the report;
            only the trainable is the stand-in (``--no-final-test``: the stand-in leaves no model to test)
  bare      Tune alone with the same searcher and scheduler: Tune's OptunaSearch and ASHAScheduler, no callbacks of
            ours, Tune's default snapshot period (auto: at least 10 s, ~5 % of the driver's time); its trials reuse
            their processes as ours do (``reuse_actors``: without it each trial starts a process, 2.2 x the minimum
            at N=100 here, which is not bookkeeping)
  defaults  Tune's defaults as Ray's release test runs them: random search, FIFO

Each run is a process of its own (Tune reads its snapshot period at import). A run's theoretical minimum is the
trial-seconds it ran (ASHA stops trials early) over the CPUs. Printed for each N: wall / minimum, overhead per trial,
a commit's time and bytes (ours) and Tune's snapshot (every way), the driver's peak memory, the searcher's time,
the end of the sweep (summary, report) and the experiment folder's size.

    python -m bench.bookkeeping                               # N = 100, 300, 1000; ours, bare, defaults
    python -m bench.bookkeeping --trials 100 300 --ways ours bare
    python -m bench.bookkeeping --checkpoint-s 100            # ours with Ray's release-test snapshot period
    python -m bench.bookkeeping --checkpoint-kb 256           # each result with a small checkpoint
    python -m bench.bookkeeping --quick --json figures.json   # tiny: proves it runs (the suite's check)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
WAYS = ("ours", "bare", "defaults")
METRIC, EPOCH = "val/iou", "epoch"  # segcore.metrics_names', not imported: the parent process stays light
# the default space as users sweep it, without downloads (the stand-in builds no model) and with tiny decoding
SPACE, SETS = "default", ("encoder_weights=none", "image_size=32")


def make_sleeper(seconds: float, results: int, checkpoint_kb: int) -> Callable:
    """The stand-in trainable: sleeps, then reports what a trial reports (val/iou from its config, so the searcher
    has something to learn), ``results`` times; with ``checkpoint_kb``, a checkpoint of that size with each result.
    A closure: Tune pickles it by value, so trial processes need not import this module."""

    def sleeper(config: dict, **_ignored: Any) -> None:
        import math
        import random
        import tempfile as tmp

        from ray import tune

        rng = random.Random(json.dumps(config, sort_keys=True, default=str))
        lr = float(config.get("lr", 1e-3))
        quality = max(0.05, 0.9 - 0.08 * abs(math.log10(lr) + 3.3) - 0.1 * rng.random())
        for epoch in range(1, results + 1):
            time.sleep(seconds)
            iou = quality * (1 - 0.5 ** (epoch + 1))
            metrics = {METRIC: iou, "val/loss": 1 - iou, "train/loss": 1.1 - iou, "val/pet_fraction": 0.3,
                       "val/true_fraction": 0.3, EPOCH: epoch}
            if not checkpoint_kb:
                tune.report(metrics)
                continue
            with tmp.TemporaryDirectory() as folder:
                with open(os.path.join(folder, "checkpoint.ckpt"), "wb") as f:
                    f.write(os.urandom(checkpoint_kb * 1024))
                tune.report({**metrics, "checkpoint_kind": "full"}, checkpoint=tune.Checkpoint.from_directory(folder))

    return sleeper


class Timers:
    """Time spent in wrapped functions, per key: every call's duration, in order."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner: Any, name: str, key: str, after: Callable[[float], None] | None = None) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                self.calls[key].append(took)
                if after is not None:
                    after(took)

        setattr(owner, name, timed)

    def total(self, key: str) -> float:
        return sum(self.calls.get(key, []))


def tail(values: list[float], share: float = 0.25) -> float:
    """The median of the last ``share`` of ``values``: the steady cost once the sweep has its size."""
    if not values:
        return 0.0
    return statistics.median(values[-max(1, int(len(values) * share)):])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tune_timers(timers: Timers, searcher_cls: type) -> None:
    """What every way has: Tune's snapshot (its state files, then the callbacks' and searcher's), the searcher."""
    from ray.tune.execution.tune_controller import TuneController

    timers.wrap(TuneController, "save_to_dir", "snapshot")
    for name in ("suggest", "on_trial_result", "on_trial_complete"):
        timers.wrap(searcher_cls, name, "searcher")
    timers.wrap(searcher_cls, "suggest", "suggest")


def run_ours(n: int, args, tmp: Path, data: Path) -> dict[str, Any]:
    if args.checkpoint_s is not None:
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(args.checkpoint_s)
    import segtune.trainable
    import tune_main
    from segtune import driver, saved_state, tune_callbacks
    from segtune.board import TrialBoard
    from segtune.search import PrunedAwareOptunaSearch

    segtune.trainable.train_trial = make_sleeper(args.seconds, args.results, args.checkpoint_kb)  # the stand-in
    timers, commit_bytes, current = Timers(), [], [0]
    tune_timers(timers, PrunedAwareOptunaSearch)
    timers.wrap(PrunedAwareOptunaSearch, "write_committed", "searcher")

    def count(owner, name):
        original = getattr(owner, name)

        def counted(*a):
            current[0] += len(a[-1]) if isinstance(a[-1], bytes) else sum(len(r) + 1 for r in a[-1])
            return original(*a)
        setattr(owner, name, counted)

    count(saved_state.CommittedState, "_put")
    count(saved_state, "_append_rows")

    def committed(_took: float) -> None:
        commit_bytes.append(current[0])
        current[0] = 0

    timers.wrap(saved_state.CommittedState, "_commit", "commit", after=committed)
    for cls, key in ((TrialBoard, "board"), (tune_callbacks.Progress, "progress")):
        for name in ("on_trial_result", "on_trial_complete", "on_trial_start", "on_step_end", "on_trial_error"):
            if name in vars(cls):
                timers.wrap(cls, name, key)
    grid = {}

    def fit(tuner, job, interrupts):
        grid["results"] = results = original_fit(tuner, job, interrupts)
        return results

    original_fit = driver.fit
    driver.fit = fit
    timers.wrap(driver, "check_and_prepare", "prepare")
    timers.wrap(driver, "start_experiment", "restore")
    timers.wrap(driver, "fit", "fit")
    timers.wrap(driver, "summarise", "summarise")
    timers.wrap(driver, "report", "report")
    storage, name = tmp / "runs", f"ours-{n}"
    argv = ["--data-dir", str(data), "--space", SPACE, *(f for s in SETS for f in ("--set", s)),
            "--num-samples", str(n), "--max-epochs", str(args.results), "--grace-period", "1",
            "--reduction-factor", str(args.reduction_factor), "--cpus-per-trial", "1", "--seed", "0",
            "--no-final-test", "--storage-path", str(storage), "--name", name, *(["--resume"] if args.resume else [])]
    started = time.perf_counter()
    code = tune_main.main(argv)
    whole = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the sweep exited {code}")
    results = grid["results"]
    experiment = storage / name
    return {**figures(timers, results, n, args), "whole_s": round(whole, 2),
            "end_s": round(timers.total("summarise") + timers.total("report"), 2),
            "summarise_s": round(timers.total("summarise"), 2), "report_s": round(timers.total("report"), 2),
            "commits": len(timers.calls["commit"]), "commit_ms": round(1000 * tail(timers.calls["commit"]), 2),
            "commit_kb": round(tail([float(b) for b in commit_bytes]) / 1024, 1),
            "commit_share": round(timers.total("commit") / timers.total("fit"), 4),
            "board_s": round(timers.total("board"), 2), "progress_s": round(timers.total("progress"), 2),
            "disk_mb": round(folder_bytes(experiment) / 2**20, 1),
            "trials_csv_rows": sum(1 for _ in open(experiment / "trials.csv")) - 1,
            # --kill-after: the checks and the saved state put back before Tune restores the experiment
            "prepare_s": round(timers.total("prepare"), 2), "restore_s": round(timers.total("restore"), 2),
            "epochs_repeated": repeated_epochs(experiment)}


def repeated_epochs(experiment: Path) -> int:
    """Rows of an epoch a trial's result.json already held (a resume that reported something twice)."""
    repeated = 0
    for rows in experiment.glob("*/result.json"):
        epochs = [json.loads(line)[EPOCH] for line in rows.read_text().splitlines() if line.strip()]
        repeated += len(epochs) - len(set(epochs))
    return repeated


def run_bare(n: int, args, tmp: Path, defaults: bool) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from segtune.spaces import load_space

    sets = dict(s.split("=", 1) for s in SETS)
    space = load_space(SPACE, sets, "random" if defaults else "optuna")
    timers = Timers()
    tune_timers(timers, OptunaSearch)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(make_sleeper(args.seconds, args.results, args.checkpoint_kb), {"cpu": 1})
    config = (tune.TuneConfig(num_samples=n) if defaults else tune.TuneConfig(
        metric=METRIC, mode="max", num_samples=n, search_alg=OptunaSearch(seed=0), reuse_actors=True,
        scheduler=ASHAScheduler(time_attr=EPOCH, max_t=args.results, grace_period=1,
                                reduction_factor=args.reduction_factor)))
    tuner = tune.Tuner(trainable, param_space=space.to_tune(), tune_config=config,
                       run_config=tune.RunConfig(name=f"bare-{n}", storage_path=str(tmp / "runs"), verbose=0))
    started = time.perf_counter()
    results = tuner.fit()
    timers.calls["fit"].append(time.perf_counter() - started)
    ray.shutdown()
    return {**figures(timers, results, n, args), "disk_mb": round(folder_bytes(tmp / "runs") / 2**20, 1)}


def figures(timers: Timers, results, n: int, args) -> dict[str, Any]:
    """What every way reports: wall against the minimum, Tune's snapshots, the searcher, the driver's memory."""
    fit = timers.total("fit")
    epochs = [int((r.metrics or {}).get(EPOCH) or 0) for r in results]
    trial_s = sum(epochs) * args.seconds
    minimum = trial_s / args.cpus
    snapshots = timers.calls["snapshot"]
    return {"trials": len(epochs), "results": sum(epochs), "wall_s": round(fit, 2), "min_s": round(minimum, 2),
            "wall_over_min": round(fit / minimum, 3) if minimum else None,
            "overhead_ms_per_trial": round(1000 * (fit - minimum) / n, 1),
            "snapshots": len(snapshots), "snapshot_ms": round(1000 * tail(snapshots), 2),
            "snapshot_share": round(sum(snapshots) / fit, 4) if fit else None,
            "searcher_s": round(timers.total("searcher"), 2),
            "suggest_ms": round(1000 * tail(timers.calls["suggest"]), 2),
            "suggest_share": round(timers.total("suggest") / fit, 4) if fit else None,
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def one(args) -> None:
    """A child process: one way at one N, its figures as JSON on stdout's last line."""
    tmp = Path(args.tmp)
    way, n = args.one[0], int(args.one[1])
    out = (run_ours(n, args, tmp, Path(args.data)) if way == "ours"
           else run_bare(n, args, tmp, defaults=way == "defaults"))
    print("FIGURES " + json.dumps({"way": way, "n": n, **out}), flush=True)


COLUMNS = (("wall_s", "wall s", "{:.0f}"), ("min_s", "min s", "{:.0f}"), ("wall_over_min", "wall/min", "{:.3f}"),
           ("overhead_ms_per_trial", "ms/trial", "{:.0f}"), ("snapshot_ms", "snap ms", "{:.1f}"),
           ("snapshot_share", "snap %", "{:.1%}"), ("commit_ms", "commit ms", "{:.1f}"),
           ("commit_kb", "commit KB", "{:.1f}"), ("peak_mb", "peak MB", "{:.0f}"),
           ("suggest_ms", "suggest ms", "{:.1f}"), ("suggest_share", "suggest %", "{:.1%}"),
           ("end_s", "end s", "{:.1f}"), ("disk_mb", "disk MB", "{:.1f}"))


def table(runs: list[dict]) -> str:
    head = ["N", "way"] + [c[1] for c in COLUMNS]
    rows = [[str(r["n"]), r["way"]] + [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in COLUMNS]
            for r in runs]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in [head, *rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--seconds", type=float, default=1.0, help="each result's sleep")
    p.add_argument("--results", type=int, default=3, help="results of a trial ASHA never stops (= max epochs)")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA's (grace period 1)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs Ray has (bare ways); ours takes the machine's")
    p.add_argument("--checkpoint-s", type=float, help="ours: TUNE_GLOBAL_CHECKPOINT_S (default: the sweep's own)")
    p.add_argument("--checkpoint-kb", type=int, default=0, help="a checkpoint of this size with each result")
    p.add_argument("--kill-after", type=float, help="ours: SIGKILL the sweep (driver and its Ray) after this many "
                   "seconds, then --resume it: the resumed run's row is 'ours resumed'")
    p.add_argument("--quick", action="store_true", help="N = 6, 0.05 s results: proves it runs")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    if args.quick:
        args.trials, args.seconds = [6], 0.05
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1"}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-bookkeeping-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "segcore.synthetic", str(data), "--num", "16", "--min-size", "40",
                        "--max-size", "48"], cwd=REPO, check=True, capture_output=True, env=env)
        for n in args.trials:
            for way in args.ways:
                run_dir = tmp / f"{way}-{n}"
                run_dir.mkdir()
                cmd = [sys.executable, "-m", "bench.bookkeeping", "--one", way, str(n), "--tmp", str(run_dir),
                       "--data", str(data), "--seconds", str(args.seconds), "--results", str(args.results),
                       "--reduction-factor", str(args.reduction_factor), "--cpus", str(args.cpus),
                       "--checkpoint-kb", str(args.checkpoint_kb)]
                if args.checkpoint_s is not None:
                    cmd += ["--checkpoint-s", str(args.checkpoint_s)]
                print(f"N={n} {way} ...", flush=True)
                if way == "ours" and args.kill_after:
                    killed = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              env=env, start_new_session=True)
                    time.sleep(args.kill_after)
                    os.killpg(killed.pid, signal.SIGKILL)  # the driver and the Ray it started
                    killed.wait()
                    print(f"N={n} ours killed after {args.kill_after:g} s; resuming ...", flush=True)
                    cmd, way = cmd + ["--resume"], "ours resumed"
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
                lines = [x for x in proc.stdout.splitlines() if x.startswith("FIGURES ")]
                if proc.returncode != 0 or not lines:
                    sys.exit(f"N={n} {way} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
                runs.append({**json.loads(lines[-1][len("FIGURES "):]), "way": way})
                shutil.rmtree(run_dir, ignore_errors=True)
                print(table(runs[-1:]).splitlines()[-1], flush=True)
    for r in runs:
        bare = next((b for b in runs if b["n"] == r["n"] and b["way"] == "bare"), None)
        r["over_bare"] = round(r["wall_over_min"] / bare["wall_over_min"], 3) if bare and r["wall_over_min"] else None
    print("\n" + table(runs))
    for r in runs:
        if r["way"] == "ours" and r["over_bare"]:
            print(f"N={r['n']}: ours wall/min {r['wall_over_min']:.3f}, {r['over_bare']:.3f} x bare's")
    for r in runs:
        if r["way"] == "ours resumed":
            print(f"N={r['n']} resumed after a kill: checks {r['prepare_s']:.1f} s, saved state put back "
                  f"{r['restore_s']:.1f} s, {r['trials_csv_rows']} trials in trials.csv, "
                  f"{r['epochs_repeated']} epoch rows repeated")
    by_n = {r["n"]: r for r in runs if r["way"] == "ours"}
    if len(by_n) > 1:
        small, large = by_n[min(by_n)], by_n[max(by_n)]
        for key in ("commit_ms", "commit_kb", "peak_mb", "snapshot_ms"):
            if small.get(key):
                print(f"ours {key} at N={large['n']} / N={small['n']} = {large[key] / small[key]:.2f}")
    machine = {"cores": os.cpu_count(), "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                                                 capture_output=True, text=True).stdout.strip()}
    if args.json:
        args.json.write_text(json.dumps({"config": {**vars(args), "json": str(args.json)}, "machine": machine,
                                         "runs": runs}, indent=2, default=str))


if __name__ == "__main__":
    main()
