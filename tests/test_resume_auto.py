"""`--resume auto`: one command that a scheduler can run again after any preemption. The same command starts the
sweep, continues it after a kill (also one before anything was saved), and reports a finished sweep without running
anything; a folder it cannot continue is refused with exit code 2. The sweep here is on a folder of one's own with
three classes (the kill / resume tests of test_reliability run on Oxford-IIIT Pet): its classes come back with the
data on every resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.kill_anywhere import check_sweep, count_rows, read_rows
from conftest import REPO, SMALL_ENCODER, run_cli

pytestmark = pytest.mark.slow

SAMPLES, EPOCHS = 3, 3


def command(data: Path, storage: Path, *extra: str) -> list[str]:
    """The job's one command: what sbatch --requeue or a restarted Kubernetes Job runs each time."""
    return ["tune_main.py", "--data-dir", str(data), "--space", "smoke", "--set", "image_size=64", "--set",
            f"encoder={SMALL_ENCODER}", "--set", "batch_size=8", "--num-samples", str(SAMPLES), "--max-epochs",
            str(EPOCHS), "--scheduler", "fifo", "--max-concurrent", "1", "--storage-path", str(storage),
            # every epoch's full state: rows become visible epoch by epoch, so a kill at the first leaves work
            "--checkpoint-every", "1",
            "--name", "job", "--seed", "3", *extra, "--resume", "auto"]


def killed(argv: list[str], log: Path, condition, timeout: float = 300) -> None:
    """Run ``argv`` and SIGKILL its process group (the machine is gone) once ``condition()`` holds."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_one_command_starts_continues_and_reports_a_finished_sweep(folder_root, tmp_path, monkeypatch):
    # Rows become visible with Tune's state saves (TUNE_GLOBAL_CHECKPOINT_S, 2 s in the driver), and this whole
    # sweep takes about 3 s once its first trial runs: saved every 2 s, its first rows could show only at its end (a
    # clean-clone CI run saw all of them at once and no work left for the "mid-sweep" kill). Every 0.5 s here.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.5")
    storage = tmp_path / "results"
    experiment = storage / "job"
    argv = command(folder_root, storage)

    # 1. killed before anything was saved (as seen: 6 s after launch), the same command starts the sweep
    started = time.monotonic()
    killed(argv, tmp_path / "run0.log", lambda: time.monotonic() - started > 2.0)
    assert not (experiment / "sweep.yaml").exists()  # nothing of the sweep was written: --resume alone would fail

    # 2. killed mid-sweep, right after a result row became visible: the same command continues it
    killed(argv, tmp_path / "run1.log", lambda: count_rows(experiment) >= 1)
    snapshot = read_rows(experiment)
    assert snapshot and sum(map(len, snapshot.values())) < SAMPLES * EPOCHS  # work was left to do

    # flags given again must match the saved ones, as with --resume (the job script edited between two requeues)
    i = argv.index("--max-epochs")
    proc = run_cli(*argv[:i + 1], "5", *argv[i + 2:], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--max-epochs 5 (the sweep started with {EPOCHS})" in proc.stderr, proc.stderr[-2000:]

    # 3. to the end: nothing reported before the kill lost or repeated, one Optuna trial per sweep trial
    proc = run_cli(*argv, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Sweep finished: 3 trials:" in proc.stdout and "unfinished" not in proc.stdout
    assert check_sweep(experiment, SAMPLES, [snapshot], EPOCHS, optuna_study=True) == []
    test = json.loads((experiment / "test_metrics.json").read_text())
    assert list(test["per_class_iou"]) == ["background", "pet", "toy"]  # the classes, after two kills
    assert all("val/iou/toy" in row for rows in read_rows(experiment).values() for row in rows)

    # 4. run again after the end (a requeue that comes late): reported as finished, nothing run or rewritten
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in experiment.rglob("*") if p.is_file()}
    proc = run_cli(*argv, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"--resume auto: {experiment} holds a finished sweep; nothing to run" in proc.stdout
    assert "Sweep finished: 3 trials:" in proc.stdout and "Final test" in proc.stdout
    assert "experiment:" not in proc.stdout  # no plan: neither Ray nor the data were touched
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in experiment.rglob("*") if p.is_file()} == kept


def test_what_auto_cannot_continue_is_refused(pets_root, tmp_path):
    storage = tmp_path / "results"
    other = storage / "job"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("someone else's")
    proc = run_cli(*command(pets_root, storage), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"--resume auto: {other} holds files but no sweep started by tune_main.py (no sweep.yaml)" in proc.stderr
    assert (other / "notes.txt").read_text() == "someone else's" and len(list(other.iterdir())) == 1

    proc = run_cli(*command(pets_root, storage)[:-2], "--resume", "later", timeout=120)
    assert proc.returncode == 2 and "--resume 'later': give --resume alone" in proc.stderr, proc.stderr[-2000:]
