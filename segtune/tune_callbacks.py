"""Tune callbacks of the sweep's driver. Tune pickles them with the experiment, so they hold no state of a run's
own: what they need of this process (its ``Interrupts``) they read from ``segtune.interrupts.ACTIVE``."""
from __future__ import annotations

import signal
import time
from typing import Optional

from ray import tune

from segcore.metrics_names import DEVICE_SETUP, SWEEP_METRIC
from segtune import interrupts, saved_state
from segtune.results import MEANINGLESS, STATUSES, status_from_last


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


SHOW_PROGRESS = True  # set by tune_main for this run: False with --verbose (Ray's own tables then)


class Progress(tune.Callback):
    """A compact live status, one line: trials running / finished / stopped early / diverged / errored, the best
    val/iou so far (of the results that count, as the summary's: segtune.saved_state.best_counted) and its trial,
    time since this run started. Printed when it changes (at most every
    ``min_gap_s``) and at least every ``heartbeat_s``, as plain lines, so it reads the same in a terminal and in a
    batch job's log."""

    def __init__(self, max_epochs: int, min_gap_s: float = 5.0, heartbeat_s: float = 60.0):
        self.max_epochs, self.min_gap_s, self.heartbeat_s = max_epochs, min_gap_s, heartbeat_s

    def setup(self, total_num_samples: Optional[int] = None, **info) -> None:
        self._started, self._printed_at, self._shown = time.monotonic(), 0.0, ""
        self._total = total_num_samples
        self._devices: set[tuple[str, str]] = set()  # (host, device line) already printed

    def status(self, trials: list) -> str:
        counts = {"running": 0, "pending": 0, **{s: 0 for s in STATUSES}}
        best, best_trial = None, None
        for trial in trials:
            if trial.status == "RUNNING":
                counts["running"] += 1
            elif trial.status in ("PENDING", "PAUSED"):
                counts["pending"] += 1
            else:  # TERMINATED or ERROR: as trials.csv will name it
                ended = status_from_last(trial.last_result or {}, self.max_epochs, errored=trial.status == "ERROR")
                counts[ended] += 1
                if ended in MEANINGLESS:  # never the best (segtune.results.best_trial)
                    continue
            value = saved_state.best_counted(trial)  # as the summary will count it, not Tune's metric_analysis
            if value is not None and (best is None or value > best):
                best, best_trial = value, trial
        total = f"/{self._total}" if self._total else ""
        parts = [f"{len(trials)}{total} trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)]
        # str(trial): its run name (segtune.naming), as in TensorBoard, trials.csv and the report
        parts.append(f"best {SWEEP_METRIC} {best:.4f} ({best_trial})" if best is not None
                     else f"no {SWEEP_METRIC} yet")
        return " | ".join(parts)

    def _print(self, trials: list, force: bool = False) -> None:
        if not SHOW_PROGRESS:
            return
        now = time.monotonic()
        shown = self.status(trials)
        changed = shown != self._shown
        due = (changed and now - self._printed_at >= self.min_gap_s) or now - self._printed_at >= self.heartbeat_s
        if force or due:
            elapsed = int(now - self._started)
            print(f"[{elapsed // 3600:d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {shown}", flush=True)
            self._printed_at, self._shown = now, shown

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._print(trials)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        """Where trials compute, once per distinct host and device line (every trial of a sweep on one kind of
        machine shares one line): a GPU sweep's log says whether the GPU path was taken."""
        line, host = result.get(DEVICE_SETUP), result.get("hostname", "?")
        if not isinstance(line, str) or (host, line) in self._devices:
            return
        self._devices.add((host, line))
        if SHOW_PROGRESS:
            print(f"trials on {host}: {line}", flush=True)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._print(trials, force=True)
