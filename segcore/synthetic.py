"""Generate a small synthetic stand-in for the Oxford-IIIT Pet dataset, in the official on-disk layout.

Tests, demos and smoke runs of the training / tuning code must never need the network (the real
dataset is ~800 MB). This module writes a tiny fake dataset that torchvision's
``OxfordIIITPet(root=PARENT, download=False)`` and our own loaders read exactly like the real one::

    DIR/images/<Name>_<n>.jpg               RGB JPEG, random size in [min_size, max_size]
    DIR/annotations/trimaps/<Name>_<n>.png  mode "L": 1 = pet, 2 = background, 3 = border band
    DIR/annotations/list.txt                6 '#' header lines + "Name_n CLASS-ID SPECIES BREED-ID"
    DIR/annotations/trainval.txt            same line format, no header (about half the images)
    DIR/annotations/test.txt                the other half

Each image shows a "pet-like" shape (ellipse body, ellipse head, two triangle ears; at a random
place and scale, from a fifth to most of the image, in a random colour with a fur texture) on a
textured background (smooth blobs, stripes or a gradient) cluttered with angular objects (boxes,
shards, poles) in other colours; in about half of the images one of them stands in front of the
pet and hides part of it (hidden pet is background, as in the real trimaps). The trimap's border
class is a thin band (about 1/48 of the image side) around the visible pet. What tells the pet
from the clutter is its colour against its surroundings and its rounded shape, so a model has
to learn shape as well as colour, and its capacity and learning rate show in the result.
Names cycle through the 37 real breeds; ``<n>`` counts from 1 per breed.
Output is deterministic: the same num / seed / sizes give byte-identical files.

Usage: ``python -m segcore.synthetic DIR [--num N] [--seed S] [--min-size A] [--max-size B]``; with
``--layout folder``, a three-class stand-in for a folder of one's own instead (``segcore.synthetic_folder``)
(torchvision expects ``DIR`` to be ``PARENT/oxford-iiit-pet``). It refuses to write into a
directory that already holds an ``images`` or ``annotations`` folder with files.

Only numpy and PIL are used here (no torch), so it is cheap to import and fast to run.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segcore.errors import UserError, cli_entry

# The 37 Oxford-IIIT Pet breeds: cats capitalised, dogs lower case (as in the official file names).
CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)
DOG_BREEDS = (
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer",
    "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
    "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger",
    "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed",
    "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier",
    "yorkshire_terrier",
)
# CLASS-ID order: alphabetical, case-insensitive (index + 1), exactly as in the official list.txt.
BREEDS: tuple[str, ...] = tuple(sorted(CAT_BREEDS + DOG_BREEDS, key=str.lower))

LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID",
    "#ID: 1:37 Class ids",
    "#SPECIES: 1:Cat 2:Dog",
    "#BREED ID: 1-25:Cat 1:12:Dog",
    "#All images with 1st letter as captial are cat images",
    "#images with small first letter are dog images",
)

TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3

DEFAULT_NUM = 74  # two images per breed, so every breed can appear in both splits
DEFAULT_MIN_SIZE = 96
DEFAULT_MAX_SIZE = 160
MIN_ALLOWED_SIZE = 32
JPEG_QUALITY = 90


def breed_ids(breed: str) -> tuple[int, int, int]:
    """(CLASS-ID 1..37, SPECIES 1=cat 2=dog, BREED-ID 1.. within the species) of a breed name."""
    class_id = BREEDS.index(breed) + 1
    is_cat = breed[0].isupper()
    same_species = [b for b in BREEDS if b[0].isupper() == is_cat]
    return class_id, 1 if is_cat else 2, same_species.index(breed) + 1


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------

def _ellipse_points(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 48):
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    x = cx + rx * np.cos(t) * ca - ry * np.sin(t) * sa
    y = cy + rx * np.cos(t) * sa + ry * np.sin(t) * ca
    return np.stack([x, y], axis=1)


def _pet_polygons(rng: np.random.Generator) -> list[np.ndarray]:
    """Body, head and two ears as polygons in arbitrary units (image axes: y points down)."""
    a = rng.uniform(1.0, 1.5)            # body semi-axes
    b = rng.uniform(0.55, 0.85)
    phi = rng.uniform(-0.6, 0.6)         # body tilt
    side = 1.0 if rng.random() < 0.5 else -1.0  # head on the left or the right
    body = _ellipse_points(0.0, 0.0, a, b, phi)

    rh = rng.uniform(0.45, 0.7)          # head size
    hx = side * math.cos(phi) * a * 0.9
    hy = side * math.sin(phi) * a * 0.9 - b * 0.6
    hrx, hry = rh * rng.uniform(0.9, 1.15), rh * rng.uniform(0.85, 1.05)
    head = _ellipse_points(hx, hy, hrx, hry, rng.uniform(-0.3, 0.3))

    ears = []
    spread = rng.uniform(0.45, 0.8)      # ear angle away from straight up
    ear_len = rng.uniform(1.4, 1.9)
    half_base = rng.uniform(0.3, 0.42)  # wide enough to stay visible at 64 px
    for sign in (-1.0, 1.0):
        theta = -math.pi / 2 + sign * spread
        base = [(hx + 0.85 * hrx * math.cos(theta + d), hy + 0.85 * hry * math.sin(theta + d))
                for d in (-half_base, half_base)]
        tip = (hx + ear_len * hrx * math.cos(theta), hy + ear_len * hry * math.sin(theta))
        ears.append(np.array([base[0], tip, base[1]]))
    return [body, head, *ears]


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (h, w) (bicubic upsampling of a coarse grid)."""
    grid = (rng.random((cells, cells)) * 255.0).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid, "L").resize((w, h), Image.BICUBIC), dtype=np.float32)
    return field / 255.0


