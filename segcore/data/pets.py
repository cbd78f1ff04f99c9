"""The Oxford-IIIT Pet files: where they are, what the split files list, and the check that reads and decodes every
listed image (``check_splits``). No torch or Lightning here: a sweep's driver checks the data with this module while
its Ray starts, and imports neither before its trials do.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segcore.data.decoded import DecodedSplit, decode_split
from segcore.data.summary import DataSummary
from segcore.errors import UserError

SPLIT_FILES = ("trainval", "test")
MAX_PROBLEMS_LISTED = 50


def find_root(data_dir: str | os.PathLike) -> Path:
    """The folder holding ``images/`` and ``annotations/``: ``data_dir`` itself or its ``oxford-iiit-pet/``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data dir {data_dir}: not found (use --download, or point --data_dir at the folder "
                        "holding images/ and annotations/)")
    for candidate in (data_dir, data_dir / "oxford-iiit-pet"):
        if (candidate / "annotations").is_dir() or (candidate / "images").is_dir():
            return candidate
    raise UserError(f"data dir {data_dir}: holds neither images/ + annotations/ nor oxford-iiit-pet/ "
                    "(the Oxford-IIIT Pet layout)")


def read_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    """Image names listed in ``annotations/<split>.txt`` and the problems found in that file."""
    path = root / "annotations" / f"{split}.txt"
    if not path.is_file():
        return [], [f"{path}: split file not found"]
    names, problems = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [], [f"{path}: not a UTF-8 text file"]
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split()[0]
        if "/" in name or "\\" in name or ".." in name or name.startswith("~"):
            problems.append(f"{path}:{lineno}: image name '{name}' contains a path separator or '..'")
            continue
        names.append(name)
    if not names and not problems:
        problems.append(f"{path}: lists no images")
    return names, problems


def layout_complete(data_dir: str | os.PathLike, splits: tuple[str, ...] = SPLIT_FILES) -> bool:
    """Whether the folder, the split files and every file they list are there (``PetsDataModule.check`` does the
    rest, and reports every problem)."""
    try:
        root = find_root(data_dir)
    except UserError:
        return False
    for split in splits:
        names, problems = read_split(root, split)
        if problems or not all((root / "images" / f"{n}.jpg").is_file()
                               and (root / "annotations" / "trimaps" / f"{n}.png").is_file() for n in names):
            return False
    return True


def split_trainval(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (by seed) train / validation indices into the trainval list."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def check_splits(data_dir: str | os.PathLike, image_size: int, val_fraction: float, seed: int,
                 decoded: dict[str, DecodedSplit], splits: tuple[str, ...] = SPLIT_FILES) -> DataSummary:
    """Read, check and decode every split not yet in ``decoded`` (added to it): all problems in one UserError."""
    root = find_root(data_dir)
    problems: list[str] = []
    listed: dict[str, list[str]] = {}
    for split in splits:
        names, split_problems = read_split(root, split)
        problems += split_problems
        listed[split] = names
        if names and split not in decoded:
            # decode even when other problems were found: the user gets every problem in one report
            arrays, decode_problems = decode_split(root, split, names, image_size)
            problems += decode_problems
            if not split_problems and arrays is not None:
                decoded[split] = arrays
    if problems:
        shown = problems[:MAX_PROBLEMS_LISTED]
        more = len(problems) - len(shown)
        raise UserError(f"dataset {root}: {len(problems)} problem(s) found"
                        + (f" (first {len(shown)} listed)" if more else "") + ":", shown)
    n_trainval = len(listed.get("trainval", []))
    train_idx, val_idx = split_trainval(n_trainval, val_fraction, seed) if n_trainval else ([], [])
    return DataSummary(root, len(train_idx), len(val_idx), len(listed.get("test", [])))
