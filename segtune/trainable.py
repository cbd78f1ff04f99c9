"""The function Tune runs as each trial, in a module that imports nothing heavy.

Tune pickles a trainable by reference (module and name), so the driver must import its module. ``segtune.trial``
imports torch, Lightning and SMP (4-5 s); through this function the driver hands Tune the trainable without them,
and its start is that much shorter. The trial's own process imports ``segtune.trial`` as it starts, as it would anyway.
"""
from __future__ import annotations

import os
from typing import Any

# Set in every Ray worker of a sweep (segtune.driver.TRIAL_ENV), never in the driver.
IN_SWEEP_WORKER = "SEGSWEEP_WORKER"

if os.environ.get(IN_SWEEP_WORKER) == "1":
    # A trial's process unpickles this module as Tune creates the trial's actor: segtune.trial is imported then, in
    # the actor's main thread. Imported by the call instead, in Tune's training thread, the same imports ran beside
    # Tune's polling of that thread and the first step came ~1.5 s later (bench/startup_ab.py).
    import segtune.trial  # noqa: F401


def train_trial(params: dict[str, Any], **kwargs: Any) -> None:
    """``segtune.trial.train_trial``, imported in the trial's process."""
    from segtune.trial import train_trial as train

    return train(params, **kwargs)