def _dist_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom == 0 else float(np.clip((p - a) @ ab / denom, 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _background(rng: np.random.Generator, h: int, w: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    kind = int(rng.integers(0, 3))
    if kind == 0:  # smooth blobs
        t = _smooth_field(rng, h, w, int(rng.integers(3, 8)))
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = rng.uniform(0.0, math.pi)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        if kind == 1:  # stripes
            period = rng.uniform(6.0, 24.0)
            t = 0.5 + 0.5 * np.sin(2.0 * math.pi * proj / period + rng.uniform(0.0, 2.0 * math.pi))
        else:  # linear gradient
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    t = t[..., None]
    bg = c1 * (1.0 - t) + c2 * t
    return bg + rng.normal(0.0, rng.uniform(6.0, 18.0), size=(h, w, 3))


# Fur colours, as pets have them (black, browns, ginger, golden, cream, white, greys); each pet is one, jittered.
FUR = np.array([(28, 24, 22), (74, 48, 30), (125, 82, 48), (196, 118, 58), (208, 168, 92), (228, 210, 172),
                (238, 236, 230), (128, 128, 132), (92, 88, 86)], dtype=np.float32)


def _pet_colour(rng: np.random.Generator) -> np.ndarray:
    return np.clip(FUR[int(rng.integers(0, len(FUR)))] + rng.uniform(-18.0, 18.0, size=3), 0, 255)


def _scene_colour(rng: np.random.Generator, min_dist: float = 70.0) -> np.ndarray:
    """A colour of the scene (background, clutter): at least ``min_dist`` from every fur colour. Pets are
    fur-coloured and most of what surrounds them is not: colour is a cue, as in photos, and shape the rest."""
    for _ in range(500):
        c = rng.integers(0, 256, size=3).astype(np.float32)
        if float(np.linalg.norm(FUR - c, axis=1).min()) >= min_dist:
            return c
    return np.array([40.0, 200.0, 60.0], dtype=np.float32)


def _scene_colours(rng: np.random.Generator, min_dist: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """The background's two colours: no blend of them comes within ``min_dist`` of a fur colour."""
    c1 = _scene_colour(rng)
    for _ in range(200):
        c2 = _scene_colour(rng)
        if min(_dist_to_segment(f, c1, c2) for f in FUR) >= min_dist:
            return c1, c2
    return c1, c1


def _angular_shape(rng: np.random.Generator, w: int, h: int, near: tuple[float, float] | None = None,
                   size: float | None = None) -> list[tuple[float, float]]:
    """A box, a shard (a triangle or quadrilateral) or a pole: corners, not the pet's curves. ``near``: its centre
    (else anywhere); ``size``: about how long its longer side is (else up to a third of the image)."""
    cx, cy = near if near is not None else (rng.uniform(0, w), rng.uniform(0, h))
    size = size if size is not None else rng.uniform(0.08, 0.33) * min(w, h)
    kind = int(rng.integers(0, 3))
    angle = rng.uniform(0, math.pi)
    if kind == 0:  # box
        half = np.array([size / 2, size * rng.uniform(0.25, 0.5)])
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    elif kind == 1:  # shard
        n = int(rng.integers(3, 5))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        corners = np.stack([np.cos(t), np.sin(t)], axis=1) * size / 2 * rng.uniform(0.6, 1.0, (n, 1))
    else:  # pole: long and thin
        half = np.array([size * rng.uniform(0.8, 1.5), max(1.5, size * rng.uniform(0.06, 0.12))])
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    ca, sa = math.cos(angle), math.sin(angle)
    return [(float(cx + x * ca - y * sa), float(cy + x * sa + y * ca)) for x, y in corners]


def _fill(shape: list[tuple[float, float]], w: int, h: int) -> np.ndarray:
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(shape, fill=255)
    return np.asarray(img) > 0


def _border_radius(w: int, h: int) -> int:
    return max(1, round(min(w, h) / 48))


def render_sample(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, trimap) pair drawn from ``rng``; the trimap always holds the values 1, 2 and 3."""
    w = int(rng.integers(min_size, max_size + 1))
    h = int(rng.integers(min_size, max_size + 1))
    r = _border_radius(w, h)
    k = 2 * r + 1
    margin = r + 2

    for _attempt in range(20):
        polys = _pet_polygons(rng)
        pts = np.concatenate(polys)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        bw, bh = hi - lo
        frac = rng.uniform(0.5, 0.9)  # from half the frame to most of it
        scale = min(frac * (w - 2 * margin) / bw, frac * (h - 2 * margin) / bh)
        ox = rng.uniform(margin, w - margin - bw * scale) - lo[0] * scale
        oy = rng.uniform(margin, h - margin - bh * scale) - lo[1] * scale

        mask_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_img)
        for poly in polys:
            draw.polygon([(float(x) * scale + ox, float(y) * scale + oy) for x, y in poly], fill=255)
        body = np.asarray(mask_img) > 0
        hidden = None  # what an object in front of the pet covers
        if rng.random() < 0.5:  # something in front of the pet, over up to about a third of it
            ys, xs = np.nonzero(body)
            i = int(rng.integers(0, len(xs)))
            hidden = _fill(_angular_shape(rng, w, h, near=(float(xs[i]), float(ys[i])),
                                          size=rng.uniform(0.25, 0.6) * max(bw, bh) * scale), w, h)
            if (body & ~hidden).sum() < 0.6 * body.sum():
                hidden = None  # hides too much: no occluder this time
            else:
                mask_img = Image.fromarray(np.where(hidden, 0, np.asarray(mask_img)).astype(np.uint8), "L")
        dilated = np.asarray(mask_img.filter(ImageFilter.MaxFilter(k))) > 0
        eroded = np.asarray(mask_img.filter(ImageFilter.MinFilter(k))) > 0
        trimap = np.full((h, w), TRIMAP_BACKGROUND, dtype=np.uint8)
        trimap[dilated] = TRIMAP_BORDER
        trimap[eroded] = TRIMAP_PET
        if len(np.unique(trimap)) == 3:
            break
    else:  # pragma: no cover - the shape sizes above make this unreachable for sizes >= 32
        raise RuntimeError(f"could not draw a pet with a {k}px border into a {w}x{h} image")
    mask = np.asarray(mask_img) > 0  # the visible pet

    pet_c = _pet_colour(rng)
    c1, c2 = _scene_colours(rng)
    bg = _background(rng, h, w, c1, c2)

    head_c = np.clip(pet_c + rng.uniform(-15.0, 15.0, size=3), 0, 255)
    head_img = Image.new("L", (w, h), 0)
    hdraw = ImageDraw.Draw(head_img)
    for poly in polys[1:]:  # head and ears in a slightly different shade
        hdraw.polygon([(float(x) * scale + ox, float(y) * scale + oy) for x, y in poly], fill=255)
    head_mask = np.asarray(head_img) > 0
    fur = (_smooth_field(rng, h, w, int(rng.integers(4, 9))) - 0.5)[..., None] * 40.0
    pet = np.where(head_mask[..., None], head_c, pet_c) + fur
    pet = pet + rng.normal(0.0, rng.uniform(4.0, 12.0), size=(h, w, 3))

    # clutter behind the pet: angular objects in colours that are not the pet's
    for _ in range(int(rng.integers(2, 7))):
        thing = _fill(_angular_shape(rng, w, h), w, h)
        colour = _scene_colour(rng)
        bg = np.where(thing[..., None], colour + rng.normal(0.0, 8.0, size=(h, w, 3)), bg)
    rgb = np.where(mask[..., None], pet, bg)
    if hidden is not None:  # and the one in front of it
        rgb = np.where(hidden[..., None], _scene_colour(rng) + rng.normal(0.0, 8.0, size=(h, w, 3)), rgb)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), Image.fromarray(trimap, "L")


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------

def _check_args(num: int, seed: int, min_size: int, max_size: int) -> None:
    if not isinstance(num, int) or num < 2:
        raise UserError(f"--num must be an integer >= 2 (one image per split at least), got {num!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    if not isinstance(min_size, int) or min_size < MIN_ALLOWED_SIZE:
        raise UserError(f"--min-size must be an integer >= {MIN_ALLOWED_SIZE}, got {min_size!r}")
    if not isinstance(max_size, int) or min_size > max_size:
        raise UserError(f"--min-size ({min_size}) must not be larger than --max-size ({max_size!r})")


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a directory")
    for sub in ("images", "annotations"):
        p = root / sub
        if p.exists() and (not p.is_dir() or any(f.is_file() for f in p.rglob("*"))):
            raise UserError(
                f"{root} already contains an '{sub}' folder with files; refusing to overwrite it "
                f"(pass a new or empty directory)"
            )


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as fh:
        fh.write("".join(line + "\n" for line in lines))


def generate(
    root: str | Path,
    num: int = DEFAULT_NUM,
    seed: int = 0,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Path:
    """Write ``num`` synthetic pet images + trimaps + split lists under ``root`` (official layout).

    Image ``i`` (0-based) is breed ``BREEDS[i % 37]`` with number ``i // 37 + 1`` and is drawn from
    its own rng spawned from ``numpy.random.default_rng(seed)``. Even ``i`` go to trainval.txt,
    odd ``i`` to test.txt. Raises ``UserError`` on bad arguments or when ``root`` already holds
    an ``images`` / ``annotations`` folder with files. Returns ``root`` as a Path.
    """
    root = Path(root)
    _check_args(num, seed, min_size, max_size)
    _check_root(root)

    images_dir = root / "images"
    trimaps_dir = root / "annotations" / "trimaps"
    images_dir.mkdir(parents=True, exist_ok=True)
    trimaps_dir.mkdir(parents=True, exist_ok=True)

    rngs = np.random.default_rng(seed).spawn(num)
    rows: list[tuple[int, int, str]] = []  # (class_id, n, line)
    trainval: list[str] = []
    test: list[str] = []
    for i, rng in enumerate(rngs):
        breed = BREEDS[i % len(BREEDS)]
        n = i // len(BREEDS) + 1
        name = f"{breed}_{n}"
        image, trimap = render_sample(rng, min_size, max_size)
        image.save(images_dir / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
        trimap.save(trimaps_dir / f"{name}.png", "PNG")
        class_id, species, breed_id = breed_ids(breed)
        line = f"{name} {class_id} {species} {breed_id}"
        rows.append((class_id, n, line))
        (trainval if i % 2 == 0 else test).append(line)

    def order(lines: list[str]) -> list[str]:  # grouped by breed like the official files
        key = {line: (cid, n) for cid, n, line in rows}
        return sorted(lines, key=key.__getitem__)

    ann = root / "annotations"
    _write_lines(ann / "list.txt", [*LIST_HEADER, *order([line for _, _, line in rows])])
    _write_lines(ann / "trainval.txt", order(trainval))
    _write_lines(ann / "test.txt", order(test))
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segcore.synthetic",
        description="Write a synthetic stand-in for the Oxford-IIIT Pet dataset (official layout) "
        "so tests and demos never need the network.",
    )
    p.add_argument("dir", type=Path, help="output directory (torchvision expects PARENT/oxford-iiit-pet)")
    p.add_argument("--layout", choices=("pets", "folder"), default="pets",
                   help="pets: Oxford-IIIT Pet's layout (trimaps); folder: images/ + masks/ (palette PNGs), "
                        "classes.txt and splits/, three classes: background, pet, toy (default pets)")
    p.add_argument("--num", type=int, default=DEFAULT_NUM, help=f"number of images (>= 2, default {DEFAULT_NUM})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                   help=f"smallest image width/height in px (>= {MIN_ALLOWED_SIZE}, default {DEFAULT_MIN_SIZE})")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"largest image width/height in px (default {DEFAULT_MAX_SIZE})")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.layout == "folder":
        from segcore.synthetic_folder import CLASSES, generate_folder

        root = generate_folder(args.dir, num=args.num, seed=args.seed, min_size=args.min_size, max_size=args.max_size)
        print(f"wrote {args.num} images with three-class masks ({', '.join(CLASSES)}) to {root}")
        return 0
    root = generate(args.dir, num=args.num, seed=args.seed, min_size=args.min_size, max_size=args.max_size)
    print(f"wrote {args.num} synthetic Oxford-IIIT Pet images (+ trimaps and split lists) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
