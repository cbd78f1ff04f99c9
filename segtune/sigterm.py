"""A trial process ends when Ray sends it SIGTERM, wherever its main thread is.

Ray's worker handles SIGTERM by raising SystemExit in the main thread, at whatever bytecode that thread runs. When that
is a weakref or finalizer callback (a ``WeakSet`` entry removed by the garbage collector, say: torch and Lightning
keep many), Python cannot propagate the exception out of the callback: it prints "Exception ignored in ..." with a
traceback, which Ray forwards into the sweep's terminal under the trial's pid, and the process goes on running until
Ray kills it hard. Measured with a Ray actor churning a ``WeakSet`` and sent SIGTERM: most signals landed in the
callback and left the process alive after 5 s (tests/test_reliability.py).
"""
from __future__ import annotations

import _thread
import os
import signal
import sys
import threading

_installed = False


def end_even_from_callbacks() -> None:
    """Install once per process: a SystemExit swallowed in a main-thread callback is asked for again by sending the
    process SIGTERM from another thread, so Ray's handler raises it at an ordinary point of the main thread (and the
    exit runs as Ray means it to: atexit handlers, logs flushed). Anything else goes to the previous hook."""
    global _installed
    if _installed:
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, SystemExit) and threading.current_thread() is threading.main_thread():
            # not threading.Thread: its start() waits for the thread, and the signal would land in this hook
            _thread.start_new_thread(os.kill, (os.getpid(), signal.SIGTERM))
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _installed = True
