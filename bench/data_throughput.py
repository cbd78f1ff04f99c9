"""Data-loading throughput: SMP's per-item OxfordPetDataset pattern vs segcore's decode-once, memory-mapped loader.

Both loaders serve the same files (SMP's "train" split: trainval.txt minus every 10th name), at the same output
size (uint8 image (3, S, S) + uint8 mask (1, S, S), random horizontal flip), in batches of 16 through a torch
DataLoader with the same worker count, shuffle and drop_last. Only the data path is timed (no model).

Convention: images / second / core = images served / wall seconds (time.perf_counter) / cores used, where cores
used = max(1, workers) for a loader and the decode thread count (segcore decodes on every available core) for the
cache build.
"Steady" leaves out the first epoch (worker start-up, cold page cache / mmap faults) when there is more than one;
"amortised" is every epoch, plus the one-time cache build for segcore.

    python bench/data_throughput.py [--num 400] [--image-size 256] [--epochs 4] [--workers 0 2] [--json out.json]
    python bench/data_throughput.py --quick    # 24 small images, 64 px, 1 epoch, 0 workers: proves it runs
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from segmentation_models_pytorch.datasets import OxfordPetDataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from segcore.config import TrainConfig  # noqa: E402
from segcore.data import PetsDataModule, PetsSegmentation  # noqa: E402
from segcore.data.decoded import available_cores  # noqa: E402
from segcore.synthetic import generate  # noqa: E402

BATCH = 16
CORES = len(os.sched_getaffinity(0))


class ResizeFlip:
    """The per-item work SMP's SimpleOxfordPetDataset does (PIL resize of image and mask), at our size, plus the
    flip and uint8 output segcore gives, so both loaders hand the model identical tensors."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: np.ndarray, mask: np.ndarray, trimap: np.ndarray) -> dict:
        s = (self.size, self.size)
        image = torch.from_numpy(np.array(Image.fromarray(image).resize(s, Image.BILINEAR))).permute(2, 0, 1)
        mask = torch.from_numpy(np.asarray(Image.fromarray(mask).resize(s, Image.NEAREST)).astype(np.uint8))[None]
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"image": image.contiguous(), "mask": mask.contiguous()}


def run_epochs(loader: DataLoader, epochs: int) -> list[tuple[int, float]]:
    """(images served, wall seconds) per epoch; a persistent-worker loader keeps its workers between epochs."""
    out = []
    for _ in range(epochs):
        n, start = 0, time.perf_counter()
        for batch in loader:
            n += batch["image"].shape[0]
        out.append((n, time.perf_counter() - start))
    return out


def rates(epochs: list[tuple[int, float]], cores: int, extra_seconds: float = 0.0) -> dict:
    steady = epochs[1:] or epochs  # one epoch only: it is both (and includes the warm-up)
    images, seconds = sum(n for n, _ in steady), sum(t for _, t in steady)
    all_images, all_seconds = sum(n for n, _ in epochs), sum(t for _, t in epochs) + extra_seconds
    return {"epoch_seconds": [round(t, 4) for _, t in epochs], "images_per_epoch": epochs[0][0],
            "steady_img_s_core": images / seconds / cores, "amortised_img_s_core": all_images / all_seconds / cores}


def per_item(root: Path, size: int, workers: int, epochs: int) -> dict:
    # SMP's dataset as its example uses it; root is the folder holding images/ and annotations/ (never downloaded)
    dataset = OxfordPetDataset(str(root), mode="train", transform=ResizeFlip(size))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=len(dataset) > BATCH)  # as segcore's loader
    return rates(run_epochs(loader, epochs), max(1, workers))


