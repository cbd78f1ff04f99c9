"""Two hosts on one machine: network namespaces joined by a veth pair, each running a Ray node started with
``ray start`` exactly as README.md's "By hand" recipe does (token authentication on, the token copied to the worker).

What makes them two hosts rather than two processes:
- each has its own network stack and address (``10.231.N.1`` and ``.2``, inside the two namespaces only: no route
  leaves them, nothing else on the machine sees those addresses);
- each has its own home folder (``~/.ray/auth_token``) and its own temporary folder for Ray (RAY_TMPDIR: the head's
  ``head-tmp/ray``, which Ray's worker nodes use too, and over which the second host mounts a tmpfs of its own).
  ``/tmp/ray`` is private on every real host: shared, one node's runtime-env agent deletes another's files, and
  ``--address auto`` reads whichever Ray on the machine last wrote ``ray_current_cluster``. The second host also
  has its own host name;
- the second host sees a ``private`` folder of its own (a tmpfs mounted over it in its mount namespace): a local
  ``--storage-path`` there is one the head has and the worker does not. Everything else, the project and its
  ``.venv`` included, both see at the same path, like an NFS-mounted home on a real cluster.

Processes are found through their network namespace (``ip netns pids``), never by name: ``ray stop`` would stop
every Ray on the machine, the test suite's own included."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
PORT = 6379
SECOND_HOSTNAME = "segtest-b"


def remove_stale_namespaces() -> None:
    """Namespaces (and their processes) of an earlier run that was killed before it could remove them: named after
    the test process's id, which is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in listed:
        match = re.fullmatch(r"sgt[AB](\d+)", name)
        if match and not Path(f"/proc/{match[1]}").exists():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class TwoHosts:
    def __init__(self, root: Path):
        tag = str(os.getpid())  # remove_stale_namespaces reads it back
        self.head_ns, self.worker_ns = f"sgtA{tag}", f"sgtB{tag}"
        subnet = 10 + os.getpid() % 240  # tests running side by side (other checkouts) get other subnets
        self.head_ip, self.worker_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.root = root
        self.head_home, self.worker_home = root / "home-head", root / "home-worker"
        self.shared = root / "shared"    # both hosts see it: the "NFS" folder
        self.private = root / "private"  # the worker sees an empty tmpfs here instead
        self.logs = root / "logs"
        # RAY_TMPDIR of both hosts: the head's own, the worker's a tmpfs on the path. Short: Ray's socket paths
        # under it must fit AF_UNIX's 107 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sgt{tag}-"))
        for folder in (self.head_home, self.worker_home, self.shared, self.private, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self._made: list[str] = []

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{PORT}"

    # -- environment of a command on a host ---------------------------------------------------------------------
    def env(self, home: Path, token: bool = True, **extra: str) -> dict[str, str]:
        """The process environment of a user on a host. Ray binds to the host's own address (the test suite's
        loopback switch, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, is for single-machine Ray and is left out)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS") and not k.startswith("RAY_AUTH")}
        env.update(HOME=str(home), PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", RAY_TMPDIR=str(self.tmp))
        if token:
            env["RAY_AUTH_MODE"] = "token"
        env.update(extra)
        return env

    def on_head(self, argv: list[str], token: bool = True, home: Path | None = None, **kwargs):
        """``argv`` run on the head host (its network namespace) as a user there; a CompletedProcess."""
        kwargs.setdefault("timeout", 600)
        return subprocess.run(["ip", "netns", "exec", self.head_ns, *argv],
                              env=self.env(home or self.head_home, token), capture_output=True, text=True, **kwargs)

    def popen_on_head(self, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "w") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.head_ns, *argv], env=self.env(self.head_home),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)

    # -- bring up / tear down -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._network()
        # Head node: README.md "By hand" (the token generated into ~/.ray/auth_token, mode 600)
        self._check(self.on_head(["bash", "-c", "(umask 077 && ray get-auth-token --generate > /dev/null) && "
                                  "chmod 600 ~/.ray/auth_token"]), "generate the token")
        self._check(self.on_head([RAY, "start", "--head", f"--port={PORT}", f"--node-ip-address={self.head_ip}",
                                  "--num-cpus=1"]), "ray start --head")
        # ... copied to the worker (the recipe's scp -p), private to its user
        (self.worker_home / ".ray").mkdir(mode=0o700, exist_ok=True)
        shutil.copy2(self.head_home / ".ray" / "auth_token", self.worker_home / ".ray" / "auth_token")
        # Worker node: its own mount and UTS namespaces for its private folders and host name
        script = (f"hostname {SECOND_HOSTNAME} && mount -t tmpfs segtest-private {self.private} && "
                  f"mount -t tmpfs segtest-tmp {self.tmp} && "
                  f"exec {RAY} start --address={self.address} --node-ip-address={self.worker_ip} --num-cpus=1")
        proc = subprocess.run(["ip", "netns", "exec", self.worker_ns, "unshare", "--mount", "--uts",
                               "--propagation", "private", "bash", "-c", script], env=self.env(self.worker_home),
                              capture_output=True, text=True, timeout=300)
        self._check(proc, "ray start --address (worker)")
        self.wait_for_nodes(2)

    def _network(self) -> None:
        remove_stale_namespaces()
        self._remove_namespaces()  # left by a killed run of this same process id
        run = [("netns", "add", self.head_ns), ("netns", "add", self.worker_ns),
               ("link", "add", f"{self.head_ns}v", "type", "veth", "peer", "name", f"{self.worker_ns}v"),
               ("link", "set", f"{self.head_ns}v", "netns", self.head_ns),
               ("link", "set", f"{self.worker_ns}v", "netns", self.worker_ns),
               ("-n", self.head_ns, "addr", "add", f"{self.head_ip}/24", "dev", f"{self.head_ns}v"),
               ("-n", self.worker_ns, "addr", "add", f"{self.worker_ip}/24", "dev", f"{self.worker_ns}v")]
        for ns in (self.head_ns, self.worker_ns):
            run += [("-n", ns, "link", "set", "lo", "up"), ("-n", ns, "link", "set", f"{ns}v", "up")]
        for args in run:
            proc = subprocess.run(["ip", *args], capture_output=True, text=True)
            self._check(proc, "ip " + " ".join(args))
            if args[:2] == ("netns", "add"):
                self._made.append(args[2])

    def wait_for_nodes(self, wanted: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive_nodes() == wanted:
                return
            time.sleep(1)
        raise AssertionError(f"{self.alive_nodes()} of {wanted} Ray nodes alive after {timeout} s")

    def alive_nodes(self) -> int:
        code = (f"import ray, logging; ray.init(address='{self.address}', logging_level=logging.ERROR, "
                "log_to_driver=False); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        proc = self.on_head([sys.executable, "-c", code], timeout=120)
        return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0

    def pids(self, ns: str) -> list[int]:
        proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []

    def worker_raylet(self) -> int:
        for pid in self.pids(self.worker_ns):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        raise AssertionError("no raylet on the second host")

    def stop(self) -> None:
        """Every process of both hosts killed, both namespaces (and with them the veth pair) removed."""
        self._remove_namespaces()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _remove_namespaces(self) -> None:
        for ns in (self.worker_ns, self.head_ns):
            for _ in range(3):
                pids = self.pids(ns)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.5)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    @staticmethod
    def _check(proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode:
            raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
