"""Ray's local start with and without the worker processes it prestarts for the first driver (issue #14, item 2).

Ray prestarts one Python worker per CPU when the first driver connects. They are started with no runtime_env, and
everything a sweep runs has one (Tune gives each trial actor its own; the driver's job has the trials' environment),
so none of them is ever used: each only takes a core for a second as the sweep starts. Each round starts a fresh
process per way: ``ray.init`` as segtune.cluster calls it, then two actors with a runtime_env as Tune creates two
trials, ready when their processes answer. The ways alternate; figures are medians.

    python -m bench.ray_start [--rounds 5] [--json out.json]
    python -m bench.ray_start --quick        # one round: proves it runs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# One way in a fresh process: prints {"init_s", "actors_s"} (seconds from before ray.init).
PROBE = """
import json, logging, sys, time
import ray

prestart = sys.argv[1] == "1"
started = time.perf_counter()
ray.init(address="local", runtime_env={"env_vars": {"SEGSWEEP_WORKER": "1"}}, logging_level=logging.WARNING,
         include_dashboard=False, _system_config={"prestart_worker_first_driver": prestart})
init = time.perf_counter() - started


class Trial:
    def ready(self):
        return True


actor = ray.remote(runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}})(Trial)  # as ray.tune's class_cache does
ray.get([actor.options(num_cpus=1).remote().ready.remote() for _ in range(2)])
print(json.dumps({"init_s": init, "actors_s": time.perf_counter() - started}))
ray.shutdown()
"""
WAYS = {"prestarted": "1", "none prestarted": "0"}


def one(flag: str) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run([sys.executable, "-c", PROBE, flag], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        sys.exit(f"probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true", help="one round: proves it runs")
    a = p.parse_args()
    if a.quick:
        a.rounds = 1
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for i in range(a.rounds):
        for way, flag in WAYS.items():
            runs[way].append(one(flag))
            print(f"round {i + 1} {way:16s}: ray.init {runs[way][-1]['init_s']:.2f}s, two trial actors ready "
                  f"{runs[way][-1]['actors_s']:.2f}s", flush=True)
    med = {way: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("init_s", "actors_s")}
           for way, rs in runs.items()}
    before, after = med["prestarted"], med["none prestarted"]
    print(f"medians over {a.rounds} rounds: ray.init {before['init_s']}s -> {after['init_s']}s "
          f"(prestarted / none {before['init_s'] / after['init_s']:.2f}); two trial actors ready "
          f"{before['actors_s']}s -> {after['actors_s']}s ({before['actors_s'] / after['actors_s']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": a.rounds, "medians": med, "runs": runs,
                       "prestarted_over_none": {k: round(before[k] / after[k], 2) for k in before}}, f, indent=1)


if __name__ == "__main__":
    main()
