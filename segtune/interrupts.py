"""Stop signals: Ctrl-C (SIGINT) and SIGTERM (a cluster preempting the job) end a sweep with its state saved.

While Tune runs, a signal only marks the stop; ``segtune.tune_callbacks.StopWhenSaved`` then asks Tune to stop
(see there why not at once). Before that, and at a second signal, ``Interrupted`` is raised.
"""
from __future__ import annotations

import signal
import sys
from typing import Optional

from segcore.errors import Interrupted


class Interrupts:
    """The first SIGINT / SIGTERM asks the running sweep to stop (or, before it runs, interrupts at once); a second
    one interrupts at once. ``received`` is the first signal's number."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.tune_running = False
        self._before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def __enter__(self) -> "Interrupts":
        global ACTIVE
        ACTIVE = self
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        global ACTIVE
        ACTIVE = None
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def install(self) -> None:
        """(Again after ray.init, which sets a SIGTERM handler of its own that stops Ray without saving.)"""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        if not first or not self.tune_running:
            raise Interrupted(self.received)
        print(f"\n{signal.Signals(signum).name}: stopping the trials and saving the sweep's state "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        return 128 + self.received if self.received else 0


ACTIVE: Optional[Interrupts] = None  # this process's; callbacks read it (Tune pickles them with the experiment)
