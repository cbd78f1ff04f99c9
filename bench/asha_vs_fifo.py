"""Does ASHA pay? The same sampled configs (Ray's random generator, same seed) swept under ASHA and under FIFO.

Prints the epochs each consumed (ASHA / FIFO; target <= 0.35) and the difference in best val/iou (target: within
0.01). Both sweeps run through tune_main.py on the same generated dataset, one after the other.

The trials fine-tune a pretrained encoder, as sweeps on the real data do with ImageNet weights. Those cannot be
downloaded here, so the benchmark first pretrains a resnet18 encoder on a second generated dataset (another seed:
no image of the sweep's data is seen) with segcore.train and passes the state dict as encoder_weights. From
scratch, the generated data's early epochs say little about the final ranking (see BENCHMARKS.md).

    python bench/asha_vs_fifo.py [--num-samples 16] [--max-epochs 27] [--grace-period 1] [--reduction-factor 3]
                                 [--arch fpn|unet|any]
    python bench/asha_vs_fifo.py --quick      # 4 samples x 2 epochs, a small encoder, no pretraining: proves it runs
    python bench/asha_vs_fifo.py --address HOST:PORT ...   # both sweeps on a running Ray (a cluster)
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


def run(cmd: list[str], what: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def pretrain(tmp: Path, args) -> Path:
    """A resnet18 encoder trained on generated data of another seed: the stand-in for ImageNet weights."""
    data, out = tmp / "pretrain-data", tmp / "pretrain"
    run(["-m", "segcore.synthetic", str(data), "--num", str(args.pretrain_images), "--seed", "1",
         "--min-size", "64", "--max-size", "128"], "generating the pretraining data")
    run(["-m", "segcore.train", "--data_dir", str(data), "--arch", "fpn", "--encoder", "resnet18",
         "--encoder_weights", "none", "--image_size", str(args.image_size), "--epochs", str(args.pretrain_epochs),
         "--lr", "1e-3", "--batch_size", "16", "--output_dir", str(out)], "pretraining")
    weights = tmp / "resnet18-pretrained.pth"
    code = ("import sys, torch; from segcore.model import SegmentationModule as M; "
            "m = M.from_checkpoint(sys.argv[1]); torch.save(m.net.encoder.state_dict(), sys.argv[2])")
    run(["-c", code, str(out / "checkpoints" / "best.ckpt"), str(weights)], "saving the encoder")
    return weights


def sweep(scheduler: str, args, data: Path, storage: Path, weights: str) -> tuple[list[dict], float]:
    cmd = ["tune_main.py", "--data-dir", str(data), "--space", "smoke", "--search", "random", "--seed",
           str(args.seed), "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs),
           "--scheduler", scheduler, "--grace-period", str(args.grace_period),
           "--reduction-factor", str(args.reduction_factor), "--storage-path", str(storage), "--name", scheduler,
           "--no-final-test",  # compared: epochs and the best validation IoU; the test split is no part of it
           "--set", f"image_size={args.image_size}", "--set", "encoder=resnet18",
           "--set", f"encoder_weights={weights}", "--set", f"val_fraction={args.val_fraction}",
           *[x for kv in args.set for x in ("--set", kv)], *(["--address", args.address] if args.address else [])]
    wall = run(cmd, f"the {scheduler} sweep")
    with open(storage / scheduler / "trials.csv") as f:
        return list(csv.DictReader(f)), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=27)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-images", type=int, default=600, help="generated images (half for trainval)")
    # A large validation split: "best val/iou" is a maximum over every epoch evaluated, and FIFO evaluates more of
    # them; with a few validation images that maximum is mostly noise, which favours FIFO by luck alone.
    p.add_argument("--val-fraction", type=float, default=0.6)
    p.add_argument("--pretrain-images", type=int, default=400)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="fpn",
                   help="the smoke space's architecture: fpn, unet, or any (both: U-Nets start slower, see "
                        "BENCHMARKS.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="also fix this config field in both sweeps (repeatable)")
    p.add_argument("--address", help="both sweeps join this running Ray (tune_main.py --address; its token, if any, "
                                     "from this environment) instead of each starting its own")
    p.add_argument("--json")
    p.add_argument("--keep", type=Path, help="work in this (new) folder and keep it: data, weights, both sweeps")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.arch != "any":
        args.set = [f"arch={args.arch}", *args.set]
    if args.quick:
        args.num_samples, args.max_epochs, args.grace_period, args.reduction_factor = 4, 2, 1, 2
        args.num_images, args.pretrain_epochs, args.val_fraction = 48, 0, 0.2
        # the suite's small encoder (no pretraining to match): resnet18's 157 MB checkpoints cost more than the steps
        args.set = ["encoder=tu-mobilenetv3_small_050", *args.set]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
    with tempfile.TemporaryDirectory(prefix="asha-vs-fifo-") as tmp:
        tmp = Path(tmp) if args.keep is None else args.keep
        data, storage = tmp / "data", tmp / "results"
        run(["-m", "segcore.synthetic", str(data), "--num", str(args.num_images), "--seed", "0",
             "--min-size", "64", "--max-size", "128"], "generating the sweep data")
        weights = str(pretrain(tmp, args)) if args.pretrain_epochs else "none"
        runs = {s: sweep(s, args, data, storage, weights) for s in ("asha", "fifo")}
    out = {k: getattr(args, k) for k in ("num_samples", "max_epochs", "grace_period", "reduction_factor",
                                         "image_size", "num_images", "val_fraction", "pretrain_images",
                                         "pretrain_epochs", "set")}
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
    print(f"{args.num_samples} configs (same in both: {out['same_configs']}), up to {args.max_epochs} epochs each; "
          f"ASHA grace {args.grace_period}, reduction factor {args.reduction_factor}; encoder weights: "
          f"{'pretrained on generated data' if args.pretrain_epochs else 'none'}"
          + (f"; fixed: {', '.join(args.set)}" if args.set else ""))
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
