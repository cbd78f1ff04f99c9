"""The function Tune runs as each trial, in a module that imports nothing heavy.

Tune pickles a trainable by reference (module and name), so the driver must import its module. ``segtune.trial``
imports torch, Lightning and SMP (4-5 s); through this function the driver hands Tune the trainable without them,
and its start is that much shorter. The trial's own process imports ``segtune.trial`` as it starts, as it would anyway.
"""
from __future__ import annotations

from typing import Any


def train_trial(params: dict[str, Any], **kwargs: Any) -> None:
    """``segtune.trial.train_trial``, imported in the trial's process."""
    from segtune.trial import train_trial as train

    return train(params, **kwargs)
