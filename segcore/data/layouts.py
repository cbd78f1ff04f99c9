"""A folder of images and masks, found by its layout alone: which image goes with which mask, in which split, and
what the classes are called (issue #35). No torch here: a sweep's driver reads the layout while its Ray starts.

The layouts, tried in this order (the first whose folders are there is the one; Oxford-IIIT Pet's own layout is
``segcore.data.pets``):

- ``img_dir/{train,val,test}/`` + ``ann_dir/{train,val,test}/``: MMSegmentation's;
- ``{train,val,test}/images/`` + ``{train,val,test}/masks/``: one folder per split;
- ``images/`` + ``masks/``: one folder; the splits from ``splits/{train,val,test}.txt`` (one stem per line) when
  that folder is there, else drawn by fractions with a seed (the caller's flags, said in the plan).

Images (``.jpg .jpeg .png .tif .tiff .bmp``) pair with masks (``.png .tif .tiff``) by stem, the file name without
its suffix, as MMSegmentation and detectron2 pair them. Class names come from ``classes.txt`` (line i names class
i), ``classes.yaml`` (a list of names, or ``name: [r, g, b]`` for colour masks, in class order) or ``id2label.json``
(``{"0": "background", ...}``), looked up at the top of the folder; without one, from the values the masks hold.

Every problem is collected, not raised at the first: ``find_layout`` returns them all with the layout, and the
caller reports them together (exit 2, one line each).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
CLASS_FILES = ("classes.txt", "classes.yaml", "id2label.json")
NAMES_SHOWN = 5  # unmatched files named in a problem line; the rest are counted


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


@dataclass
class Classes:
    """Class i is ``names[i]``; ``colours[i]`` its RGB colour where the masks are colour images (else None)."""
    names: list[str]
    source: str  # the file they were read from
    colours: Optional[list[tuple[int, int, int]]] = None


@dataclass
class Layout:
    kind: str  # "mmseg", "split folders", "images + masks"
    root: Path
    splits: dict[str, list[Pair]]  # "train", "val", "test" (an absent split: an empty list)
    split_source: str  # how the splits were made, for the plan
    classes: Optional[Classes] = None  # None: named from the values found in the masks
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self.splits.get(s, []))}" for s in SPLITS)
        return f"{self.kind} layout in {self.root} ({self.split_source}): {sizes}"


def _by_stem(folder: Path, suffixes: tuple[str, ...], what: str, problems: list[str]) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes`` by stem (hidden files skipped); two files of one stem is a
    problem (which one would be meant?)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.append(f"{folder}: two {what} named {path.stem!r} ({found[path.stem].name}, {path.name})")
            continue
        found[path.stem] = path
    return found


def _listed(names: list[str], total: int) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f", ... ({total - NAMES_SHOWN} more)" if total > NAMES_SHOWN else "")


def pair_folders(images: Path, masks: Path, problems: list[str]) -> list[Pair]:
    """Images of ``images`` with the masks of ``masks`` by stem; the unpaired of either side are one problem each."""
    image_files = _by_stem(images, IMAGE_SUFFIXES, "images", problems)
    mask_files = _by_stem(masks, MASK_SUFFIXES, "masks", problems)
    alone = sorted(set(image_files) - set(mask_files))
    orphans = sorted(set(mask_files) - set(image_files))
    if alone:
        problems.append(f"{images}: {len(alone)} image(s) without a mask in {masks}: {_listed(alone, len(alone))}")
    if orphans:
        problems.append(f"{masks}: {len(orphans)} mask(s) without an image in {images}: "
                        f"{_listed(orphans, len(orphans))}")
    return [Pair(stem, image_files[stem], mask_files[stem]) for stem in sorted(set(image_files) & set(mask_files))]


def read_stems(path: Path, problems: list[str]) -> list[str]:
    """The stems listed in a split file (one per line; blank lines and ``#`` comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.append(f"{path}: not a UTF-8 text file")
        return []
    stems = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stem = line.strip()
        if not stem or stem.startswith("#"):
            continue
        if "/" in stem or "\\" in stem or ".." in stem:
            problems.append(f"{path}:{lineno}: {stem!r} is a path, not a file stem")
            continue
        stems.append(Path(stem).stem if Path(stem).suffix.lower() in IMAGE_SUFFIXES else stem)
    return stems


def split_by_fractions(pairs: list[Pair], val_fraction: float, test_fraction: float,
                       seed: int) -> dict[str, list[Pair]]:
    """A seeded split of ``pairs`` (in stem order first, so the split does not depend on the filesystem's order)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = int(round(len(pairs) * test_fraction))
    n_val = int(round(len(pairs) * val_fraction))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {name: [pairs[i] for i in sorted(idx)] for name, idx in (("train", train), ("val", val), ("test", test))}


def read_classes(root: Path, problems: list[str]) -> Optional[Classes]:
    """The class names from the first of ``CLASS_FILES`` at ``root``, or None when there is none."""
    import yaml

    for name in CLASS_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            problems.append(f"{path}: not a UTF-8 text file")
            return None
        if name == "classes.txt":
            names = [line.strip() for line in text.splitlines() if line.strip()]
            return _checked(Classes(names, str(path)), problems)
        if name == "id2label.json":
            try:
                table = {int(k): str(v) for k, v in json.loads(text).items()}
            except (ValueError, AttributeError, TypeError):
                problems.append(f"{path}: expected a JSON object of class index -> name, "
                                'e.g. {"0": "background"}')
                return None
            if sorted(table) != list(range(len(table))):
                problems.append(f"{path}: class indices {sorted(table)} are not 0..{len(table) - 1}")
                return None
            return _checked(Classes([table[i] for i in range(len(table))], str(path)), problems)
        try:
            body = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problems.append(f"{path}: not valid YAML ({str(err).splitlines()[0]})")
            return None
        if isinstance(body, list) and all(isinstance(n, (str, int)) for n in body):
            return _checked(Classes([str(n) for n in body], str(path)), problems)
        if isinstance(body, dict) and body:
            colours = []
            for key, value in body.items():
                if not (isinstance(value, list) and len(value) == 3
                        and all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
                    problems.append(f"{path}: class {key!r}: expected a colour [r, g, b] of 0-255 integers, got "
                                    f"{value!r}")
                    return None
                colours.append(tuple(value))
            if len(set(colours)) < len(colours):
                problems.append(f"{path}: two classes share a colour")
                return None
            return _checked(Classes([str(k) for k in body], str(path), colours), problems)
        problems.append(f"{path}: expected a list of class names, or name: [r, g, b] per class")
        return None
    return None


def _checked(classes: Classes, problems: list[str]) -> Optional[Classes]:
    if len(classes.names) < 2:
        problems.append(f"{classes.source}: {len(classes.names)} class(es); a segmentation needs at least 2 "
                        "(background and one more)")
        return None
    if len(classes.names) > 255:
        problems.append(f"{classes.source}: {len(classes.names)} classes; masks hold 0-254 (255 is ignore)")
        return None
    repeated = sorted({n for n in classes.names if classes.names.count(n) > 1})
    if repeated:
        problems.append(f"{classes.source}: class name(s) given twice: {', '.join(repeated)}")
        return None
    return classes


def _per_split_folders(folders, problems: list[str]) -> dict[str, list[Pair]]:
    """Each split whose image or mask folder is there (``folders(split)``: the two), its pairs."""
    splits = {}
    for split in SPLITS:
        images, masks = folders(split)
        if images.is_dir() or masks.is_dir():
            if not (images.is_dir() and masks.is_dir()):
                problems.append(f"{images if not images.is_dir() else masks}: not found (its other half is there)")
                continue
            splits[split] = pair_folders(images, masks, problems)
    return splits


def find_layout(data_dir: str | os.PathLike, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0) -> Optional[Layout]:
    """The layout of ``data_dir`` with its pairs, splits, classes and every problem found; None when its folders
    are none of the layouts (the caller then tries Oxford-IIIT Pet's, and names them all)."""
    root = Path(data_dir)
    problems: list[str] = []
    splits: dict[str, list[Pair]]
    if (root / "img_dir").is_dir() and (root / "ann_dir").is_dir():
        kind, source = "mmseg", "img_dir/ and ann_dir/ split folders"
        splits = _per_split_folders(lambda s: (root / "img_dir" / s, root / "ann_dir" / s), problems)
    elif any((root / s / "images").is_dir() for s in SPLITS):
        kind, source = "split folders", "train/ val/ test/ folders"
        splits = _per_split_folders(lambda s: (root / s / "images", root / s / "masks"), problems)
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        kind = "images + masks"
        pairs = pair_folders(root / "images", root / "masks", problems)
        split_dir = root / "splits"
        if split_dir.is_dir():
            by_stem = {p.stem: p for p in pairs}
            splits, seen = {}, {}
            for split in SPLITS:
                path = split_dir / f"{split}.txt"
                if not path.is_file():
                    continue
                stems = read_stems(path, problems)
                unknown = [s for s in stems if s not in by_stem]
                if unknown:
                    problems.append(f"{path}: {len(unknown)} stem(s) with no image and mask pair: "
                                    f"{_listed(unknown, len(unknown))}")
                twice = sorted({s for s in stems if s in seen})
                if twice:
                    problems.append(f"{path}: {len(twice)} stem(s) also in {seen[twice[0]]}.txt: "
                                    f"{_listed(twice, len(twice))}")
                seen.update({s: split for s in stems})
                splits[split] = [by_stem[s] for s in stems if s in by_stem]
            source = "splits/*.txt"
        else:
            splits = split_by_fractions(pairs, val_fraction, test_fraction, seed)
            source = f"drawn: val {val_fraction:g}, test {test_fraction:g} of the pairs, seed {seed}"
    else:
        return None
    for split in ("train", "val"):
        if not splits.get(split):
            problems.append(f"{root}: the {split} split is empty ({source})")
    layout = Layout(kind, root, {s: splits.get(s, []) for s in SPLITS}, source, read_classes(root, problems))
    layout.problems = problems
    return layout
