"""Where a command's CPU goes: every process on the machine sampled from /proc while the command runs, its CPU
time summed by kind (Ray's trial and task workers, Ray's own daemons, sweep drivers, pytest, kernel threads, ...).

Made to answer why the suite takes the time it does (README, "Where the suite's time goes"): on 2 cores the suite
keeps both busy, so its wall time is its CPU time, and this says whose. A process's CPU is read from
/proc/PID/stat (user + system) every ``--interval`` seconds; a process that lives shorter than that is missed, and
one's last fraction of an interval is lost (processes here live seconds to minutes). Whether a process imported
torch is read from its memory map (libtorch mapped), once per process. The machine's own busy time
(/proc/stat) is printed beside the sum, so what the sampling missed shows.

    python -m bench.cpu_by_process [--interval 0.5] [--json out.json] -- make test
    python -m bench.cpu_by_process -- .venv/bin/python tune_main.py --synthetic --space smoke
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")

# Ray's processes by what their command line runs (Ray 2.60: each daemon is a script of its own or a binary)
RAY_DAEMONS = (("gcs_server", "ray: gcs_server"), ("/raylet", "ray: raylet"),
               ("dashboard/agent.py", "ray: dashboard agent"), ("dashboard/dashboard.py", "ray: dashboard"),
               ("runtime_env/agent", "ray: runtime_env agent"),
               ("log_monitor.py", "ray: log monitor"), ("autoscaler/_private/monitor.py", "ray: autoscaler monitor"))


def kind(cmdline: str, comm: str, ray_name: str | None = None) -> str:
    """A process's kind, from its command line (a kernel thread has none: its name). A Ray worker by the first name
    it ran under other than ray::IDLE (ray::ImplicitFunc: a trial; a task by its function's name)."""
    if not cmdline:
        return f"kernel: {comm}"
    if "default_worker.py" in cmdline or cmdline.startswith("ray::"):
        return f"ray: worker {ray_name or '(unnamed)'}"
    for needle, name in RAY_DAEMONS:
        if needle in cmdline:
            return name
    args = cmdline.split()
    if "xdist" in cmdline or "execnet" in cmdline or "exec(eval(sys.stdin" in cmdline:
        return "pytest-xdist worker"
    script = next((a for a in args[1:] if not a.startswith("-") or a == "-c"), "")
    if "-m" in args[:3]:
        script = args[args.index("-m") + 1] if args.index("-m") + 1 < len(args) else ""
    name = Path(args[0]).name
    if script.endswith("tune_main.py"):
        return "tune_main.py (sweep drivers)"
    if script == "-c":
        return f"{name} -c"
    if script:
        return f"{name} {Path(script).name if '/' in script else script}"
    return name


def read_process(pid: str) -> tuple[str, str, float, int] | None:
    """(command line, name, CPU seconds so far, start time in ticks) of ``pid``, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    return cmdline, comm, (int(rest[11]) + int(rest[12])) / TICKS, int(rest[19])


def imported_torch(pid: str) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def machine_busy() -> float:
    """CPU seconds the machine has been busy since boot (all cores; idle and iowait excluded)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


class Sampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.seen: dict[tuple[str, int], dict] = {}  # (pid, start) -> its record: a reused pid is a new process
        self.before = {pid: p[2] for pid in self.pids() if (p := read_process(pid))}  # CPU spent before the run

    @staticmethod
    def pids() -> list[str]:
        return [p for p in os.listdir("/proc") if p.isdigit()]

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        for pid in self.pids():
            got = read_process(pid)
            if got is None:
                continue
            cmdline, comm, cpu, start = got
            record = self.seen.setdefault((pid, start), {"pid": int(pid), "cmdline": cmdline[:300], "comm": comm,
                                                          "cpu_s": 0.0, "torch": False,
                                                          "before_s": self.before.get(pid, 0.0)})
            if cmdline.startswith("ray::") and record.get("ray_name") in (None, "ray::IDLE"):
                record["ray_name"] = cmdline.split()[0]  # a Ray worker names itself after what it runs
            record["cmdline"] = record["cmdline"] or cmdline[:300]
            record["cpu_s"] = max(record["cpu_s"], cpu - record["before_s"])
            # torch's import alone takes over 0.5 s; the memory map is read again only after another second of
            # CPU (reading it every sample for each daemon cost the sampler more than all its other work)
            if not record["torch"] and cpu - record.get("maps_read_at", -0.5) >= 1.0:
                record["maps_read_at"] = cpu
                record["torch"] = imported_torch(pid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval", type=float, default=0.5, help="seconds between two samples of /proc")
    p.add_argument("--json", help="write every process's record and the totals here")
    p.add_argument("--top", type=int, default=25, help="kinds to list")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    a = p.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("give the command to run after --")
    sampler = Sampler(a.interval)
    busy0, started = machine_busy(), time.perf_counter()
    sampler.start()
    code = subprocess.call(command)
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    busy = machine_busy() - busy0
    records = [r for r in sampler.seen.values() if r["cpu_s"] > 0]
    me = os.getpid()
    by_kind: dict[str, dict] = {}
    for r in records:
        k = "this sampler" if r["pid"] == me else kind(r["cmdline"], r["comm"], r.get("ray_name"))
        entry = by_kind.setdefault(k, {"processes": 0, "cpu_s": 0.0, "torch_processes": 0})
        entry["processes"] += 1
        entry["cpu_s"] += r["cpu_s"]
        entry["torch_processes"] += r["torch"]
    sampled = sum(e["cpu_s"] for e in by_kind.values())
    torch = [r for r in records if r["torch"]]
    torch_s = sum(r["cpu_s"] for r in torch)
    cores = os.cpu_count() or 1
    print(f"\n{' '.join(command)}: exit {code}, wall {wall:.1f} s on {cores} cores; machine busy {busy:.0f} core-s "
          f"({busy / (wall * cores):.0%} of what the cores could give), sampled {sampled:.0f} core-s")
    print(f"{'core-s':>8} {'share':>6} {'procs':>6} {'torch':>6}  kind")
    for k, e in sorted(by_kind.items(), key=lambda kv: -kv[1]["cpu_s"])[:a.top]:
        print(f"{e['cpu_s']:8.1f} {e['cpu_s'] / max(busy, 1e-9):6.1%} {e['processes']:6d} {e['torch_processes']:6d}"
              f"  {k}")
    print(f"processes that imported torch: {len(torch)}, {torch_s:.0f} core-s = {torch_s / max(busy, 1e-9):.0%} of "
          f"the machine's busy time ({torch_s / max(len(torch), 1):.1f} core-s each)")
    if a.json:
        Path(a.json).write_text(json.dumps({"command": command, "exit": code, "wall_s": round(wall, 2), "cores": cores,
                                            "busy_core_s": round(busy, 2), "sampled_core_s": round(sampled, 2),
                                            "torch_processes": len(torch), "torch_core_s": round(torch_s, 2),
                                            "by_kind": by_kind, "processes": records}, indent=1))
    sys.exit(code)


if __name__ == "__main__":
    main()
