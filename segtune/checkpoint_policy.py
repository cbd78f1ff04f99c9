"""What a trial writes at an epoch's end: its full training state (weights, optimizer, scheduler, loop counters: what
a resumed trial continues from) when the policy says it is due, its weights alone when ``val/iou`` improved (what the
final test and ``segcore.predict`` read), nothing otherwise.

When an epoch takes seconds, writing the full state every epoch costs as much as the epoch (a U-Net resnet18 with
Adam's state is 165 MB). A kill now costs a trial the epochs since its last full state: ``--checkpoint-every`` says
how many (``N`` epochs), how long (``Nm`` minutes), or, by default (``auto``), keeps writing under a tenth of the
training time: the full state is written once the training since the last one took ``AUTO_FACTOR`` times as long as
writing one takes (estimated from the weights' last write, by size).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

AUTO, AUTO_FACTOR = "auto", 10
META_FILE = "checkpoint.json"  # in each checkpoint folder: {"kind", "epoch", "full_epoch", "best"}
FULL, WEIGHTS = "full", "weights"
KIND_KEY, BYTES_KEY = "checkpoint_kind", "checkpoint_bytes"  # in a result row: what its epoch wrote
_SPEC = re.compile(r"^(?:(?P<epochs>\d+)|(?P<minutes>\d+(?:\.\d+)?)m)$")


@dataclass(frozen=True)
class CheckpointPolicy:
    epochs: Optional[int] = None  # every N epochs
    minutes: Optional[float] = None  # once N minutes passed since the last one; neither: auto

    @classmethod
    def parse(cls, spec: str) -> "CheckpointPolicy":
        """``auto``, ``N`` (epochs, N >= 1) or ``Nm`` (minutes, N > 0); ValueError names what is wrong."""
        if spec == AUTO:
            return cls()
        match = _SPEC.match(spec)
        if not match:
            raise ValueError(f"'{spec}': use auto, a number of epochs (e.g. 5) or of minutes (e.g. 10m)")
        if match["epochs"] is not None:
            if int(match["epochs"]) < 1:
                raise ValueError(f"'{spec}': at least 1 epoch")
            return cls(epochs=int(match["epochs"]))
        if float(match["minutes"]) <= 0:
            raise ValueError(f"'{spec}': more than 0 minutes")
        return cls(minutes=float(match["minutes"]))

    @classmethod
    def for_trial(cls, spec: str, workers: int) -> "CheckpointPolicy":
        """What a trial follows: ``spec``, or the full state every epoch for a DDP trial (Ray Train keeps only a
        run's latest checkpoint, so a weights-only one would replace the full state a resume needs)."""
        return cls(epochs=1) if workers > 1 else cls.parse(spec)

    def describe(self) -> str:
        if self.epochs is not None:
            return f"full state every {self.epochs} epoch(s)"
        if self.minutes is not None:
            return f"full state every {self.minutes:g} min"
        return f"full state when due (writing kept under 1/{AUTO_FACTOR} of training)"


class CheckpointClock:
    """One trial process's schedule of full checkpoints under ``policy``."""

    def __init__(self, policy: CheckpointPolicy):
        self.policy = policy
        self.since = time.monotonic()  # the last full state's end (or this process's start)
        self.seconds_per_byte: Optional[float] = None  # measured on the last checkpoint written

    def full_due(self, epoch: int, full_bytes: Callable[[], int]) -> bool:
        """``full_bytes``: the full state's size, asked for only when ``auto`` needs it."""
        if self.policy.epochs is not None:
            return epoch % self.policy.epochs == 0
        elapsed = time.monotonic() - self.since
        if self.policy.minutes is not None:
            return elapsed >= self.policy.minutes * 60
        if self.seconds_per_byte is None:  # nothing written yet to estimate from: the weights come first
            return False
        return elapsed >= AUTO_FACTOR * self.seconds_per_byte * full_bytes()

    def wrote(self, nbytes: int, seconds: float, kind: str) -> None:
        self.seconds_per_byte = seconds / max(nbytes, 1)
        if kind == FULL:
            self.since = time.monotonic()


def write_meta(folder: str, kind: str, epoch: int, full_epoch: Optional[int], best: float) -> None:
    meta = {"kind": kind, "epoch": epoch, "full_epoch": full_epoch, "best": best if math.isfinite(best) else None}
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f)


def read_meta(fs, folder: str) -> dict:
    """A checkpoint folder's meta (``fs``: a pyarrow filesystem); {} for a checkpoint written before this policy
    (each was a full state)."""
    try:
        with fs.open_input_stream(f"{folder}/{META_FILE}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return {}


def full_state_for(fs, folder: str) -> tuple[Optional[str], dict]:
    """The checkpoint folder to continue a trial from, given the latest one Tune hands it (``folder``), and that
    folder's meta: itself if it holds the full state, else the full state of the epoch its meta names (a sibling
    folder), or None when the trial never wrote one (it starts again from its first epoch)."""
    import pyarrow.fs

    meta = read_meta(fs, folder)
    if meta.get("kind", FULL) == FULL:
        return folder, meta
    wanted = meta.get("full_epoch")
    if wanted is None:
        return None, {}
    parent = folder.rsplit("/", 1)[0]
    siblings = sorted(i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(parent))
                      if i.type == pyarrow.fs.FileType.Directory)
    for sibling in reversed(siblings):
        other = read_meta(fs, sibling)
        if other.get("kind") == FULL and other.get("epoch") == wanted:
            return sibling, other
    return None, {}
