"""A generic layout's splits read, checked and decoded (issue #35): the masks' encoding, the classes, and every
problem of the folder at once. No torch here (a sweep's driver runs it while its Ray starts).

Masks are read as what they store, never as what a viewer shows:
- single-channel index PNG / TIFF (8 or 16 bit): the value is the class;
- palette ('P') PNG: the palette index is the class, not its colour;
- RGB(A) colour masks: each pixel's colour is looked up in ``classes.yaml`` (``name: [r, g, b]``); a colour not
  there is a problem naming the file and the colours. An RGB file whose three channels are equal is read as
  single-channel (a grey mask saved as RGB).
255 is ignore: not trained on, not scored. A dataset whose masks hold only 0 and 255 is binary with 255 the
foreground (the most asked question of MMSegmentation's FAQ: 0/255 masks read as classes 0 and 255).

Each split decodes into a ``DecodedSplit`` whose label arrays hold the values as stored (resized with nearest
neighbour); ``GenericData.lut`` maps a stored value to the class trained on (255: ignore), so a dataset is
decoded once whatever the mapping.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from segcore.config import IGNORE_INDEX
from segcore.data.decoded import DecodedSplit, decode_files, load_image
from segcore.data.layouts import SPLITS, Classes, Layout

IGNORE = IGNORE_INDEX
MAX_PROBLEMS_LISTED = 50


@dataclass
class GenericData:
    """What the check found: the decoded splits, the classes, how the masks encode them, and what the plan says."""
    layout: Layout
    decoded: dict[str, DecodedSplit]
    class_names: list[str]
    encoding: str  # for the plan: "index", "palette", "binary 0/255 (255 = foreground)", "RGB colours (...)"
    lut: np.ndarray  # (256,) uint8: stored value -> class (IGNORE: not trained on, not scored)
    train_shares: list[float]  # each class's share of the training split's labelled pixels
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_mask(path, colours: Optional[list[tuple[int, int, int]]]) -> tuple[np.ndarray, str]:
    """The mask's stored values as (H, W) uint8 and its encoding; ValueError naming the file when it is none."""
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        arr = np.asarray(img)
    if mode == "P":
        return arr.astype(np.uint8), "palette"
    if arr.ndim == 2:  # L, 1, I, I;16*, F: one value per pixel
        if arr.size and (arr.min() < 0 or arr.max() > 255 or (arr.dtype.kind == "f" and np.any(arr % 1))):
            raise ValueError(f"{path}: mask values {_values_shown(np.unique(arr))} are not class indices 0-255")
        return arr.astype(np.uint8), "index"
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3].astype(np.uint8)
        if colours is None:
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                return rgb[..., 0].copy(), "index"
            raise ValueError(f"{path}: a colour ({mode}) mask, and no classes.yaml gives the classes' colours "
                             "(name: [r, g, b] per class)")
        packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        table = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.uint32)
        order = np.argsort(table)
        at = np.clip(np.searchsorted(table[order], packed), 0, len(table) - 1)
        found = table[order][at] == packed
        if not found.all():
            unknown = np.unique(packed[~found])[:5]
            shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown.tolist())
            raise ValueError(f"{path}: colours not in classes.yaml: {shown}")
        return order[at].astype(np.uint8), "RGB colours"
    raise ValueError(f"{path}: a {mode} image is no mask (expected index, palette or RGB)")


def _values_shown(values: np.ndarray) -> str:
    shown = [int(v) if float(v).is_integer() else float(v) for v in values[:5].tolist()]
    return str(shown) + (f" (and {len(values) - 5} more)" if len(values) > 5 else "")


