"""README.md's cluster recipes on two real hosts (network namespaces on this machine, see netns_hosts.py): a sweep
with --address from the head, token authentication holding, storage the hosts do not share refused, `ray job
submit`, and a host lost in the middle of a sweep."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.kill_anywhere import check_sweep, read_rows
from conftest import RAN_TO_END, REPO, SMALL_ENCODER
from machine import require_root
from netns_hosts import SECOND_HOSTNAME, TwoHosts

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.xdist_group("test_two_hosts")]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, pets_root):
    require_root("two hosts in network namespaces")
    for tool in ("ip", "unshare"):
        if not shutil.which(tool):
            pytest.skip(f"two hosts in network namespaces: no `{tool}` on this machine (Debian: iproute2, util-linux)")
    h = TwoHosts(tmp_path_factory.mktemp("hosts"))
    probe = subprocess.run(["ip", "netns", "add", h.head_ns], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"two hosts in network namespaces: `ip netns add` refused here: {probe.stderr.strip()}")
    try:
        h.start()
        shutil.copytree(pets_root, h.shared / "pets")  # the data where both hosts (and the head's driver) see it
        yield h
    finally:
        h.stop()


def sweep_args(h: TwoHosts, storage: Path, name: str, *extra: str, address: str = "") -> list[str]:
    # The head's address, as sweep.sbatch gives it; README's `auto` runs in the submitted job below.
    return ["--address", address or h.address, "--data-dir", str(h.shared / "pets"), "--space", "smoke",
            "--set", "image_size=64", "--set", f"encoder={SMALL_ENCODER}", "--set", "batch_size=8",
            "--storage-path", str(storage), "--name", name, *extra]


def read_trials(experiment: Path) -> list[dict]:
    with open(experiment / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_sweep_from_the_head_runs_trials_on_both_hosts(hosts):
    storage = hosts.shared / "results"  # a folder both hosts mount at the same path
    # Trials long enough (20 epochs, 4-10 s) that the first does not end before the second host's trial process has
    # started (10-15 s on a loaded machine): Tune would give the next trial to the process that is free instead.
    proc = hosts.on_head([sys.executable, "tune_main.py",
                          *sweep_args(hosts, storage, "both", "--num-samples", "3", "--max-epochs", "20",
                                      "--scheduler", "fifo", "--no-final-test")], cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(storage / "both")
    assert len(rows) == 3 and all(r["status"] in RAN_TO_END for r in rows), rows
    assert {r["node_ip"] for r in rows} == {hosts.head_ip, hosts.worker_ip}
    assert SECOND_HOSTNAME in {r["hostname"] for r in rows}


def test_a_driver_without_the_token_is_refused(hosts):
    stranger = hosts.root / "home-stranger"  # a user of the head host who has no ~/.ray/auth_token
    stranger.mkdir(exist_ok=True)
    storage = hosts.shared / "refused"
    for token in (False, True):  # no token sent at all / token mode on but no token of the cluster's
        proc = hosts.on_head([sys.executable, "tune_main.py", *sweep_args(hosts, storage, "x", "--num-samples", "1")],
                             token=token, home=stranger, cwd=REPO)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "refused by the cluster's token authentication" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not (storage / "x").exists()


def test_storage_only_the_head_sees_is_refused_before_launch(hosts):
    storage = hosts.private / "results"  # the head's own folder: the second host has an empty one there
    proc = hosts.on_head([sys.executable, "tune_main.py", *sweep_args(hosts, storage, "local", "--num-samples", "1")],
                         cwd=REPO)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"--storage-path {storage}: not visible from 1 of 2 nodes ({hosts.worker_ip})" in proc.stderr
    assert "Traceback" not in proc.stderr and "trials:" not in proc.stdout  # no trial was launched
    assert not storage.exists()  # the probe's folder is gone again


def test_ray_job_submit_runs_the_sweep_on_the_cluster(hosts):
    storage = hosts.shared / "submitted"
    # README.md `ray job submit`: from the project root, the Jobs API on the head's localhost:8265 (the recipe's SSH
    # tunnel ends there), token mode on and the head's token
    proc = hosts.on_head(["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".", "--",
                          "python", "tune_main.py",
                          *sweep_args(hosts, storage, "job", "--num-samples", "2", "--max-epochs", "1",
                                      address="auto")], cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    assert "Sweep finished: 2 trials" in proc.stdout
    rows = read_trials(storage / "job")
    assert len(rows) == 2 and all(r["status"] in RAN_TO_END for r in rows)
    assert (storage / "job" / "summary.json").is_file()


def test_losing_the_second_host_mid_sweep_loses_nothing(hosts):
    """The second host's raylet is killed once a trial there has reported: its trial is retried on the head
    (--max-failures) from its last checkpoint, and the sweep completes with every reported row kept."""
    storage = hosts.shared / "lost"
    experiment = storage / "lost"
    epochs = 40  # an epoch here is about 0.2 s: long enough to be killed in the middle
    proc = hosts.popen_on_head([sys.executable, "tune_main.py",
                                *sweep_args(hosts, storage, "lost", "--num-samples", "2", "--max-epochs", str(epochs),
                                            "--scheduler", "fifo", "--max-failures", "3", "--checkpoint-every", "1",
                                            "--no-final-test")],
                               hosts.logs / "lost.log", cwd=REPO)
    log = hosts.logs / "lost.log"
    try:
        deadline = time.monotonic() + 300
        while True:
            on_worker = {t: rows for t, rows in (read_rows(experiment) if experiment.is_dir() else {}).items()
                         if rows and rows[-1].get("node_ip") == hosts.worker_ip}
            if on_worker:
                break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        raylet = hosts.worker_raylet()
        os.kill(raylet, signal.SIGKILL)
        before = read_rows(experiment)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = read_trials(experiment)
    assert len(rows) == 2 and all(r["status"] in RAN_TO_END for r in rows), rows
    lost_trial = next(iter(on_worker))
    final = read_rows(experiment)
    assert final[lost_trial][-1]["node_ip"] == hosts.head_ip  # it ended on the head
    assert all(len(r) == epochs for r in final.values()), {t: len(r) for t, r in final.items()}
    assert check_sweep(experiment, 2, [before], epochs, optuna_study=True, final_test=False) == []
