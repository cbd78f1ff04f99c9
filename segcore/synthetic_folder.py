"""Generate a small stand-in for a dataset of one's own, in the generic layout, with three classes (issue #35).

Tests and new users sweep it offline; it is what ``tune_main.py --synthetic folder`` writes into an empty data dir::

    DIR/images/<stem>.jpg         RGB JPEG, random size in [min_size, max_size]
    DIR/masks/<stem>.png          palette ('P') PNG: 0 background, 1 pet, 2 toy, 255 ignore (a band around the pet)
    DIR/classes.txt               background, pet, toy (line i names class i)
    DIR/splits/{train,val,test}.txt  one stem per line (60 / 20 / 20 %)

Each image is a scene of ``segcore.synthetic`` (a pet among clutter, the trimap's border band as ignore) with a
toy the pet holds: a ball in front of the pet, centred on the pet's outline, in a bright colour far from the pet's,
with a white highlight. Round and bright against angular clutter, the toy is learnt from shape and colour as the
pet is. Output is deterministic: the same num / seed / sizes give byte-identical files.

Usage: ``python -m segcore.synthetic DIR --layout folder [--num N] [--seed S] [--min-size A] [--max-size B]``. It
refuses to write into a folder that already holds files. Only numpy and PIL (no torch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segcore.config import IGNORE_INDEX as IGNORE
from segcore.errors import UserError
from segcore.palette import flat_palette
from segcore.synthetic import (
    JPEG_QUALITY,
    TRIMAP_BORDER,
    TRIMAP_PET,
    _check_args,
    _write_lines,
    render_sample,
)

CLASSES = ("background", "pet", "toy")
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))
DEFAULT_NUM = 60
DEFAULT_MIN_SIZE = 64
DEFAULT_MAX_SIZE = 128


def _toy_colour(rng: np.random.Generator, pet: np.ndarray) -> np.ndarray:
    """A saturated colour at least 120 away (RGB distance) from the pet's mean colour."""
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        colour[int(rng.integers(0, 3))] = 255.0  # one channel full: bright and saturated
        if np.linalg.norm(colour - pet) > 120:
            return colour
    return 255.0 - pet


def render_folder_sample(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[Image.Image, np.ndarray]:
    """One (RGB image, labels (H, W) uint8: 0 background, 1 pet, 2 toy, 255 ignore) drawn from ``rng``."""
    image, trimap_img = render_sample(rng, min_size, max_size)
    trimap = np.asarray(trimap_img)
    rgb = np.asarray(image).astype(np.float64)
    h, w = trimap.shape
    labels = np.zeros((h, w), dtype=np.uint8)
    labels[trimap == TRIMAP_PET] = 1
    labels[trimap == TRIMAP_BORDER] = IGNORE  # the band where pet and background meet: not trained on, not scored
    ys, xs = np.nonzero(trimap == TRIMAP_BORDER)
    i = int(rng.integers(0, len(xs)))  # held: centred on the pet's outline
    radius = rng.uniform(0.09, 0.16) * min(w, h)
    cx, cy = float(xs[i]), float(ys[i])
    toy_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(toy_img).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    toy = np.asarray(toy_img) > 0
    pet_mean = rgb[trimap == TRIMAP_PET].mean(axis=0)
    colour = _toy_colour(rng, pet_mean)
    yy, xx = np.mgrid[0:h, 0:w]
    # a highlight up and left of the centre, as a lit ball has
    light = np.exp(-(((xx - (cx - radius / 3)) ** 2 + (yy - (cy - radius / 3)) ** 2) / (2 * (radius / 3) ** 2)))
    shaded = colour * (0.75 + 0.25 * light[..., None]) + 255 * 0.5 * light[..., None]
    rgb = np.where(toy[..., None], shaded + rng.normal(0.0, 6.0, size=(h, w, 3)), rgb)
    labels[toy] = 2  # the toy is in front of the pet: its pixels are the toy's, band or not
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB"), labels


def generate_folder(root: str | Path, num: int = DEFAULT_NUM, seed: int = 0, min_size: int = DEFAULT_MIN_SIZE,
                    max_size: int = DEFAULT_MAX_SIZE) -> Path:
    """Write ``num`` images, palette masks, ``classes.txt`` and split files under ``root`` (see the module's doc).
    Raises UserError on bad arguments or when ``root`` already holds files."""
    root = Path(root)
    _check_args(num, seed, min_size, max_size)
    if num < 3:
        raise UserError(f"--num must be >= 3 (one image per split at least), got {num}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} exists and is not an empty folder; refusing to write into it")
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    palette = flat_palette()
    stems = []
    for i, rng in enumerate(np.random.default_rng(seed).spawn(num)):
        stem = f"scene_{i:05d}"
        image, labels = render_folder_sample(rng, min_size, max_size)
        image.save(root / "images" / f"{stem}.jpg", "JPEG", quality=JPEG_QUALITY)
        mask = Image.fromarray(labels, "P")
        mask.putpalette(palette)
        mask.save(root / "masks" / f"{stem}.png", "PNG")
        stems.append(stem)
    order = np.random.default_rng(seed).permutation(num)
    n_val = n_test = max(1, round(num * SPLIT_SHARES[1][1]))
    chosen = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    for split, _ in SPLIT_SHARES:
        _write_lines(root / "splits" / f"{split}.txt", [stems[j] for j in sorted(chosen[split])])
    _write_lines(root / "classes.txt", CLASSES)
    return root
