"""How long the first trials take to start, and whether Ray can start them earlier (issue #14, item 2: start-up).

A sweep's first trials start in new worker processes, which then import torch, Lightning, SMP and Ray Tune
(``segtune.trial``): 4-5 s of start-up that nothing overlaps. Two ways are compared, each in a fresh process with a
fresh local Ray, with the driver busy for ``--driver-work`` seconds between ``ray.init`` and ``Tuner.fit`` (what
the real driver spends on its checks and its data):
- plain: the job's runtime_env as ``segtune.cluster.connect`` sets it;
- hook: the same plus a ``worker_process_setup_hook`` that imports ``segtune.trial``. Were Ray to start the trial
  workers during the driver's work (it prestarts workers for jobs), the imports would be done before Tune asks.

Measured per trial: from ``Tuner.fit`` to the trainable's first line (process start, plus the hook if any), and to
the end of its imports. The ratio plain / hook of the time to the first wave's imports is what a hook would save.

    python -m bench.trial_start [--trials 2] [--driver-work 6] [--json out.json]
    python -m bench.trial_start --quick      # one round, 1 s of driver work (the suite's check of this script)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def preload() -> None:
    """The worker setup hook: what a trial imports."""
    import segtune.trial  # noqa: F401


def trainable(config: dict) -> None:
    from ray import tune

    entered = time.time()
    already = "segtune.trial" in sys.modules
    import segtune.trial  # noqa: F401
    tune.report({"entered": entered, "imported": time.time(), "preloaded": already})


def one_way(way: str, trials: int, driver_work: float) -> dict:
    """In this process (a fresh one per way): start Ray, wait, run ``trials`` trials at once, return the times."""
    import logging
    import tempfile

    import ray
    from ray import tune

    from segtune.cluster import trial_env
    from segtune.driver import TRIAL_ENV

    runtime_env: dict = {"env_vars": trial_env(TRIAL_ENV)}
    if way == "hook":
        runtime_env["worker_process_setup_hook"] = preload  # by value: bench is not installed
    ray.init(address="local", num_cpus=trials, runtime_env=runtime_env, include_dashboard=False,
             logging_level=logging.WARNING)
    time.sleep(driver_work)
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(trials)))},
                           tune_config=tune.TuneConfig(max_concurrent_trials=trials),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
        fit = time.time()
        results = tuner.fit()
    ray.shutdown()
    rows = [r.metrics for r in results]
    return {"way": way, "to_entered": max(r["entered"] - fit for r in rows),
            "to_imported": max(r["imported"] - fit for r in rows),
            "preloaded": [bool(r["preloaded"]) for r in rows]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--driver-work", type=float, default=6.0, help="seconds between ray.init and Tuner.fit")
    p.add_argument("--rounds", type=int, default=2, help="plain, hook, plain, hook, ...")
    p.add_argument("--quick", action="store_true", help="one round, 1 s of driver work")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one way in this process
    a = p.parse_args()
    if a.quick:
        a.rounds, a.driver_work = 1, 1.0
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1
    if a.one:
        print(json.dumps(one_way(a.one, a.trials, a.driver_work)))
        return
    runs = []
    for _ in range(a.rounds):
        for way in ("plain", "hook"):
            out = subprocess.run([sys.executable, "-m", "bench.trial_start", "--one", way, "--trials", str(a.trials),
                                  "--driver-work", str(a.driver_work)], check=True, capture_output=True, text=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(f"{way:5s}: trainable entered {run['to_entered']:.1f} s after Tuner.fit, imports done "
                  f"{run['to_imported']:.1f} s after (already imported: {run['preloaded']})", flush=True)
    best = {w: min(r["to_imported"] for r in runs if r["way"] == w) for w in ("plain", "hook")}
    ratio = best["plain"] / best["hook"]
    print(f"first wave's imports done after Tuner.fit (best of {a.rounds}): plain {best['plain']:.1f} s, "
          f"hook {best['hook']:.1f} s -> plain / hook {ratio:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": runs, "best": best, "plain_over_hook": ratio, "trials": a.trials,
                       "driver_work": a.driver_work}, f, indent=1)


if __name__ == "__main__":
    main()
