"""How long the first trials take to start, and whether Ray can start them earlier (issue #14, item 2: start-up).

A sweep's first trials start in new worker processes, which then import torch, Lightning, SMP and Ray Tune
(``segtune.trial``): 4-5 s of start-up that nothing overlaps. Two ways are compared, each in a fresh process with a
fresh local Ray, with the driver busy for ``--driver-work`` seconds between ``ray.init`` and ``Tuner.fit`` (what
the real driver spends on its checks and its data):
- plain: the job's runtime_env as ``segtune.cluster.connect`` sets it;
- hook: the same plus a ``worker_process_setup_hook`` that imports ``segtune.trial``. Were Ray to start the trial
  workers during the driver's work (it prestarts workers for jobs), the imports would be done before Tune asks;
- warm: plain, and right after ``ray.init`` one task per trial that imports ``segtune.trial``, with the runtime_env
  Tune gives its trial actors (so the same worker pool key). Were Ray to hand those warmed workers to the trial
  actors, the imports would be done while the driver works. ``reused`` says whether any trial ran in one of them.

Measured per trial: from ``Tuner.fit`` to the trainable's first line (process start, plus the hook if any), and to
the end of its imports. The ratio plain / hook of the time to the first wave's imports is what a hook would save.

    python -m bench.trial_start [--trials 2] [--driver-work 6] [--json out.json]
    python -m bench.trial_start --quick      # one round, one trial, 1 s of driver work (the suite's check)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WAYS = ("plain", "hook", "warm")


def preload() -> None:
    """The worker setup hook: what a trial imports."""
    import segtune.trial  # noqa: F401


def trainable(config: dict) -> None:
    from ray import tune

    entered = time.time()
    already = "segtune.trial" in sys.modules
    import segtune.trial  # noqa: F401
    tune.report({"entered": entered, "imported": time.time(), "preloaded": already, "pid": os.getpid()})


def warm() -> int:
    """A task that imports what a trial imports, in a worker Tune's trial actors could use."""
    import segtune.trial  # noqa: F401
    return os.getpid()


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
    warmed = []
    if way == "warm":
        # Tune's own choice of a trial actor's runtime_env (private, read only to match it exactly)
        from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE
        env = dict(DEFAULT_ENV_VARS, **{k: os.environ[k] for k in ENV_VARS_TO_PROPAGATE if k in os.environ})
        warmed = [ray.remote(runtime_env={"env_vars": env})(warm).remote() for _ in range(trials)]
    time.sleep(driver_work)
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(trials)))},
                           tune_config=tune.TuneConfig(max_concurrent_trials=trials),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
        fit = time.time()
        results = tuner.fit()
    warm_pids = ray.get(warmed)
    ray.shutdown()
    rows = [r.metrics for r in results]
    return {"way": way, "to_entered": max(r["entered"] - fit for r in rows),
            "to_imported": max(r["imported"] - fit for r in rows),
            "preloaded": [bool(r["preloaded"]) for r in rows], "pids": [r["pid"] for r in rows],
            "warm_pids": warm_pids, "reused": bool(set(warm_pids) & {r["pid"] for r in rows})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--driver-work", type=float, default=6.0, help="seconds between ray.init and Tuner.fit")
    p.add_argument("--rounds", type=int, default=2, help="plain, hook, warm, plain, hook, warm, ...")
    p.add_argument("--quick", action="store_true", help="one round, one trial, 1 s of driver work")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one way in this process
    a = p.parse_args()
    if a.quick:
        a.rounds, a.trials, a.driver_work = 1, 1, 1.0
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1
    if a.one:
        print(json.dumps(one_way(a.one, a.trials, a.driver_work)))
        return
    runs = []
    for _ in range(a.rounds):
        for way in WAYS:
            out = subprocess.run([sys.executable, "-m", "bench.trial_start", "--one", way, "--trials", str(a.trials),
                                  "--driver-work", str(a.driver_work)], check=True, capture_output=True, text=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(run)
            warmed = f", a warmed worker reused: {run['reused']}" if way == "warm" else ""
            print(f"{way:5s}: trainable entered {run['to_entered']:.1f} s after Tuner.fit, imports done "
                  f"{run['to_imported']:.1f} s after (already imported: {run['preloaded']}{warmed})", flush=True)
    best = {w: min(r["to_imported"] for r in runs if r["way"] == w) for w in WAYS}
    ratios = {w: best["plain"] / best[w] for w in WAYS[1:]}
    print(f"first wave's imports done after Tuner.fit (best of {a.rounds}): "
          + ", ".join(f"{w} {best[w]:.1f} s" for w in WAYS) + " -> "
          + ", ".join(f"plain / {w} {r:.2f}" for w, r in ratios.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": runs, "best": best, "plain_over_hook": ratios["hook"],
                       "plain_over_warm": ratios["warm"], "trials": a.trials, "driver_work": a.driver_work}, f,
                      indent=1)


if __name__ == "__main__":
    main()
