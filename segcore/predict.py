"""Masks for image files from a trained model: ``python -m segcore.predict --checkpoint CKPT IMG... --out DIR``.

For every input image ``<stem>.<ext>`` two PNGs of the image's original size go to ``--out``: ``<stem>_mask.png``
and ``<stem>_overlay.png``. A model of two classes writes the mask in mode L (255 = foreground, e.g. pet; 0 =
background) and tints the foreground red in the overlay. A model of three classes or more writes the class index
of each pixel as a palette ('P') PNG in the classes' colours (``segcore.palette``: any viewer shows the colours, any
reader gets the index), and tints each class in its colour in the overlay. Images are resized to the model's square
input size exactly as in training, and the probabilities are resized back before thresholding (or the argmax), so
the mask edge follows the original resolution rather than the model's grid.

Name clashes: inputs sharing a stem (compared case-insensitively, as on macOS / Windows file systems) keep the
first one's stem in input order; later ones become ``<stem>-2``, ``<stem>-3``, ... (the next number no input uses).
Nothing is ever overwritten: if any target file exists, the run stops before loading the model.

Exit codes: 0 every image predicted; 1 some images were unreadable and skipped (listed on stderr), the rest
predicted; 2 nothing could be predicted, or a user error (bad flag, missing checkpoint / input, existing output).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segcore.build import load_module
from segcore.callbacks import overlay, overlay_classes
from segcore.data.decoded import load_image
from segcore.errors import EXIT_USER_ERROR, UserError, cli_entry
from segcore.model import SegmentationModule
from segcore.palette import flat_palette

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_SUFFIX, OVERLAY_SUFFIX = "_mask.png", "_overlay.png"
OVERLAY_COLOR = (220, 0, 0)  # the red of the TensorBoard prediction overlays
EXIT_SOME_SKIPPED = 1
MAX_LISTED = 5  # existing targets named in the error; more would bury the message


# ----- inputs and outputs ---------------------------------------------------------------------------------

def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given (any extension: PIL reads the format from the bytes) and, for each folder, its files with
    an image extension, sorted by name, not recursive. The same file reached twice is predicted once."""
    found: list[Path] = []
    missing: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted((p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                            key=lambda p: p.name)
        elif item.exists():
            found.append(item)
        else:
            missing.append(f"{item}: no such file or folder")
    if missing:
        raise UserError("input not found", missing)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        raise UserError(f"no images found in {', '.join(map(str, inputs))} "
                        f"(folders are searched for {' '.join(IMAGE_EXTENSIONS)}, not recursively)")
    return unique


def output_stems(paths: Sequence[Path]) -> list[str]:
    """One distinct output stem per input: the file's stem, or ``<stem>-N`` when an earlier input took it."""
    taken = {p.stem.casefold() for p in paths}  # no renamed input may take a name another input has
    used: set[str] = set()
    stems = []
    for path in paths:
        stem = path.stem
        if stem.casefold() in used:
            n = 2
            while f"{stem}-{n}".casefold() in taken | used:
                n += 1
            stem = f"{stem}-{n}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def output_files(paths: Sequence[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(mask, overlay) target of each input, in input order."""
    return [(out_dir / f"{stem}{MASK_SUFFIX}", out_dir / f"{stem}{OVERLAY_SUFFIX}") for stem in output_stems(paths)]


def check_outputs(paths: Sequence[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """The targets, after making sure none exists yet (and that ``out_dir`` is not a file)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    targets = output_files(paths, out_dir)
    existing = [str(f) for pair in targets for f in pair if f.exists()]
    if existing:
        listed = existing[:MAX_LISTED] + ([f"... and {len(existing) - MAX_LISTED} more"]
                                          if len(existing) > MAX_LISTED else [])
        raise UserError(f"--out {out_dir}: {len(existing)} of the files this run would write already exist; "
                        "nothing is overwritten (move them or choose another --out)", listed)
    return targets


# ----- model ----------------------------------------------------------------------------------------------

def experiment_checkpoint(experiment: Path) -> Path:
    """The best checkpoint a sweep recorded in ``<experiment>/summary.json`` (relative paths: from the folder)."""
    summary_file = experiment / "summary.json"
    if not summary_file.is_file():
        raise UserError(f"--experiment {experiment}: {summary_file} not found (is it a sweep experiment folder?)")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{summary_file}: cannot be read as JSON ({err})") from None
    best = summary.get("best_checkpoint") if isinstance(summary, dict) else None
    if not best:
        raise UserError(f"{summary_file}: no 'best_checkpoint' recorded (did any trial save a checkpoint?)")
    path = Path(best)
    return path if path.is_absolute() else experiment / path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


# ----- prediction -----------------------------------------------------------------------------------------

def read_image(path: Path) -> Image.Image:
    """The image as RGB, or ValueError with a short reason (the caller names the file)."""
    try:
        # as in training: any mode to RGB, truncated files are errors, no EXIF rotation (the model never saw one)
        return load_image(path)
    except UnidentifiedImageError:
        raise ValueError("not an image (unknown or unsupported format)") from None
    except IsADirectoryError:
        raise ValueError("is a folder, not a file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(str(err) or type(err).__name__) from None


def _batches(paths: Sequence[Path], batch_size: int, size: int, skipped: list[tuple[Path, str]],
             progress: tqdm) -> Iterator[list[tuple[int, Image.Image, np.ndarray]]]:
    """Readable images in batches of (input index, original RGB image, model-sized uint8 array); reading is
    lazy so memory holds one batch of originals, not the whole input list."""
    batch: list[tuple[int, Image.Image, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            image = read_image(path)
        except ValueError as err:
            skipped.append((path, str(err)))
            progress.update(1)
            continue
        resized = image.resize((size, size), Image.BILINEAR)  # the resize training used
        batch.append((i, image, np.asarray(resized, dtype=np.uint8)))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_settings(threshold: float, batch_size: int) -> None:
    if not 0.0 < threshold < 1.0:  # 0 or 1 would make every pixel pet / background whatever the model says
        raise UserError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


def _save_png(image: Image.Image, path: Path) -> None:
    with open(path, "xb") as f:  # "x": never overwrite, even a file that appeared after the up-front check
        image.save(f, format="PNG")


def predict_paths(module: SegmentationModule, paths: Sequence[str | Path], out_dir: str | Path,
                  threshold: float = 0.5, batch_size: int = 8, device: str | torch.device = "cpu", *,
                  progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Write ``<stem>_mask.png`` and ``<stem>_overlay.png`` into ``out_dir`` for each image file in ``paths``.

    Two classes: a pixel is foreground when its probability is > ``threshold``; more: it is its most probable
    class (``threshold`` unused). Moves ``module`` to ``device`` and predicts in eval
    mode (its train / eval mode is restored after). Raises UserError when a target file already exists.
    Returns (every file written: mask then overlay per predicted image, in input order;
    (path, reason) of each unreadable image skipped).
    """
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    check_settings(threshold, batch_size)
    targets = check_outputs(paths, out_dir)
    size = module.cfg.image_size
    was_training = module.training
    module.eval().to(device)
    written: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr, disable=not progress)
    try:
        with torch.inference_mode():
            for batch in _batches(paths, batch_size, size, skipped, bar):
                x = torch.from_numpy(np.stack([arr for _, _, arr in batch])).permute(0, 3, 1, 2).to(device)
                logits = module(x)
                probs = logits.softmax(dim=1) if module.multiclass else logits.sigmoid()
                out_dir.mkdir(parents=True, exist_ok=True)  # only once something is readable: no empty folder
                for (i, image, _), prob in zip(batch, probs, strict=True):
                    prob = prob[None]
                    if (image.height, image.width) != (size, size):
                        # resize probabilities, not the thresholded mask: smooth edges at the original resolution
                        prob = F.interpolate(prob, size=(image.height, image.width), mode="bilinear",
                                             align_corners=False)
                    rgb = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
                    mask_file, overlay_file = targets[i]
                    if module.multiclass:
                        classes = prob.argmax(dim=1, keepdim=True).to(torch.uint8).cpu()  # (1, 1, H, W)
                        tinted = overlay_classes(rgb, classes, len(module.class_names))
                        indexed = Image.fromarray(classes[0, 0].numpy(), mode="P")
                        indexed.putpalette(flat_palette())
                        _save_png(indexed, mask_file)
                    else:
                        mask = (prob > threshold).to(torch.uint8).cpu()  # (1, 1, H, W)
                        tinted = overlay(rgb, mask, OVERLAY_COLOR)
                        _save_png(Image.fromarray(mask[0, 0].numpy() * 255), mask_file)  # 2-D uint8: mode L
                    _save_png(Image.fromarray(tinted[0].permute(1, 2, 0).numpy()), overlay_file)
                    written += [mask_file, overlay_file]
                    bar.update(1)
    finally:
        bar.close()
        module.train(was_training)
    return written, skipped


# ----- CLI ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segcore.predict",
        description="Predict masks for images with a trained segcore model.",
        epilog="Writes <out>/<stem>_mask.png (two classes: L, 0/255; more: the class index as a palette PNG in the "
               "classes' colours) and <out>/<stem>_overlay.png at each input's size. "
               "Inputs sharing a stem: later ones are written as <stem>-2, <stem>-3, ... Existing files are never "
               "overwritten. Exit codes: 0 all predicted, 1 some unreadable images skipped, 2 nothing predicted "
               "or a user error.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="a Lightning checkpoint of a segcore SegmentationModule")
    source.add_argument("--experiment", type=Path, metavar="DIR",
                        help="a sweep experiment folder: uses the best_checkpoint recorded in its summary.json")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=f"image files, or folders whose files ending in {' '.join(IMAGE_EXTENSIONS)} are all "
                        "predicted (sorted by name, not recursive)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if absent)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="two classes: a pixel is foreground (pet) when its probability is above this, in (0, 1) "
                        "(default 0.5); more classes: each pixel's most probable class, whatever this says")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses CUDA when available (default auto)")
    return p


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # every check that needs no model comes first: a mistake costs no checkpoint load
    check_settings(args.threshold, args.batch_size)
    device = resolve_device(args.device)
    checkpoint = args.checkpoint if args.checkpoint else experiment_checkpoint(args.experiment)
    if not checkpoint.is_file():
        where = f" (best_checkpoint of {args.experiment / 'summary.json'})" if args.experiment else ""
        raise UserError(f"checkpoint {checkpoint}{where}: not found (or not a file)")
    paths = collect_images(args.inputs)
    check_outputs(paths, args.out)
    module = load_module(checkpoint)
    print(f"predicting {len(paths)} image(s) on {device} with checkpoint {checkpoint}", flush=True)
    _, skipped = predict_paths(module, paths, args.out, args.threshold, args.batch_size, device)
    predicted = len(paths) - len(skipped)
    if skipped:
        lines = [f"skipped {len(skipped)} unreadable image(s):"] + [f"  {p}: {reason}" for p, reason in skipped]
        print("\n".join(lines), file=sys.stderr, flush=True)
    if not predicted:
        print("error: no image could be read; nothing written", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {predicted} mask(s) and overlay(s) to {args.out}")
    return EXIT_SOME_SKIPPED if skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
