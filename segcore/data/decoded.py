"""Decode and resize each image once: a split becomes two uint8 arrays cached on disk and memory-mapped.

Decoding a JPEG and resizing it costs far more than a training step's share of data on small models; doing it per
item per epoch (the usual Dataset pattern) makes the loader the bottleneck. The cache is keyed by the dataset's
location, the split's file list (names, sizes and modification times) and the image size, so a changed or replaced
file builds a new cache. Several processes building the same cache wait on a file lock instead of racing.

The cache lives in ``$SEGCORE_CACHE_DIR`` (default ``~/.cache/segcore``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from filelock import FileLock
from PIL import Image, ImageFile

from segcore.cache import cache_dir

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error to report, not an image to half-read
VALID_TRIMAP_VALUES = (1, 2, 3)
CACHE_VERSION = 4  # 3: any layout's files, labels.npy, each item's facts; 4: a folder's pixel counts


@dataclass
class DecodedSplit:
    names: list[str]
    images: np.ndarray  # (N, 3, S, S) uint8: channels first, as the model takes them (no per-item transpose)
    labels: np.ndarray  # (N, S, S) uint8, the masks' values as stored (resized with nearest neighbour)
    # stored value -> class trained on (256 entries, 255: ignore), a generic layout's (segcore.data.generic); None:
    # Pets' trimap 1 / 2 / 3, mapped by the config's ``border``. Applied per batch: the cache stays as decoded, and
    # one decoding serves every mapping
    lut: Optional[np.ndarray] = None
    # a train + val split whose first ``n_train`` rows are the layout's training split and the rest its validation
    # split; None: one list (Pets' trainval) that ``val_fraction`` and the seed divide
    n_train: Optional[int] = None

    def __len__(self) -> int:
        return len(self.names)


def available_cores() -> int:
    """Cores this process may run on (a container's or cgroup's share, not the whole host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: grayscale, palette (with transparency), RGBA, CMYK, 16-bit, float."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as img:  # the format is taken from the bytes: PNG data behind .jpg loads too
        img.load()
        return to_rgb(img)


def load_trimap(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img)
    return arr[..., 0] if arr.ndim == 3 else arr


def decode_item(image_file: Path, trimap_file: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image, trimap) pair resized to size x size; raises ValueError / OSError with the file named."""
    try:
        image = load_image(image_file)
    except FileNotFoundError:
        raise ValueError(f"{image_file}: image listed in a split file but missing") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{image_file}: cannot be decoded as an image ({err})") from None
    try:
        trimap = load_trimap(trimap_file)
    except FileNotFoundError:
        raise ValueError(f"{trimap_file}: trimap missing for image {image_file.name}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{trimap_file}: cannot be decoded as a trimap ({err})") from None
    bad = sorted(set(np.unique(trimap).tolist()) - set(VALID_TRIMAP_VALUES))
    if bad:
        raise ValueError(f"{trimap_file}: trimap values {bad[:5]} outside {{1, 2, 3}}")
    if trimap.shape != (image.height, image.width):
        raise ValueError(f"{trimap_file}: trimap size {trimap.shape[1]}x{trimap.shape[0]} differs from its image's "
                         f"{image.width}x{image.height}")
    image = image.resize((size, size), Image.BILINEAR)
    trimap_img = Image.fromarray(trimap.astype(np.uint8)).resize((size, size), Image.NEAREST)
    return np.asarray(image, dtype=np.uint8), np.asarray(trimap_img, dtype=np.uint8)


# (image file, label file, size) -> (image (3, S, S) uint8, labels (S, S) uint8, facts about the item worth keeping
# with the cache, as JSON: a generic layout's values and encoding, checked again from the cache without the files)
DecodeOne = Callable[[Path, Path, int], tuple[np.ndarray, np.ndarray, Any]]


def decode_pets_item(image_file: Path, trimap_file: Path, size: int) -> tuple[np.ndarray, np.ndarray, None]:
    image, trimap = decode_item(image_file, trimap_file, size)
    return image.transpose(2, 0, 1), trimap, None


def _fingerprint(key: str, files: list[tuple[Path, Path]], size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{key}|{size}".encode())
    for pair in files:
        for path in pair:
            try:
                st = path.stat()
                h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            except FileNotFoundError:
                h.update(f"{path}|missing".encode())
    return h.hexdigest()[:20]


def _load_cached(base: Path, names: list[str]) -> Optional[tuple[DecodedSplit, list[Any]]]:
    meta_file = base.with_suffix(".json")
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("names") != names:
            return None
        images = np.load(str(base) + ".images.npy", mmap_mode="r")
        labels = np.load(str(base) + ".labels.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    return DecodedSplit(names, images, labels), meta.get("facts") or [None] * len(names)


def decode_files(key: str, split: str, names: list[str], files: list[tuple[Path, Path]], size: int,
                 decode_one: DecodeOne = decode_pets_item, num_threads: Optional[int] = None
                 ) -> tuple[Optional[DecodedSplit], list[str], list[Any]]:
    """The split of ``names`` (``files``: each one's image and label file) decoded by ``decode_one`` at ``size``:
    from the cache (memory-mapped), or decoded now on every core and cached. Returns the split (None when a file
    failed), the problems found, and what ``decode_one`` said of each item. ``key`` names the dataset and how it is
    decoded (two different decodings of the same files must not share an entry)."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f"{split}-{size}px-{_fingerprint(key, files, size)}"
    cached = _load_cached(base, names)
    if cached is not None:
        return cached[0], [], cached[1]
    with FileLock(str(base) + ".lock"):
        cached = _load_cached(base, names)  # another process may have built it while we waited
        if cached is not None:
            return cached[0], [], cached[1]
        started = time.perf_counter()
        images = np.empty((len(names), 3, size, size), dtype=np.uint8)
        labels = np.empty((len(names), size, size), dtype=np.uint8)
        facts: list[Any] = [None] * len(names)
        problems: list[str] = []

        def work(i: int) -> None:
            try:
                images[i], labels[i], facts[i] = decode_one(files[i][0], files[i][1], size)
            except ValueError as err:
                problems.append(str(err))

        # PIL releases the GIL while decoding and resizing, so threads scale without copying arrays around
        with ThreadPoolExecutor(max_workers=max(1, num_threads or available_cores())) as pool:
            list(pool.map(work, range(len(names))))
        if problems:
            return None, sorted(problems), facts
        for suffix, array in ((".images.npy", images), (".labels.npy", labels)):
            tmp = str(base) + suffix + ".tmp"
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, str(base) + suffix)
        meta = {"key": key, "split": split, "size": size, "names": names, "facts": facts}
        tmp_meta = base.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, base.with_suffix(".json"))  # written last: its presence means the arrays are complete
        log.info("decoded %s (%d images at %dpx) in %.1fs into %s", split, len(names), size,
                 time.perf_counter() - started, directory)
    loaded = _load_cached(base, names)
    assert loaded is not None
    return loaded[0], [], loaded[1]


def decode_split(root: Path, split: str, names: list[str], size: int,
                 num_threads: Optional[int] = None) -> tuple[Optional[DecodedSplit], list[str]]:
    """An Oxford-IIIT Pet split decoded (from the cache, or now and cached) and the problems found while decoding."""
    files = [(root / "images" / f"{n}.jpg", root / "annotations" / "trimaps" / f"{n}.png") for n in names]
    decoded, problems, _ = decode_files(f"pets|{root.resolve()}|{split}", split, names, files, size,
                                        decode_pets_item, num_threads)
    return decoded, problems
