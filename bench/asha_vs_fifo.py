"""Does ASHA pay? The same sampled configs (Ray's random generator, same seed) swept under ASHA and under FIFO.

Prints the epochs each consumed (ASHA / FIFO; target <= 0.35) and the difference in best val/iou (target: within
0.01). Both sweeps run through tune_main.py, on the same generated dataset, one after the other.

    python bench/asha_vs_fifo.py [--num-samples 16] [--max-epochs 6] [--seed 0] [--json out.json]
    python bench/asha_vs_fifo.py --quick      # 4 samples x 2 epochs: proves it runs
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRIC = "val/iou"  # segcore.metrics_names.SWEEP_METRIC, not imported to keep this script's start-up light


def sweep(scheduler: str, args, data: Path, storage: Path) -> tuple[list[dict], float]:
    cmd = [sys.executable, str(REPO / "tune_main.py"), "--synthetic", "--data-dir", str(data), "--space", "smoke",
           "--search", "random", "--seed", str(args.seed), "--num-samples", str(args.num_samples),
           "--max-epochs", str(args.max_epochs), "--scheduler", scheduler, "--grace-period", "1",
           "--reduction-factor", str(args.reduction_factor), "--storage-path", str(storage), "--name", scheduler,
           "--set", f"image_size={args.image_size}"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{scheduler} sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(storage / scheduler / "trials.csv") as f:
        return list(csv.DictReader(f)), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.num_samples, args.max_epochs, args.reduction_factor = 4, 2, 2
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
    with tempfile.TemporaryDirectory(prefix="asha-vs-fifo-") as tmp:
        data, storage = Path(tmp) / "data", Path(tmp) / "results"
        runs = {s: sweep(s, args, data, storage) for s in ("asha", "fifo")}
    out = {"num_samples": args.num_samples, "max_epochs": args.max_epochs}
    configs = {}
    for name, (rows, wall) in runs.items():
        params = sorted(tuple(sorted((k, v) for k, v in r.items() if k.startswith("param."))) for r in rows)
        configs[name] = params
        out[name] = {"epochs": sum(int(r["epochs"]) for r in rows), "wall_s": round(wall, 1),
                     "best": max(float(r[f"best_{METRIC}"] or "nan") for r in rows),
                     "stopped_early": sum(r["status"] == "stopped early" for r in rows)}
    out["same_configs"] = configs["asha"] == configs["fifo"]
    out["epoch_ratio"] = out["asha"]["epochs"] / out["fifo"]["epochs"]
    out["best_diff"] = out["asha"]["best"] - out["fifo"]["best"]
    print(f"{args.num_samples} configs (same in both: {out['same_configs']}), up to {args.max_epochs} epochs each")
    for name in ("asha", "fifo"):
        r = out[name]
        print(f"  {name:5s} epochs {r['epochs']:4d}  stopped early {r['stopped_early']:3d}  best {METRIC} "
              f"{r['best']:.4f}  wall {r['wall_s']:.0f}s")
    print(f"epochs ASHA / FIFO = {out['epoch_ratio']:.2f} (target <= 0.35); best {METRIC} ASHA - FIFO = "
          f"{out['best_diff']:+.4f} (target within 0.01)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
