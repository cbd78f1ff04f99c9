"""How close a sweep gets to the compute floor: a fixed grid (4 configs x 3 epochs, FIFO) through tune_main.py,
against the same configs' train and validation steps run in one bare process on preloaded tensors.

floor = (sum over configs of the bare steps' time, one thread each) / cores. wall = tune_main.py's whole run (Ray
start, imports, data preparation, bookkeeping and the report included; the final test on the test split is not
sweep overhead but work of its own, so it is skipped). Prints wall / floor (target <= 1.3), and where the rest
went: start-up (launch to the first trial's first step, its set-up included), the trials' own time beyond the floor,
and the tail (last trial's end to exit), read from the trials' result.json timestamps. The floor is measured twice,
each in a fresh process: with glibc's allocator as it comes (issue #14's definition) and with the settings the
trials' processes run with (segtune.cluster.KEEP_FREED_MEMORY), which make the steps themselves faster.

The same grid also goes through bench/plain_sweep.py, the sweep people write by hand (per-item decoding, SMP's
notebook module, Ray's report-and-checkpoint callback, the full state every epoch): "the sweep is Nx faster".

The default image size is the project's default, 256 px: the fixed costs (Ray, imports, actors; ~10 s here) are the
same at any size, so at 64 px they weigh as much as the steps.

    python bench/sweep_efficiency.py [--epochs 3] [--image-size 256] [--num-images 192] [--json out.json]
                                     [--grid fpn-lr-wd|unet-lr-bs] [--no-plain]
                                     [--checkpoint-every 1 auto]   # one sweep per checkpoint policy
    python bench/sweep_efficiency.py --grid unet-lr-bs --image-size 64 --epochs 8 --num-images 96   # issue #14's
    python bench/sweep_efficiency.py --quick    # 64 px, 1 epoch: proves it runs
    python bench/sweep_efficiency.py ... --ray both   # each sweep also joining a Ray started before it

``--ray running``: on a cluster Ray is up before the sweep (`ray start`, README.md), so its start is not part of a
sweep's start-up there. Before each sweep the bench starts a head on 127.0.0.1 (`ray start --head --block`, token
authentication on, in a session of its own that it ends after the sweep), and the sweep joins it with `--address`.
``--ray both``: each sweep run both ways, one after the other (local first), and the walls' ratio printed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if not __package__:  # run as a file (python bench/sweep_efficiency.py): bench.* is imported from the checkout
    sys.path.insert(0, str(REPO))

from bench.ray_head import Head, ray_head  # noqa: E402
from segtune import naming  # noqa: E402
from segtune.cluster import ALLOCATOR_ENV, KEEP_FREED_MEMORY  # noqa: E402

RUNNING = "@running-ray"  # the label of a sweep that joined a Ray head started before it (--ray)

# Two grids of 4 configs, each of (nearly) equal cost: the benchmark measures overhead, not how well 2 trials of
# unequal length pack on 2 cores (with fpn + unet in one grid, one core idles for the difference at the end).
# "fpn-lr-wd": the 256 px figures since issue #5. "unet-lr-bs": issue #14's measurement (U-Net, lr x batch size).
# (Tune orders a grid by key, batch_size fastest: the batch-8 and batch-16 trials start side by side, and each
# core then takes one of each, so both cores end together and the packing costs nothing.)
COMMON = {"encoder": "resnet18", "encoder_weights": "none", "scheduler": "none", "optimizer": "adam", "loss": "dice"}
GRIDS = {
    "fpn-lr-wd": ({**COMMON, "arch": "fpn", "batch_size": 16},
                  {"lr": [1.0e-3, 3.0e-3], "weight_decay": [0.0, 1.0e-4]}),
    "unet-lr-bs": ({**COMMON, "arch": "unet", "weight_decay": 0.0},
                   {"lr": [1.0e-3, 3.0e-3], "batch_size": [8, 16]}),
}


def space_file(folder: Path, grid: str, image_size: int) -> Path:
    import yaml

    fixed, searched = GRIDS[grid]
    body = {**fixed, "image_size": image_size, **{k: {"grid": v} for k, v in searched.items()}}
    path = folder / "grid.yaml"
    path.write_text("# benchmark grid\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def grid_configs(data: Path, grid: str, image_size: int, epochs: int) -> list:
    import itertools

    from segcore.config import TrainConfig

    fixed, searched = GRIDS[grid]
    return [TrainConfig(**fixed, **dict(zip(searched, values)), image_size=image_size, data_dir=str(data),
                        epochs=epochs, num_workers=0) for values in itertools.product(*searched.values())]


def bare_steps(cfg) -> float:
    """Seconds of ``cfg``'s train + validation steps over its epochs, tensors preloaded, nothing else."""
    import torch

    from segcore.data.datamodule import PetsDataModule
    from segcore.metrics import BinarySegMetrics
    from segcore.model import SegmentationModule
    from segcore.optim import build_optimizer

    dm = PetsDataModule(cfg)
    dm.setup("fit")
    train = [dm.train_set[i] for i in range(len(dm.train_set))]
    val = [dm.val_set[i] for i in range(len(dm.val_set))]
    stack = lambda items, k: torch.stack([it[k] for it in items])  # noqa: E731
    xs, ms = stack(train, "image"), stack(train, "mask")
    vx, vm = stack(val, "image"), stack(val, "mask")
    module = SegmentationModule(cfg)
    opt = build_optimizer(cfg, [p for p in module.parameters() if p.requires_grad])
    metric = BinarySegMetrics()
    bs = cfg.batch_size
    started = time.perf_counter()
    for _ in range(cfg.epochs):
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
    return time.perf_counter() - started


