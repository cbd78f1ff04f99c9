"""A Ray head on 127.0.0.1 that sweeps join with ``--address``, as on a cluster (README's ``ray start`` recipe, token
authentication on): used by bench/sweep_efficiency.py (``--ray running``) and by the test suite's shared Ray."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple


class Head(NamedTuple):
    """A running Ray head (ray_head): where to join it, with what, and where its processes log."""
    address: str
    join_env: dict[str, str]  # what a driver adds to its environment to join (the token)
    logs: Path

    def drivers(self) -> set[str]:
        """The drivers that have joined this head so far (Ray writes one core log per driver)."""
        return {p.name for p in self.logs.glob("python-core-driver-*")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a Ray GCS to take)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def ray_head(cores: int, folder: Path, prestart_workers: bool = True):
    """A Ray head for sweeps to join, token authentication on with a token of its own (private to its caller);
    yields its Head. Its processes are one session, ended after. ``folder`` holds its files: keep its path short,
    Ray's socket paths lie under it. ``prestart_workers=False``: no workers started for the first driver (they
    would carry no job's runtime_env, so no trial could use them)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    join = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**os.environ, **join, "RAY_TMPDIR": str(folder)}  # its session's files in the caller's folder
    env.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).parent / "ray")
    address = f"127.0.0.1:{port}"
    system = [] if prestart_workers else [f"--system-config={json.dumps({'prestart_worker_first_driver': False})}"]
    with open(folder / "ray-head.log", "w") as log:
        head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                                 f"--num-cpus={cores}", "--include-dashboard=false", "--disable-usage-stats", *system],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray, "status", f"--address={address}"], env=env, capture_output=True).returncode:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head failed:\n{(folder / 'ray-head.log').read_text()[-2000:]}")
            time.sleep(1)
        yield Head(address, join, folder / "ray" / "session_latest" / "logs")
    finally:
        # `ray start --block` stops its processes on SIGTERM, but slowly (its raylet took ~10 s here): what is left
        # after a few seconds is killed, so that nothing of it runs beside the next sweep or test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