def segcore(root: Path, size: int, workers: int, epochs: int) -> dict:
    # a fresh cache folder, so setup() really decodes (the cache key does not include the thread count)
    parent = os.environ.get("SEGCORE_CACHE_DIR")
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="bench-cache-", dir=parent)
    os.environ["SEGCORE_CACHE_DIR"] = cache
    try:
        dm = PetsDataModule(TrainConfig(data_dir=str(root), image_size=size, batch_size=BATCH, num_workers=workers))
        start = time.perf_counter()
        dm.setup("fit")  # reads trainval.txt, decodes + resizes every trainval image once, writes and mmaps the cache
        build = time.perf_counter() - start
        decoded = dm.decoded["trainval"]
        # serve exactly SMP's "train" files (segcore's own split is a seeded random 90%): same images as per_item
        train_idx = np.array([i for i in range(len(decoded)) if i % 10 != 0])
        dm.train_set = PetsSegmentation(decoded, train_idx, dm.cfg.border, augment=True)
        out = rates(run_epochs(dm.train_dataloader(), epochs), max(1, workers), extra_seconds=build)
        threads = available_cores()  # what decode_split uses
        out.update(build_seconds=build, build_images=len(decoded), build_threads=threads,
                   build_img_s_core=len(decoded) / build / threads)
        return out
    finally:
        if parent is None:
            os.environ.pop("SEGCORE_CACHE_DIR")
        else:
            os.environ["SEGCORE_CACHE_DIR"] = parent
        shutil.rmtree(cache, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="reuse this dataset (official layout); generated here if empty")
    p.add_argument("--num", type=int, default=400, help="images to generate (half go to trainval)")
    p.add_argument("--min-size", type=int, default=300, help="smallest generated side, px (real photos ~300-500)")
    p.add_argument("--max-size", type=int, default=500, help="largest generated side, px")
    p.add_argument("--image-size", type=int, default=256, help="training size both loaders resize to")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", help=f"DataLoader worker counts (default: 0 and {CORES})")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--quick", action="store_true", help="24 images of 64-96 px, 64 px, 1 epoch, 0 workers (CI)")
    args = p.parse_args(argv)
    if args.quick:
        args.num, args.min_size, args.max_size, args.image_size, args.epochs = 24, 64, 96, 64, 1
        args.workers = args.workers or [0]
    workers_list = args.workers or sorted({0, CORES})
    # one core per worker process: torch's intra-op threads would otherwise let the main process use two cores
    torch.set_num_threads(1)

    tmp = None
    root = args.data_dir
    if root is not None and (root / "annotations" / "trainval.txt").is_file():
        print(f"reusing the dataset in {root} (--num and sizes ignored)")
    else:
        if root is None:
            tmp = root = Path(tempfile.mkdtemp(prefix="bench-pets-"))
        print(f"generating {args.num} images of {args.min_size}-{args.max_size} px in {root} ...", flush=True)
        generate(root, num=args.num, seed=0, min_size=args.min_size, max_size=args.max_size)
    try:
        runs = []
        for w in workers_list:
            base, ours = per_item(root, args.image_size, w, args.epochs), segcore(root, args.image_size, w, args.epochs)
            runs.append({"workers": w, "per_item": base, "segcore": ours,
                         "ratio_steady": ours["steady_img_s_core"] / base["steady_img_s_core"],
                         "ratio_amortised": ours["amortised_img_s_core"] / base["amortised_img_s_core"]})
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{CORES} cores, {args.image_size} px, batch {BATCH}, {args.epochs} epoch(s), "
          f"{runs[0]['per_item']['images_per_epoch']} images/epoch; figures are images / s / core "
          "(cores = max(1, workers); cache build: decode threads)")
    print(f"{'workers':>7} | {'per-item steady':>15} | {'segcore steady':>14} | {'cache build':>11} | "
          f"{'per-item amort.':>15} | {'segcore amort.':>14} | {'x steady':>8} | {'x amort.':>8}")
    for r in runs:
        b, s = r["per_item"], r["segcore"]
        print(f"{r['workers']:>7} | {b['steady_img_s_core']:>15.1f} | {s['steady_img_s_core']:>14.1f} | "
              f"{s['build_img_s_core']:>11.1f} | {b['amortised_img_s_core']:>15.1f} | "
              f"{s['amortised_img_s_core']:>14.1f} | {r['ratio_steady']:>8.1f} | {r['ratio_amortised']:>8.1f}")
    for r in runs:
        print(f"workers={r['workers']}: cache build {r['segcore']['build_seconds']:.2f}s for "
              f"{r['segcore']['build_images']} images on {r['segcore']['build_threads']} thread(s); segcore / per-item "
              f"steady {r['ratio_steady']:.1f}x (target >= 20x: {'met' if r['ratio_steady'] >= 20 else 'NOT met'})")
    if args.epochs == 1:
        print("note: 1 epoch, so 'steady' includes the warm-up (worker start-up, first reads)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k not in ("json", "data_dir")}
        config.update(workers=workers_list, cores=CORES, batch_size=BATCH, load=os.getloadavg())
        args.json.write_text(json.dumps({"config": config, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