def bare_seconds(data: Path, grid: str, image_size: int, epochs: int) -> float:
    """Train + validation steps of every grid config, one after another, one thread, tensors preloaded."""
    import torch

    torch.set_num_threads(1)
    return sum(bare_steps(cfg) for cfg in grid_configs(data, grid, image_size, epochs))


def bare_seconds_in_process(data: Path, grid: str, image_size: int, epochs: int, allocator: str | None) -> float:
    """``bare_seconds`` in a fresh process whose glibc allocator has the settings ``allocator`` (GLIBC_TUNABLES; None:
    glibc's defaults)."""
    env = {k: v for k, v in os.environ.items() if k != ALLOCATOR_ENV}
    if allocator is not None:
        env[ALLOCATOR_ENV] = allocator
    code = ("import sys; from pathlib import Path; from bench.sweep_efficiency import bare_seconds; "
            "print(bare_seconds(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))")
    proc = subprocess.run([sys.executable, "-c", code, str(data), grid, str(image_size), str(epochs)], cwd=REPO,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bare steps failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def trial_spans(experiment: Path) -> list[tuple[float, float]]:
    """(first step, end) wall-clock seconds of each trial. The end is its last result's timestamp; the first step is
    its first result's timestamp minus one epoch, the median of its other epochs (its first epoch's own duration also
    holds the trial's set-up: the process's imports of torch, Lightning and SMP, the model's build), so set-up counts
    as start-up wherever a version of the code does it."""
    import statistics

    spans = []
    for result in naming.result_files(experiment):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            epoch = statistics.median(r["time_this_iter_s"] for r in rows[1:]) if len(rows) > 1 else \
                rows[0]["time_this_iter_s"]
            spans.append((rows[0]["timestamp"] - min(epoch, rows[0]["time_this_iter_s"]), rows[-1]["timestamp"]))
    return spans


def checkpoint_bytes(experiment: Path) -> tuple[int, int]:
    """(bytes of checkpoints written, epochs run) over every trial, from the rows each epoch reported."""
    written = epochs = 0
    for result in naming.result_files(experiment):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        written += sum(r.get("checkpoint_bytes", 0) for r in rows)
        epochs += len(rows)
    return written, epochs


def sweep(tmp: Path, args, policy: str, name: str, head: Head | None = None) -> dict:
    """One run of tune_main.py on the grid with ``--checkpoint-every policy``; its figures (floor not yet known).
    ``head``: join that running Ray (``ray_head``)."""
    cmd = [sys.executable, str(REPO / "tune_main.py"), "--data-dir", str(tmp / "data"), "--space",
           str(space_file(tmp, args.grid, args.image_size)), "--search", "random", "--scheduler", "fifo",
           "--num-samples", "1", "--max-epochs", str(args.epochs), "--storage-path", str(tmp / "results"),
           "--name", name, "--checkpoint-every", policy,
           "--no-final-test"]  # test-set inference is work of its own, not in the floor
    env = None
    if head:
        cmd += ["--address", head.address]
        env = {**os.environ, **head.join_env}
    started, started_epoch = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    # Trial spans come from result.json's wall-clock timestamps: a VM whose clock was stepped during the sweep
    # (seen here: +21 s, a negative tail) would make start-up, tail and the trials' time say nothing.
    clock_moved = time.time() - started_epoch - wall
    if proc.returncode != 0:
        sys.exit(f"sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if head and not head.drivers():  # a head of its own: its only driver
        sys.exit(f"sweep {name} did not join the Ray head at {head.address} (no driver's log in {head.logs})")
    spans = trial_spans(tmp / "results" / name)
    written, epochs = checkpoint_bytes(tmp / "results" / name)
    if abs(clock_moved) > 1:
        print(f"warning: the wall clock moved {clock_moved:+.1f} s during sweep {name}: its start-up, tail and "
              "trials' time are not to be trusted", file=sys.stderr)
    return {"wall_s": round(wall, 2), "clock_moved_s": round(clock_moved, 2),
            "startup_s": round(min(s for s, _ in spans) - started_epoch, 2),
            "tail_s": round(started_epoch + wall - max(e for _, e in spans), 2),
            "trials_total_s": round(sum(e - s for s, e in spans), 2), "epochs": epochs,
            "checkpoint_mb_per_epoch": round(written / max(epochs, 1) / 2**20, 1)}


def plain(tmp: Path, args) -> dict:
    """The same grid through bench/plain_sweep.py: per-item decoding, the full state every epoch, Ray's callback."""
    cmd = [sys.executable, "-m", "bench.plain_sweep", "--data-dir", str(tmp / "data"), "--storage-path",
           str(tmp / "plain"), "--grid", args.grid, "--image-size", str(args.image_size), "--epochs", str(args.epochs)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"plain sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    done = re.search(r"plain sweep: (\d+) trials", proc.stdout)
    return {"wall_s": round(wall, 2), "trials": int(done[1]) if done else 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-images", type=int, default=192, help="generated images (half for trainval)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="fpn-lr-wd")
    p.add_argument("--checkpoint-every", nargs="+", default=["1", "auto"], metavar="POLICY",
                   help="sweep once with each --checkpoint-every (default: 1 = the full state every epoch, as "
                        "before the checkpoint policy, and auto)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain script (bench/plain_sweep.py)")
    p.add_argument("--ray", choices=["local", "running", "both"], default="local",
                   help="local: each sweep starts its own Ray, as tune_main.py does by default; running: each joins a "
                        "Ray head started before it on 127.0.0.1, as on a cluster; both: each sweep both ways")
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.image_size, args.num_images = 1, 64, 48
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory(prefix="sweep-efficiency-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("SEGCORE_CACHE_DIR", str(tmp / "cache"))
        from segcore.synthetic import generate

        generate(tmp / "data", num=args.num_images, seed=0, min_size=64, max_size=128)  # as --synthetic makes
        # a policy given twice is swept twice: the first sweep of a run finds every cache cold (decoded data,
        # segcore.cache's library facts), the next ones warm, as a user's second sweep does
        labels = [p if args.checkpoint_every[:i].count(p) == 0 else f"{p}#{args.checkpoint_every[:i].count(p) + 1}"
                  for i, p in enumerate(args.checkpoint_every)]
        runs = {}
        for label, policy in zip(labels, args.checkpoint_every):
            name = f"grid-{label.replace('#', '-')}"
            if args.ray in ("local", "both"):
                runs[label] = sweep(tmp, args, policy, name)
            if args.ray in ("running", "both"):
                with ray_head(cores, tmp / f"h{len(runs)}") as head:  # short: Ray's socket paths lie under it
                    runs[label + RUNNING] = sweep(tmp, args, policy, name + "-joined", head)
        baseline = None if args.no_plain else plain(tmp, args)
        # The floor as issue #14 defined it (glibc's allocator as it comes), and with the allocator the trials run
        # with (segtune.cluster.KEEP_FREED_MEMORY): the steps' own speed-up is the floor's too, not the sweep's.
        bare = bare_seconds_in_process(tmp / "data", args.grid, args.image_size, args.epochs, None)
        bare_kept = bare_seconds_in_process(tmp / "data", args.grid, args.image_size, args.epochs, KEEP_FREED_MEMORY)
    floor, floor_kept = bare / cores, bare_kept / cores
    out = {"grid": args.grid, "configs": 4, "epochs": args.epochs, "image_size": args.image_size,
           "ray": args.ray, "num_images": args.num_images, "cores": cores,
           "bare_total_s": round(bare, 2), "floor_s": round(floor, 2),
           "bare_total_trials_allocator_s": round(bare_kept, 2), "floor_trials_allocator_s": round(floor_kept, 2),
           "runs": runs, "plain": baseline}
    print(f"{args.grid}: 4 configs x {args.epochs} epochs at {args.image_size} px, {cores} cores: bare steps "
          f"{bare:.1f}s total -> floor {floor:.1f}s; with the trials' allocator {bare_kept:.1f}s -> floor "
          f"{floor_kept:.1f}s")
    for policy, run in runs.items():
        run["wall_over_floor"] = round(run["wall_s"] / floor, 2)
        run["wall_over_floor_trials_allocator"] = round(run["wall_s"] / floor_kept, 2)
        run["trials_over_bare"] = round(run["trials_total_s"] / bare, 3)
        run["trials_over_bare_trials_allocator"] = round(run["trials_total_s"] / bare_kept, 3)
        way = " (joined a running Ray)" if policy.endswith(RUNNING) else ""
        print(f"  --checkpoint-every {policy.removesuffix(RUNNING):5s}{way} wall {run['wall_s']:.1f}s = "
              f"{run['wall_over_floor']:.2f} x floor "
              f"({run['wall_over_floor_trials_allocator']:.2f} x the trials' allocator's); start-up "
              f"{run['startup_s']:.1f}s, tail {run['tail_s']:.1f}s, trials {run['trials_total_s']:.1f}s = "
              f"{run['trials_over_bare']:.2f} x bare ({run['trials_over_bare_trials_allocator']:.2f}); checkpoints "
              f"{run['checkpoint_mb_per_epoch']:.1f} MB per trial-epoch")
    last = runs[labels[-1]] if args.ray != "running" else runs[labels[-1] + RUNNING]
    print(f"wall / floor = {last['wall_over_floor']:.2f} (target <= 1.3), with the trials' allocator in the floor "
          f"{last['wall_over_floor_trials_allocator']:.2f}; --checkpoint-every {args.checkpoint_every[-1]}"
          f"{', joining a running Ray' if args.ray == 'running' else ''}")
    if args.ray == "both":
        joined = runs[labels[-1] + RUNNING]
        out["local_over_running"] = round(last["wall_s"] / joined["wall_s"], 2)
        print(f"joining a running Ray: wall / floor = {joined['wall_over_floor']:.2f}, start-up "
              f"{joined['startup_s']:.1f}s against {last['startup_s']:.1f}s; a sweep that starts its own Ray takes "
              f"{out['local_over_running']:.2f}x the wall of one that joins it")
    if baseline is not None:
        baseline["wall_over_floor"] = round(baseline["wall_s"] / floor, 2)
        baseline["plain_over_sweep"] = round(baseline["wall_s"] / last["wall_s"], 2)
        print(f"plain script (per-item decode, full checkpoint every epoch): wall {baseline['wall_s']:.1f}s = "
              f"{baseline['wall_over_floor']:.2f} x floor; the sweep is {baseline['plain_over_sweep']:.2f}x faster "
              f"(target >= 1.8 at 64 px)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
