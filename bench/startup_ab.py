"""A sweep's fixed costs, this checkout against another commit, alternated in one run (issue #14, item 2): start-up
(launch to the first trial's first step, its set-up included), tail (the last trial's end to exit) and wall time of
the same small sweep (issue #14's grid: 4 U-Net trials at 64 px, FIFO, 2 at once).

The baseline commit is checked out into a temporary git worktree (removed afterwards) and run with this checkout's
Python environment. One warm-up round of each way (not counted) fills the caches both read, as a user's second sweep
finds them: the decoded data, and segcore.cache's library facts where the code has them. The ways alternate, so a
slow minute of the machine falls on both; figures are medians over the rounds.

    python -m bench.startup_ab --baseline abecf01 [--rounds 4] [--epochs 3] [--json out.json]
    python -m bench.startup_ab --baseline HEAD --quick    # one round, 1 epoch, no warm-up: proves it runs
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.sweep_efficiency import REPO, space_file, trial_spans

FIGURES = ("wall_s", "startup_s", "tail_s")


def one_sweep(repo: Path, tmp: Path, space: Path, epochs: int) -> dict:
    """tune_main.py of ``repo`` on the grid; its wall time, start-up and tail."""
    results = tmp / "results"
    shutil.rmtree(results, ignore_errors=True)
    cmd = [sys.executable, str(repo / "tune_main.py"), "--data-dir", str(tmp / "data"), "--space", str(space),
           "--search", "random", "--scheduler", "fifo", "--num-samples", "1", "--max-epochs", str(epochs),
           "--storage-path", str(results), "--name", "grid", "--checkpoint-every", "auto", "--no-final-test"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        sys.exit(f"sweep of {repo} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    spans = trial_spans(results / "grid")
    return {"wall_s": round(wall, 2), "startup_s": round(min(s for s, _ in spans) - started, 2),
            "tail_s": round(started + wall - max(e for _, e in spans), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="the commit to compare this checkout with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64, help="256: the decoding Ray's start now overlaps is longer")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.epochs = 1, 1
    commit = subprocess.run(["git", "rev-parse", "--short", a.baseline], cwd=REPO, capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"--baseline {a.baseline}: not a commit of {REPO}")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory(prefix="startup-ab-") as tmp:
        tmp = Path(tmp)
        os.environ["SEGCORE_CACHE_DIR"] = str(tmp / "cache")  # both ways read the same, fresh at first
        from segcore.synthetic import generate

        generate(tmp / "data", num=96, seed=0, min_size=64, max_size=128)
        space = space_file(tmp, "unet-lr-bs", a.image_size)
        worktree = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), a.baseline], cwd=REPO, check=True)
        ways = {"this": REPO, "baseline": worktree}
        runs: list[dict] = []
        try:
            for round_ in range(-1 if not a.quick else 0, a.rounds):  # round -1: the warm-up, not counted
                for way, repo in ways.items():
                    run = {"way": way, "round": round_, **one_sweep(repo, tmp, space, a.epochs)}
                    runs.append(run)
                    print(f"{'warm-up ' if round_ < 0 else ''}{way:8s}: wall {run['wall_s']:.1f}s, start-up "
                          f"{run['startup_s']:.1f}s, tail {run['tail_s']:.1f}s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    median = {way: {k: round(statistics.median(r[k] for r in runs if r["way"] == way and r["round"] >= 0), 2)
                    for k in FIGURES} for way in ways}
    ratios = {k: round(median["baseline"][k] / median["this"][k], 2) if median["this"][k] else None
              for k in FIGURES}
    print(f"medians over {a.rounds} round(s), {a.epochs} epoch(s) per trial at {a.image_size} px; baseline "
          f"{commit.stdout.strip()}:")
    for k in FIGURES:
        print(f"  {k[:-2]:8s} this {median['this'][k]:.1f}s, baseline {median['baseline'][k]:.1f}s -> baseline / "
              f"this {ratios[k]}")
    if a.json:
        Path(a.json).write_text(json.dumps({"baseline": commit.stdout.strip(), "rounds": a.rounds, "epochs": a.epochs,
                                            "image_size": a.image_size,
                                            "runs": runs, "median": median, "baseline_over_this": ratios}, indent=1))


if __name__ == "__main__":
    main()
