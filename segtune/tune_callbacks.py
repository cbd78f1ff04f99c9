"""Tune callbacks of the sweep's driver. Tune pickles them with the experiment, so they hold no state of a run's
own: what they need of this process (its ``Interrupts``) they read from ``segtune.interrupts.ACTIVE``."""
from __future__ import annotations

import signal

from ray import tune

from segtune import interrupts


class StopWhenSaved(tune.Callback):
    """Tune stops on SIGUSR1 by leaving its loop and saving the experiment state once more. A result whose
    checkpoint Tune is still registering at that moment would be saved without it, and on resume its epoch would be
    trained and reported a second time. So after a stop signal this raises SIGUSR1 at the end of the first loop
    step in which no trial is saving."""

    def setup(self, **info) -> None:
        self._requested = False
        if interrupts.ACTIVE is not None:
            interrupts.ACTIVE.tune_running = True  # Tune's SIGUSR1 handler is in place by now

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        active = interrupts.ACTIVE
        if active is None or active.received is None or getattr(self, "_requested", False):
            return
        if not any(trial.is_saving for trial in trials):
            self._requested = True
            signal.raise_signal(signal.SIGUSR1)  # Tune's handler: the loop ends after this step

    def on_experiment_end(self, trials: list, **info) -> None:
        if interrupts.ACTIVE is not None:
            interrupts.ACTIVE.tune_running = False
