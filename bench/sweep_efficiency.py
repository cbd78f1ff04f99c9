"""How close a sweep gets to the compute floor: a fixed grid (4 configs x 3 epochs, FIFO) through tune_main.py,
against the same configs' train and validation steps run in one bare process on preloaded tensors.

floor = (sum over configs of the bare steps' time, one thread each) / cores. wall = tune_main.py's whole run (Ray
start, imports, data preparation, bookkeeping included). Prints wall / floor (target <= 1.3).

    python bench/sweep_efficiency.py [--epochs 3] [--image-size 64] [--json out.json]
    python bench/sweep_efficiency.py --quick    # 1 epoch: proves it runs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = {"arch": ["fpn", "unet"], "lr": [1.0e-3, 3.0e-3]}  # 4 configs
FIXED = {"encoder": "resnet18", "encoder_weights": "none", "batch_size": 16, "scheduler": "none",
         "optimizer": "adam", "loss": "dice"}


def space_file(folder: Path, image_size: int) -> Path:
    import yaml

    body = {**FIXED, "image_size": image_size, **{k: {"grid": v} for k, v in GRID.items()}}
    path = folder / "grid.yaml"
    path.write_text("# benchmark grid\n" + yaml.safe_dump(body))
    return path


def bare_seconds(data: Path, image_size: int, epochs: int) -> float:
    """Train + validation steps of every grid config, one after another, one thread, tensors preloaded."""
    import itertools

    import torch

    from segcore.config import TrainConfig
    from segcore.data import PetsDataModule
    from segcore.metrics import BinarySegMetrics
    from segcore.model import SegmentationModule
    from segcore.optim import build_optimizer

    torch.set_num_threads(1)
    total = 0.0
    for arch, lr in itertools.product(GRID["arch"], GRID["lr"]):
        cfg = TrainConfig(**FIXED, arch=arch, lr=lr, image_size=image_size, data_dir=str(data), epochs=epochs,
                          num_workers=0)
        dm = PetsDataModule(cfg)
        dm.setup("fit")
        train = [dm.train_set[i] for i in range(len(dm.train_set))]
        val = [dm.val_set[i] for i in range(len(dm.val_set))]
        stack = lambda items, k: torch.stack([it[k] for it in items])  # noqa: E731
        xs, ms = stack(train, "image"), stack(train, "mask")
        vx, vm = stack(val, "image"), stack(val, "mask")
        module = SegmentationModule(cfg.to_dict())
        opt = build_optimizer(cfg, [p for p in module.parameters() if p.requires_grad])
        metric = BinarySegMetrics()
        bs = cfg.batch_size
        started = time.perf_counter()
        for _ in range(epochs):
            module.train()
            for i in range(0, len(xs) - bs + 1, bs):  # drop_last, as the loader does
                loss = module.loss_fn(module(xs[i:i + bs]), ms[i:i + bs].float())
                opt.zero_grad()
                loss.backward()
                opt.step()
            module.eval()
            with torch.no_grad():
                for i in range(0, len(vx), bs):
                    metric.update(module(vx[i:i + bs]), vm[i:i + bs])
            metric.compute()
            metric.reset()
        total += time.perf_counter() - started
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.epochs = 1
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory(prefix="sweep-efficiency-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("SEGCORE_CACHE_DIR", str(tmp / "cache"))
        from segcore.synthetic import generate

        generate(tmp / "data", num=96, seed=0, min_size=64, max_size=128)  # the sweep's --synthetic stand-in
        cmd = [sys.executable, str(REPO / "tune_main.py"), "--data-dir", str(tmp / "data"), "--space",
               str(space_file(tmp, args.image_size)), "--search", "random", "--scheduler", "fifo",
               "--num-samples", "1", "--max-epochs", str(args.epochs), "--storage-path", str(tmp / "results"),
               "--name", "grid"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        bare = bare_seconds(tmp / "data", args.image_size, args.epochs)
    floor = bare / cores
    out = {"configs": 4, "epochs": args.epochs, "cores": cores, "wall_s": round(wall, 2),
           "bare_total_s": round(bare, 2), "floor_s": round(floor, 2), "wall_over_floor": round(wall / floor, 2)}
    print(f"4 configs x {args.epochs} epochs, {cores} cores: sweep wall {wall:.1f}s (Ray start included); "
          f"bare steps {bare:.1f}s total -> floor {floor:.1f}s")
    print(f"wall / floor = {wall / floor:.2f} (target <= 1.3)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
