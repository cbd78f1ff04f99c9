"""scripts/slurm/sweep.sbatch for real, on a single-node SLURM from Debian's packages (slurm_local.py): the README's
sbatch command runs a sweep to its end, a sweep that SLURM preempts goes back to the queue, where the same command
continues it, and one stopped with `scancel --signal=TERM` is continued by submitting that command again. Ray stays
on 127.0.0.1: HEAD_IP, and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set by conftest, passed on by sbatch), in a network
namespace of its own."""
from __future__ import annotations

import contextlib
import csv
import ipaddress
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest

import slurm_local
from bench.kill_anywhere import check_sweep, count_rows, read_rows
from conftest import RAN_TO_END, REPO, SMALL_ENCODER
from machine import apt_install, require_root

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.xdist_group("test_slurm")]

SCRIPT = "scripts/slurm/sweep.sbatch"
# This machine on the sbatch line: one node, its 2 CPUs, no GPU (the script's defaults: 2 nodes, 16 CPUs, gpu:4)
MACHINE = ["--nodes=1", "--cpus-per-task=2", "--gres=none"]
SLURM_PROCESSES = {"slurmctld", "slurmd", "slurmstepd", "srun"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """One SLURM for the module's tests; stopped at the end, also after a failure, with nothing of it left."""
    require_root("a local SLURM (munged, slurmctld and slurmd run as root)")
    apt_install(slurm_local.PACKAGES, slurm_local.COMMANDS)
    try:
        instance = slurm_local.start(tmp_path_factory.mktemp("slurm"))
    except slurm_local.Unavailable as err:
        pytest.skip(f"no local SLURM here: {err}")
    # The jobs' Ray gets a temporary folder of its own, as on a compute node: in the machine's /tmp/ray, the
    # `ray_current_cluster` file it leaves would send every later plain `ray.init()` here (the suite's bench of a
    # plain Tune script) to this job's long-gone head. Short: Ray's socket paths must fit AF_UNIX's 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="sgs")
    instance.env["RAY_TMPDIR"] = ray_tmp
    try:
        yield instance
    finally:
        left = slurm_local.stop(instance)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"processes of SLURM jobs outlived SLURM and were killed: {left}"
    assert all(p.poll() is not None for p in instance.procs.values())


class Sweep:
    """One sweep.sbatch submission as the README writes it, from the project root, with this test's folders."""

    def __init__(self, slurm: slurm_local.LocalSlurm, tmp: Path, name: str, *flags: str, images: int = 48):
        self.slurm, self.tmp = slurm, tmp
        self.experiment = tmp / "results" / name
        self.token_dir = tmp / "token"  # private: the script makes it and removes it at the end
        # Ray on its default ports (6379, 8265): the namespace has no other Ray
        env = {"HEAD_IP": "127.0.0.1", "STORAGE": str(tmp / "results"), "RAY_TOKEN_DIR": str(self.token_dir)}
        if Path(sys.prefix) != REPO / ".venv":
            env["VENV"] = sys.prefix
        tune_flags = ["--synthetic", "--synthetic-images", str(images), "--data-dir", str(tmp / "data"),
                      "--space", "smoke", "--set", "image_size=64", "--set", f"encoder={SMALL_ENCODER}",
                      "--scheduler", "fifo", *flags, "--name", name, "--resume", "auto"]
        # the output file as the script names it (%x-%j.out: segsweep-<job id>.out), here rather than in the project
        self.job = slurm.sbatch([*MACHINE, f"--output={tmp}/%x-%j.out", SCRIPT, *tune_flags], cwd=REPO, env=env)

    @property
    def output(self) -> str:
        path = self.tmp / f"segsweep-{self.job}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def context(self) -> str:
        return f"--- segsweep-{self.job}.out (tail)\n{self.output[-4000:]}\n{self.slurm.logs()}"

    def trials(self) -> list[dict]:
        with open(self.experiment / "trials.csv") as f:
            return list(csv.DictReader(f))

    def wait_for_first_row(self, timeout: float = 300) -> None:
        """Until the sweep has reported a result, while the job is queued or running."""
        deadline = time.monotonic() + timeout
        while count_rows(self.experiment) < 1:
            state = self.slurm.job(self.job)["JobState"]
            assert state in ("PENDING", "RUNNING") and time.monotonic() < deadline, self.context()
            time.sleep(0.2)

    def assert_nothing_left(self) -> None:
        """No process of the job outlives it (Ray's included), and its token is gone with its folder."""
        deadline = time.monotonic() + 30
        while (left := self.slurm.job_processes(self.job)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes of job {self.job} still running: {left}"
        assert not self.token_dir.exists(), list(self.token_dir.iterdir())


def tcp_sockets(slurm: slurm_local.LocalSlurm, pids: list[int]) -> set[tuple[str, str, str, bool]]:
    """Every TCP socket in the SLURM's network namespace: (owner, local address, remote address, listening); the
    owner is the name of the process that holds it, or "" (none: TIME-WAIT). Looked up among ``pids`` and the
    daemons first; a listening socket none of them holds (a step's srun or slurmstepd started after ``pids`` were
    listed: seen in CI as ('', '0.0.0.0')) is looked up among every process of the machine."""
    def owners(candidates) -> dict[str, str]:
        found = {}
        for pid in candidates:
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        link = os.readlink(fd)
                        if link.startswith("socket:["):
                            found[link[8:-1]] = name
        return found

    owner = owners([*pids, *(p.pid for p in slurm.procs.values())])
    def address(hex_address: str) -> str:
        raw = bytes.fromhex(hex_address.split(":")[0])
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # 32-bit words in host order
        ip = ipaddress.ip_address(raw)
        return str(getattr(ip, "ipv4_mapped", None) or ip)

    rows = []
    for table in ("tcp", "tcp6"):  # the namespace's, seen through slurmd, which runs in it
        with contextlib.suppress(OSError):
            rows += [line.split() for line in
                     Path(f"/proc/{slurm.procs['slurmd'].pid}/net/{table}").read_text().splitlines()[1:]]
    if any(cols[3] == "0A" and cols[9] not in owner for cols in rows):  # a listener of a process not yet known
        owner.update(owners(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()))
    return {(owner.get(cols[9], ""), address(cols[1]), address(cols[2]), cols[3] == "0A") for cols in rows}


def test_sweep_runs_to_its_end_as_a_slurm_job(slurm, tmp_path):
    sweep = Sweep(slurm, tmp_path, "slurm1", "--num-samples", "2", "--max-epochs", "2")
    token = sweep.token_dir / "auth_token"
    token_modes, sockets = set(), set()
    info = slurm.job(sweep.job)
    deadline = time.monotonic() + 600
    while info["JobState"] not in slurm_local.FINISHED:
        assert time.monotonic() < deadline, sweep.context()
        with contextlib.suppress(OSError):
            token_modes.add((stat.S_IMODE(sweep.token_dir.stat().st_mode), stat.S_IMODE(token.stat().st_mode)))
        sockets |= tcp_sockets(slurm, slurm.job_processes(sweep.job))
        time.sleep(0.2)
        info = slurm.job(sweep.job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), sweep.context()

    out = sweep.output
    assert f"Ray head: {slurm.host} (127.0.0.1:6379); 1 node(s), each 2 CPUs and 0 GPUs" in out, sweep.context()
    assert "1 of 1 Ray nodes up" in out and "Sweep finished: 2 trials:" in out, sweep.context()
    assert "Final test, best checkpoint" in out, sweep.context()
    rows = sweep.trials()
    assert len(rows) == 2 and all(r["status"] in RAN_TO_END and r["epochs"] == "2" for r in rows), rows
    # the trials ran in Ray on the SLURM node, on loopback
    assert {(r["hostname"], r["node_ip"]) for r in rows} == {(slurm.host, "127.0.0.1")}, rows
    assert check_sweep(sweep.experiment, 2, [], 2, optuna_study=True) == []  # summary.json, report, Optuna agree
    # Only 127.0.0.1 was ever addressed, and Ray listened on it only; SLURM's daemons and srun listen on every
    # interface (0.0.0.0: SLURM 22.05 cannot be told otherwise), here those of the namespace
    loopback = {a for _, local, remote, _ in sockets for a in (local, remote)} - {"0.0.0.0", "::"}
    assert loopback and all(ipaddress.ip_address(a).is_loopback for a in loopback), sockets
    ray = {(name, local) for name, local, _, listens in sockets if listens and name not in SLURM_PROCESSES}
    assert ("gcs_server", "127.0.0.1") in ray and all(ipaddress.ip_address(a).is_loopback for _, a in ray), ray
    # the job made its token, in a folder and a file only its user can read, and removed both at its end
    assert token_modes == {(0o700, 0o600)}, token_modes
    sweep.assert_nothing_left()


def test_preempted_sweep_goes_back_to_the_queue_and_the_same_command_continues_it(slurm, tmp_path):
    """A real preemption: a job of a higher-priority partition needs the node (PreemptMode=REQUEUE with a grace
    time). SLURM sends SIGTERM to the job's steps (the Ray node) at once, and to the batch shell only when the grace
    time ends; sweep.sbatch requeues the job once its driver has given up, and SLURM runs the same command again,
    which continues the sweep (--resume auto): every result row reported before the preemption kept, none rerun."""
    samples, epochs = 3, 4
    sweep = Sweep(slurm, tmp_path, "slurm2", "--num-samples", str(samples), "--max-epochs", str(epochs),
                  # every epoch's full state: rows become visible epoch by epoch, and the resume continues from them
                  "--checkpoint-every", "1",
                  # One trial at a time, on twice the images: the preemption comes a second or two after the first
                  # row, and must still find most of the sweep to do (a warm trial's epoch on 22 images: 0.4 s).
                  "--max-concurrent", "1", images=96)
    sweep.wait_for_first_row()
    preemptor = slurm.preempt()
    preempted = time.monotonic()

    # back in the queue before the grace time ended: the script requeued it (SLURM would only at the grace time's
    # end; without the script's requeue the job ends as FAILED here and never runs again)
    slurm.wait_job(sweep.job, lambda i: i["Restarts"] == "1" or i["JobState"] in slurm_local.FINISHED,
                   timeout=slurm_local.PREEMPT_GRACE, what="requeued")
    assert time.monotonic() - preempted < slurm_local.PREEMPT_GRACE, sweep.context()
    deadline = time.monotonic() + 30  # the first run's processes end with its steps, before the second starts
    while slurm.job_processes(sweep.job) and slurm.job(sweep.job)["JobState"] != "RUNNING":
        assert time.monotonic() < deadline, slurm.job_processes(sweep.job)
        time.sleep(0.2)
    info = slurm.job(sweep.job)
    assert info["Restarts"] == "1" and info["JobState"] in ("PENDING", "RUNNING"), sweep.context()
    snapshot = read_rows(sweep.experiment)  # the second run reports its first row tens of seconds after its start
    assert 1 <= sum(map(len, snapshot.values())) < samples * epochs, snapshot  # work reported, and work left

    info = slurm.wait_done(sweep.job, timeout=600)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), sweep.context()
    pre = slurm.wait_done(preemptor, timeout=60)
    assert pre["JobState"] == "COMPLETED" and pre["StartTime"] <= info["StartTime"], (pre, info)

    out = sweep.output  # both runs, one after the other (--open-mode=append)
    assert f"sweep.sbatch: job {sweep.job} preempted, requeued" in out, sweep.context()
    assert out.count("1 of 1 Ray nodes up") == 2, sweep.context()
    assert out.count(f"Sweep finished: {samples} trials:") == 1 and "unfinished" not in out, sweep.context()
    rows = sweep.trials()
    assert len(rows) == samples and all(r["status"] in RAN_TO_END for r in rows), rows
    # nothing reported before the preemption lost or computed again, one Optuna trial each, outputs consistent
    assert check_sweep(sweep.experiment, samples, [snapshot], epochs, optuna_study=True) == []
    sweep.assert_nothing_left()


def test_sweep_signalled_with_scancel_is_continued_by_the_same_command(slurm, tmp_path):
    """`scancel --signal=TERM JOB`, as an admin or a user stops a job: SLURM signals the job's steps (the Ray
    node), not the batch shell, and the job does not go back to the queue: it ends, and submitting the README's
    command again (the same one, with --resume auto) completes the sweep without losing or repeating a result."""
    samples, epochs = 3, 4
    flags = ["--num-samples", str(samples), "--max-epochs", str(epochs), "--checkpoint-every", "1",
             "--max-concurrent", "1"]  # as in the preemption test: the signal comes with most of the sweep to do
    first = Sweep(slurm, tmp_path, "slurm3", *flags, images=96)
    first.wait_for_first_row()
    slurm.run("scancel", "--signal=TERM", first.job)
    info = slurm.wait_done(first.job, timeout=300)
    # the job ended without finishing the sweep, and stays ended: only a preemption requeues
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), first.context()
    assert "Sweep finished" not in first.output and "requeued" not in first.output, first.context()
    assert "sweep.sbatch: the sweep stopped before its end (exit" in first.output, first.context()
    assert "submit the same command again to continue it" in first.output, first.context()
    first.assert_nothing_left()
    snapshot = read_rows(first.experiment)
    assert 1 <= sum(map(len, snapshot.values())) < samples * epochs, snapshot  # work reported, and work left

    again = Sweep(slurm, tmp_path, "slurm3", *flags, images=96)  # the same command, a new job
    info = slurm.wait_done(again.job, timeout=600)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), again.context()
    assert f"Sweep finished: {samples} trials:" in again.output, again.context()
    rows = again.trials()
    assert len(rows) == samples and all(r["status"] in RAN_TO_END for r in rows), rows
    assert check_sweep(again.experiment, samples, [snapshot], epochs, optuna_study=True) == []
    again.assert_nothing_left()


def test_refused_input_ends_the_job_with_the_driver_s_reason_only(slurm, tmp_path):
    """A flag the driver refuses (exit 2) ends the job with the driver's message: nothing was started, so the
    script says nothing about continuing the sweep."""
    sweep = Sweep(slurm, tmp_path, "slurm4", "--max-epochs", "0")
    info = slurm.wait_done(sweep.job, timeout=300)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), sweep.context()
    assert "--max-epochs must be >= 1, got 0" in sweep.output, sweep.context()
    assert "stopped before its end" not in sweep.output and "Traceback" not in sweep.output, sweep.context()
    sweep.assert_nothing_left()
