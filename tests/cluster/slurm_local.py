"""A throwaway single-node SLURM for a test: Debian's slurm-wlm and munge, daemons of its own, nothing in /etc.

    slurm = start(tmp_path / "slurm")                   # the `slurm` fixture in test_slurm.py does this
    try:
        job = slurm.sbatch(["--wrap", "hostname"], cwd=tmp_path)
        slurm.wait_done(job, timeout=60)["JobState"]      # "COMPLETED"
    finally:
        leftovers = stop(slurm)                          # [] unless a job's processes outlived SLURM

Everything lives in one folder: slurm.conf (found through SLURM_CONF by the daemons, by every client the test runs
and by the jobs, which inherit it), a fresh munge key, the state, spool, log and pid files. /etc is not touched.

Network: the daemons, and so every job and its Ray, run in a network namespace of their own (`ip netns`) with no
way out: loopback, and an interface that leads nowhere (see start()); the test's SLURM commands enter it too
(LocalSlurm.run). The controller and the node are 127.0.0.1 there (SlurmctldHost=<host>(127.0.0.1),
NodeAddr=127.0.0.1). So nothing can reach any other host, the ports SLURM (6817, 6818) and Ray (6379, 8265, as
sweep.sbatch uses them) listen on clash with nothing else on the machine, and SLURM's daemons, which listen on every
interface (22.05 has no setting for it), are not reachable from outside. munged's socket is a file, the same in
every namespace. If the test process is killed outright, its daemons outlive it: a later run (with the same pid)
deletes the namespace it left, and `ip netns list` shows it as segslurm<pid>.

Lifetime: munged, slurmctld and slurmd run in the foreground (-F / -D) as children of the test, each in a session of
its own. When the block ends, also when it fails, running jobs are cancelled, the daemons get SIGTERM (SIGKILL
after a while), any process still carrying this instance's SLURM_CONF in its environment (a job's leftovers) is
killed and reported, and the namespace is deleted.

What this container lacks and how the config copes:
- no systemd, and cgroups that SLURM cannot manage here: ProctrackType=proctrack/linuxproc (a job step's processes
  are its process tree), TaskPlugin=task/none, no cgroup.conf, no memory enforcement;
- no slurmdbd: AccountingStorageType=accounting_storage/none, so sacct has nothing; a job's state and exit code
  come from `scontrol show job` (MinJobAge keeps them 10 minutes after its end) and jobcomp/filetxt.

Preemption is the real thing, by partition priority: jobs go to the default partition `batch` (PriorityTier=1,
PreemptMode=REQUEUE, GraceTime=PREEMPT_GRACE); a job of the partition `urgent` (PriorityTier=2) that needs the node
preempts them (LocalSlurm.preempt). As SLURM 22.05 does it (checked here): at once SIGCONT and SIGTERM to the
processes of the job's steps (srun), not to the batch shell; when the grace time ends, SIGTERM to everything, the
batch shell too, and SIGKILL KillWait later; then the job goes back to the queue. A job that ends by itself during
the grace time is not requeued.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PACKAGES = ["slurm-wlm", "munge", "iproute2", "util-linux"]
COMMANDS = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel", "ip",
            "nsenter"]
PREEMPT_GRACE = 120  # seconds from a preemption's first SIGTERM to the one for everything (then KILL_WAIT)
KILL_WAIT = 30  # seconds between SIGTERM and SIGKILL when a job is cancelled or its grace time ends
# A requeued job may start again only once the credentials of its last run have expired (120 s by default); a step
# launch must also be done within it, which takes well under a second here
CRED_EXPIRE = 10
PLACEHOLDER_ADDRESS = "192.0.2.1"  # see start()
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE")


class Unavailable(Exception):
    """This machine cannot run the local SLURM (the reason is the message): the test skips."""


def node_hardware() -> dict[str, str]:
    """This machine as slurmd sees it (`slurmd -C`): CPUs, boards, sockets, cores, threads, RealMemory (MB)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.splitlines()[0].split())
    fields.pop("NodeName", None)
    return fields


