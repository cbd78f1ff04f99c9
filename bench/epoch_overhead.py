"""What a trial's epoch costs beyond its steps: the bare train + validation steps against the trial's own loop.

One config, in this process, one thread, no Ray (what Ray adds is start-up and copying checkpoints, measured by
bench/sweep_efficiency.py). The same epochs run four ways, each timed from the fit's start to its end:
- bare: the steps alone on preloaded tensors (``sweep_efficiency.bare_steps``);
- loop: the trial's Lightning loop (``segtune.trial._fit``: data module, validation, metrics, the epoch's report
  with its metrics) writing no checkpoint;
- policy: the same with the checkpoint policy (``--checkpoint-every auto``) written by the trials' DirectCheckpointIO;
- policy, Lightning's IO: the same with Lightning's default checkpoint writer (serialise to memory, then copy).
Each ratio is over bare. Run twice in turns (bare, loop, policy, Lightning IO, bare, ...): an epoch is ~1 s at 64 px,
so single runs move by several percent.

    python -m bench.epoch_overhead [--arch unet] [--batch-size 8] [--image-size 64] [--epochs 8] [--json out.json]
    python -m bench.epoch_overhead --quick
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.sweep_efficiency import bare_steps


class _Assets:
    """The driver's assets, made here: the decoded split and no pretrained encoder."""

    def __init__(self, decoded):
        self.decoded = decoded

    def data_for(self, cfg):
        return self.decoded

    def encoder_for(self, cfg):
        return None


class _Checkpoint:
    """What Ray's Checkpoint is to the report callback here: the folder written (Ray would copy it; not timed)."""

    @classmethod
    def from_directory(cls, folder: str) -> str:
        return folder


def trial_loop(cfg, decoded, policy: str | None, direct_io: bool = True) -> tuple[float, int]:
    """Seconds of the trial's fit, and the epochs reported. ``policy`` None: no checkpoint at all."""
    from segtune.checkpoint_policy import CheckpointPolicy
    from segtune.trial import DirectCheckpointIO, ReportEachEpoch, _fit

    reports = []
    report = ReportEachEpoch(lambda metrics, checkpoint=None: reports.append(metrics), _Checkpoint, {},
                             CheckpointPolicy.parse(policy or "auto"))
    if policy is None:  # the report alone: never due, never improved
        report.clock.full_due = lambda epoch, size: False
        report.best = float("inf")
    plugins = {"plugins": [DirectCheckpointIO()]} if direct_io else {}
    started = time.perf_counter()
    _fit(cfg, _Assets(decoded), report, None, **plugins)
    return time.perf_counter() - started, len(reports)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="unet")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--num-images", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.num_images, args.rounds = 2, 48, 1
    import torch

    from segcore.build import quiet_lightning
    from segcore.config import TrainConfig
    from segcore.data.datamodule import PetsDataModule
    from segcore.synthetic import generate

    quiet_lightning()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="epoch-overhead-") as tmp:
        os.environ.setdefault("SEGCORE_CACHE_DIR", str(Path(tmp) / "cache"))
        generate(Path(tmp) / "data", num=args.num_images, seed=0, min_size=64, max_size=128)
        cfg = TrainConfig(arch=args.arch, encoder="resnet18", encoder_weights="none", batch_size=args.batch_size,
                          lr=1e-3, weight_decay=0.0, optimizer="adam", scheduler="none", loss="dice",
                          image_size=args.image_size, data_dir=str(Path(tmp) / "data"), epochs=args.epochs,
                          num_workers=0, accelerator="cpu", devices="1")
        datamodule = PetsDataModule(cfg)
        datamodule.setup("fit")
        decoded = dict(datamodule.decoded)
        runs: dict[str, list[float]] = {"bare": [], "loop": [], "policy": [], "policy_lightning_io": []}
        epochs_reported = set()
        for _ in range(args.rounds):
            runs["bare"].append(bare_steps(cfg))
            for name, policy, direct in (("loop", None, True), ("policy", "auto", True),
                                         ("policy_lightning_io", "auto", False)):
                seconds, reported = trial_loop(cfg, decoded, policy, direct)
                runs[name].append(seconds)
                epochs_reported.add(reported)
    bare = min(runs["bare"])
    out = {"arch": args.arch, "batch_size": args.batch_size, "image_size": args.image_size, "epochs": args.epochs,
           "epochs_reported": sorted(epochs_reported),
           "seconds": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
           "over_bare": {k: round(min(vs) / bare, 3) for k, vs in runs.items()}}
    print(f"{args.arch} resnet18, batch {args.batch_size}, {args.image_size} px, {args.epochs} epochs, best of "
          f"{args.rounds}: bare steps {bare:.2f}s ({bare / args.epochs:.2f}s an epoch)")
    for name in ("loop", "policy", "policy_lightning_io"):
        print(f"  {name:20s} {min(runs[name]):6.2f}s = {out['over_bare'][name]:.3f} x bare")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
