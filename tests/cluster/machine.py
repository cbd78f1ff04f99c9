"""What the cluster tests need from the machine: root, Linux namespaces, Debian packages (imported as ``machine``:
tests/conftest.py stays the only conftest).

A test that cannot get what it needs is skipped with the reason (``make cluster-test`` prints them), never passed."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_apt_updated = False


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (namespaces, daemons, apt-get); running as uid {os.geteuid()}")


def apt_install(packages: list[str], commands: list[str]) -> None:
    """Install Debian ``packages`` unless every one of ``commands`` is on PATH already; skip when that fails."""
    global _apt_updated
    if all(shutil.which(c) for c in commands):
        return
    require_root(f"installing {' '.join(packages)}")
    if not shutil.which("apt-get"):
        pytest.skip(f"{' '.join(packages)}: not installed and no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        proc = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            pytest.skip(f"apt-get update failed: {proc.stderr.strip()[-300:]}")
        _apt_updated = True
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode:
        pytest.skip(f"apt-get install {' '.join(packages)} failed: {proc.stderr.strip()[-300:]}")
    missing = [c for c in commands if not shutil.which(c)]
    if missing:
        pytest.skip(f"{' '.join(packages)} installed but {', '.join(missing)} not on PATH")