def decode_mask_pair(image_file: Path, mask_file: Path, size: int, colours=None
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image (3, S, S), stored labels (S, S), facts: the values the full-size mask holds, its encoding and the
    resized labels' pixel count per value), kept with the decoded cache so that a folder decoded before is checked
    again, and its class shares counted, without reading its files or a pass over the decoded labels."""
    try:
        image = load_image(image_file)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{image_file}: cannot be decoded as an image ({err})") from None
    try:
        labels, encoding = read_mask(mask_file, colours)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{mask_file}: cannot be decoded as a mask ({err})") from None
    if labels.shape != (image.height, image.width):
        raise ValueError(f"{mask_file}: mask size {labels.shape[1]}x{labels.shape[0]} differs from its image's "
                         f"{image.width}x{image.height}")
    image_arr = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)
    labels_small = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST), dtype=np.uint8)
    values, counts = np.unique(labels_small, return_counts=True)
    return image_arr, labels_small, {"values": np.unique(labels).tolist(), "encoding": encoding,
                                     "counts": dict(zip(values.tolist(), counts.tolist()))}


def rows(split: DecodedSplit, start: int, stop: int) -> DecodedSplit:
    """Rows ``start:stop`` of ``split``: views (of its memory maps), no copy."""
    return replace(split, names=split.names[start:stop], images=split.images[start:stop],
                   labels=split.labels[start:stop], n_train=None)


def class_table(all_values: set[int], classes: Optional[Classes], encodings: set[str]
                ) -> tuple[list[str], str, np.ndarray]:
    """The class names, the encoding said in the plan, and the stored value -> class table."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    kinds = ", ".join(sorted(encodings)) or "none"
    if all_values <= {0, IGNORE} and IGNORE in all_values and (classes is None or len(classes.names) == 2):
        lut[0], lut[IGNORE] = 0, 1
        names = classes.names if classes else ["background", "foreground"]
        return names, f"binary 0/255 (255 = foreground; {kinds} masks)", lut
    if classes is not None:
        names = classes.names
    else:
        top = max(all_values - {IGNORE}, default=0)
        names = [f"class_{i}" for i in range(top + 1)]
    lut[:len(names)] = np.arange(len(names), dtype=np.uint8)
    return names, f"{kinds} masks, {IGNORE} = ignore", lut


def check_generic(layout: Layout, size: int, splits: tuple[str, ...] = SPLITS) -> GenericData:
    """Read, check and decode ``splits`` of ``layout``: every problem in one list (``problems`` of the result's
    layout, the layout's own first), warnings for classes with no pixels in a split.

    Train and val decode into one cached split (``trainval``, ``n_train`` apart; ``decoded["train"]`` and
    ``["val"]`` are views of it), the test split into another: memory-mapped from the cache on this machine's disk,
    decoded once per machine (segcore.data.decoded)."""
    from segcore.errors import UserError

    problems = list(layout.problems)
    colours = layout.classes.colours if layout.classes else None
    key = f"generic|{layout.root.resolve()}|colours {colours}"  # colour masks decode by their colours
    decoded: dict[str, DecodedSplit] = {}
    facts_by_split: dict[str, list[Optional[dict]]] = {}
    for unit, members in (("trainval", ("train", "val")), ("test", ("test",))):
        members = tuple(s for s in members if s in splits and layout.splits.get(s))
        pairs = [p for s in members for p in layout.splits[s]]
        if not pairs:
            continue
        split, unit_problems, facts = decode_files(key, unit, [p.stem for p in pairs],
                                                   [(p.image, p.mask) for p in pairs], size,
                                                   partial(decode_mask_pair, colours=colours))
        problems += unit_problems
        start = 0
        for member in members:
            stop = start + len(layout.splits[member])
            facts_by_split[member] = facts[start:stop]
            if split is not None:
                decoded[member] = rows(split, start, stop)
            start = stop
        if split is not None and unit == "trainval":
            decoded[unit] = replace(split, n_train=len(layout.splits.get("train", [])))
    values_by_split = {s: [None if f is None else np.asarray(f["values"]) for f in facts]
                       for s, facts in facts_by_split.items()}
    encodings = {f["encoding"] for facts in facts_by_split.values() for f in facts if f is not None}
    all_values = {int(v) for values in values_by_split.values() for vs in values if vs is not None for v in vs}
    names, encoding, lut = class_table(all_values, layout.classes, encodings)
    if len(names) < 2 and not problems:
        problems.append(f"{layout.root}: the masks hold one class only ({names}): nothing to segment")
    valid = set(range(len(names))) | {IGNORE}
    if not encoding.startswith("binary"):
        for split, values in values_by_split.items():
            for pair, vs in zip(layout.splits[split], values):
                bad = sorted({int(v) for v in vs} - valid) if vs is not None else []
                if bad:
                    problems.append(f"{pair.mask}: values {bad[:5]} are neither a class (0-{len(names) - 1}, "
                                    f"{layout.classes.source if layout.classes else 'from the values found'}) "
                                    f"nor {IGNORE} (ignore)")
    if problems:
        shown = problems[:MAX_PROBLEMS_LISTED]
        more = len(problems) - len(shown)
        raise UserError(f"dataset {layout.root}: {len(problems)} problem(s) found"
                        + (f" (first {len(shown)} listed)" if more else "") + ":", shown)
    warnings, train_shares = [], [0.0] * len(names)
    for split in (s for s in SPLITS if s in decoded):
        stored = np.zeros(256)  # pixels per stored value, from the facts decoding counted
        for facts in facts_by_split[split]:
            for value, count in facts["counts"].items():
                stored[int(value)] += count  # (JSON's keys are strings)
        counts = np.bincount(lut, weights=stored, minlength=256)[:len(names)]  # by class
        if split == "train" and counts.sum():
            train_shares = (counts / counts.sum()).tolist()
        absent = [names[i] for i in range(len(names)) if counts[i] == 0]
        if absent:
            warnings.append(f"warning: no pixel of class {', '.join(absent)} in the {split} split")
    decoded = {name: replace(split, lut=lut) for name, split in decoded.items()}
    return GenericData(layout, decoded, names, encoding, lut, train_shares, warnings)
