"""One Ray head for the session's sweeps that are not about Ray's own start or stop: they join it with
``--address``, the path users take to a cluster, instead of each starting (and stopping) a Ray of its own.

What one test leaves must not reach the next: each joins with its own storage folder and experiment name, and
``SharedRay.joined`` checks that the head is idle before the test, that the test's drivers really joined it, and that
every trial of the test ended with its driver (all CPUs free again) before the next test starts."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, NamedTuple

from bench.ray_head import Head

# A driver of its own that stays connected to the head and answers "resources" with what is free and what exists:
# public API only (the head runs no dashboard, so no state API).
_WATCH = textwrap.dedent("""
    import json, logging, sys
    import ray
    ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps({"free": ray.available_resources().get("CPU", 0.0),
                          "total": ray.cluster_resources().get("CPU", 0.0)}), flush=True)
""")


class Join(NamedTuple):
    """What a sweep adds to join the shared head: its address and its environment (the head's token)."""
    address: str
    env: dict[str, str]

    @property
    def flags(self) -> list[str]:
        return ["--address", self.address]


class SharedRay:
    def __init__(self, head: Head):
        self.head = head
        self._watch = subprocess.Popen([sys.executable, "-c", _WATCH, head.address], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env={**os.environ, **head.join_env})
        assert self._watch.stdout.readline().strip() == "ready", "the shared Ray's watcher could not join it"

    def cpus(self) -> tuple[float, float]:
        self._watch.stdin.write("resources\n")
        self._watch.stdin.flush()
        answer = json.loads(self._watch.stdout.readline())
        return answer["free"], answer["total"]

    def wait_idle(self, timeout: float) -> None:
        """Every CPU free again within ``timeout`` (Ray ends a driver's workers shortly after the driver)."""
        deadline = time.monotonic() + timeout
        while True:
            free, total = self.cpus()
            if free == total > 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the shared Ray still has {total - free:g} of {total:g} CPUs held {timeout:g} s "
                                     "after the test's drivers ended: something the test started outlived them")
            time.sleep(0.2)

    @contextlib.contextmanager
    def joined(self) -> Iterator[Join]:
        """Join flags for the sweeps of one test (or one module's fixture), with the checks around them."""
        self.wait_idle(timeout=30)  # what ran before has ended
        before = self.head.drivers()
        yield Join(self.head.address, dict(self.head.join_env))
        assert self.head.drivers() - before, (f"no driver joined the shared Ray at {self.head.address}: the test's "
                                              "sweep started a Ray of its own")
        self.wait_idle(timeout=30)

    def close(self) -> None:
        self._watch.stdin.close()
        self._watch.wait(timeout=30)


def short_folder(prefix: str) -> Path:
    """A folder for a Ray head's files under /tmp: Ray's socket paths lie under it, and a Unix socket's path may
    not exceed 107 bytes (pytest's own temporary folders come close)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