@dataclass
class LocalSlurm:
    root: Path
    host: str  # the node's name: this machine's short host name, as slurmd and the batch script see it
    netns: str  # the network namespace the daemons and jobs run in
    env: dict[str, str]  # os.environ without SLURM's variables, + SLURM_CONF: every SLURM command's and job's
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def enter(self) -> list[str]:
        """The command prefix that runs a command in the namespace. Not `ip netns exec`: it also mounts a /sys of
        the namespace's own, without /sys/fs/cgroup, and slurmd will not start without that."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"]

    def run(self, *argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """A command in this SLURM's network namespace, with its environment (``env=`` replaces it)."""
        proc = subprocess.run([*self.enter, *argv], env=kw.pop("env", self.env),
                              capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit; returns the job id. ``env`` is added to this instance's environment (sbatch passes it on)."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd, env={**self.env, **(env or {})}).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, StartTime, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, until: Callable[[dict[str, str]], bool], timeout: float, what: str = "",
                 poll: float = 0.5) -> dict[str, str]:
        """Poll `scontrol show job` until ``until(info)``; returns that info."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if until(info):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: not {what or 'there'} after {timeout:.0f} s: {info}\n{self.logs()}")
            time.sleep(poll)

    def wait_done(self, job_id: str, timeout: float) -> dict[str, str]:
        """Until the job has ended and is not going to run again (COMPLETED, FAILED, CANCELLED, ...)."""
        return self.wait_job(job_id, lambda info: info.get("JobState") in FINISHED, timeout, "finished")

    def preempt(self) -> str:
        """Preempt what runs on the node as a cluster does: a job of a higher-priority partition needs the whole
        node. It holds the node for a second and ends; returns its job id."""
        return self.sbatch(["--partition=urgent", "--exclusive", "--job-name=preemptor",
                            f"--output={self.root}/log/preemptor-%j.out", "--wrap", "sleep 1"], cwd=self.root)

    def job_processes(self, job_id: str | None = None) -> list[int]:
        """Live processes of this instance's jobs (of job ``job_id``): SLURM_CONF (and SLURM_JOB_ID) in their
        environment, which every process a job starts inherits, Ray's included."""
        wanted = [f"SLURM_CONF={self.conf}".encode()]
        if job_id is not None:
            wanted.append(f"SLURM_JOB_ID={job_id}".encode())
        return processes_with(wanted, exclude={p.pid for p in self.procs.values()})

    def logs(self, tail: int = 2500) -> str:
        texts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            if path.exists():
                texts.append(f"--- {name} (tail)\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(texts)


def processes_with(markers: list[bytes], exclude: set[int] = frozenset()) -> list[int]:
    """Pids whose environment holds every one of ``markers`` (exact VAR=value entries); zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == os.getpid():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            if all(m in environ for m in markers) and " Z " not in (entry / "stat").read_text().split(")", 1)[1][:3]:
                found.append(int(entry.name))
        except (OSError, IndexError):  # gone, or a kernel thread
            continue
    return found


def write_config(root: Path, host: str, hardware: dict[str, str]) -> None:
    for sub in ("etc", "state", "spool", "log", "run", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)  # munged refuses a key or socket folder that others may write to
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(128))  # this instance's own key, not /etc/munge/munge.key
    key.chmod(0o400)
    (root / "etc" / "plugstack.conf").write_text("")  # no SPANK plugins (not /etc/slurm/plugstack.conf)
    node = " ".join(f"{k}={v}" for k, v in hardware.items())
    (root / "etc" / "slurm.conf").write_text(f"""\
ClusterName=segtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire={CRED_EXPIRE}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait={KILL_WAIT}
InactiveLimit=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={host} NodeAddr=127.0.0.1 NodeHostname={host} {node} State=UNKNOWN
PartitionName=batch Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE \
GraceTime={PREEMPT_GRACE}
PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
""")


def _netns(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", *argv], capture_output=True, text=True, timeout=30)


def _start(slurm: LocalSlurm, name: str, argv: list[str]) -> None:
    with open(slurm.root / "log" / f"{name}.stdout", "w") as out:  # what a daemon says before its log file opens
        slurm.procs[name] = subprocess.Popen([*slurm.enter, *argv], env=slurm.env,
                                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)


def _wait_for(what: str, condition: Callable[[], bool], slurm: LocalSlurm, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for name, proc in slurm.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode} while waiting for {what}\n{slurm.logs()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s\n{slurm.logs()}")
        time.sleep(0.2)


def start(root: Path) -> LocalSlurm:
    """Write the config, make the namespace, start munged, slurmctld and slurmd; returns once the node is idle.
    Raises Unavailable when the namespace cannot be made; on any failure, what was started is stopped first."""
    host = socket.gethostname().split(".")[0]
    netns = f"segslurm{os.getpid()}"
    write_config(root, host, node_hardware())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    slurm = LocalSlurm(root=root, host=host, netns=netns, env={**env, "SLURM_CONF": str(root / "etc" / "slurm.conf")})
    if _netns("pids", netns).returncode == 0:  # a namespace this pid's earlier run left: pytest's pid was reused
        _netns("delete", netns)
    made = _netns("add", netns)
    if made.returncode:
        raise Unavailable(f"`ip netns add {netns}` failed: {made.stderr.strip()}")
    try:
        slurm.run("ip", "link", "set", "lo", "up")
        # SLURM finds the address to listen on with getaddrinfo(AI_ADDRCONFIG), which returns nothing on a host whose
        # only IPv4 address is loopback. An interface that leads nowhere (a veth pair with both ends in the
        # namespace; this kernel has no dummy interfaces) with an address of TEST-NET-1 (RFC 5737, never routed)
        # satisfies it. Nothing is sent to it: everything is configured on 127.0.0.1, and the test checks it.
        slurm.run("ip", "link", "add", "nowhere0", "type", "veth", "peer", "name", "nowhere1")
        slurm.run("ip", "addr", "add", f"{PLACEHOLDER_ADDRESS}/32", "dev", "nowhere0")
        slurm.run("ip", "link", "set", "nowhere0", "up")
        m = root / "munge"
        _start(slurm, "munged", ["munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                                 f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                                 f"--log-file={root}/log/munged.log", f"--seed-file={m}/munged.seed"])
        _wait_for("munged's socket", (m / "munge.socket").exists, slurm)
        _start(slurm, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(slurm.conf)])  # -i: no state to recover
        _wait_for("slurmctld", lambda: slurm.run("scontrol", "ping", check=False).returncode == 0, slurm)
        _start(slurm, "slurmd", ["slurmd", "-D", "-N", host, "-f", str(slurm.conf)])
        _wait_for(f"node {host} idle", lambda: set(slurm.run("sinfo", "-h", "-N", "-o", "%T", "-n", host,
                                                             check=False).stdout.split()) == {"idle"}, slurm)
    except BaseException:
        stop(slurm)
        raise
    return slurm


def stop(slurm: LocalSlurm, timeout: float = 60) -> list[int]:
    """Cancel every job, stop the daemons, kill what the jobs left, delete the namespace; returns the pids that
    had to be killed."""
    if "slurmctld" in slurm.procs and slurm.procs["slurmctld"].poll() is None:
        with contextlib.suppress(Exception):
            slurm.run("scancel", "--full", "--quiet", "--user", "root", check=False)  # TERM, KILL after KillWait
            deadline = time.monotonic() + KILL_WAIT + 15
            while time.monotonic() < deadline and slurm.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):  # the reverse of the start
        proc = slurm.procs.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    left = slurm.job_processes()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _netns("delete", slurm.netns)
    return left
