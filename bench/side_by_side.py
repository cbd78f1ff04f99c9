"""Do two trials on two cores slow each other? Bare steps of two grid configs alone, then both at once.

The sweep's floor (bench/sweep_efficiency.py) is the configs' bare steps run one after another in one process,
divided over the cores: it assumes that two trials side by side each run as fast as one alone. This measures that
assumption: each config's bare steps (``sweep_efficiency.bare_steps``: one thread, tensors preloaded) in a fresh
process alone, then the two configs in two processes at once, in turns, medians. A ratio together / alone above 1
is what sharing the machine (memory bandwidth, caches, the kernel) costs the trials, which no sweep can avoid.

Each process also reports its minor page faults and its system CPU time: the share of the steps the kernel spends
mapping the memory torch's CPU allocator frees and asks for again at every step (tensors over glibc's 32 MB mmap
limit are returned to the kernel when freed).

    python -m bench.side_by_side [--grid unet-lr-bs] [--image-size 64] [--epochs 8] [--rounds 2] [--json out.json]
    python -m bench.side_by_side --quick
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.sweep_efficiency import GRIDS

REPO = Path(__file__).resolve().parents[1]

# One config's bare steps in a fresh process: prints {"steps_s", "minflt", "sys_s", "user_s"}.
PROBE = """
import json, resource, sys
from pathlib import Path

import torch

from bench.sweep_efficiency import bare_steps, grid_configs

torch.set_num_threads(1)
data, grid, size, epochs, index = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = grid_configs(Path(data), grid, size, epochs)[index]
before = resource.getrusage(resource.RUSAGE_SELF)
steps = bare_steps(cfg)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"steps_s": steps, "minflt": after.ru_minflt - before.ru_minflt,
                  "sys_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime}))
"""


def start(data: Path, args, index: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROBE, str(data), args.grid, str(args.image_size),
                             str(args.epochs), str(index)], cwd=REPO, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"bare steps failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", choices=sorted(GRIDS), default="unet-lr-bs")
    p.add_argument("--configs", type=int, nargs=2, default=[0, 1], metavar="I",
                   help="the two grid configs, by index (default 0 1: batch 8 and 16 in unet-lr-bs)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-images", type=int, default=96, help="generated images (half for trainval)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.num_images, args.rounds = 1, 48, 1
    runs: dict[str, list[dict]] = {"alone": [], "together": []}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        os.environ.setdefault("SEGCORE_CACHE_DIR", str(Path(tmp) / "cache"))
        from segcore.synthetic import generate

        data = Path(tmp) / "data"
        generate(data, num=args.num_images, seed=0, min_size=64, max_size=128)  # as sweep_efficiency makes it
        for _ in range(args.rounds):
            runs["alone"].append({str(i): finish(start(data, args, i)) for i in args.configs})
            procs = {str(i): start(data, args, i) for i in args.configs}
            runs["together"].append({i: finish(proc) for i, proc in procs.items()})
    out = {"grid": args.grid, "configs": args.configs, "image_size": args.image_size, "epochs": args.epochs,
           "num_images": args.num_images, "rounds": args.rounds, "cores": len(os.sched_getaffinity(0)), "runs": runs,
           "ratio": {}}
    print(f"{args.grid} configs {args.configs}, {args.image_size} px, {args.epochs} epochs, {args.rounds} rounds "
          f"(medians)")
    for i in map(str, args.configs):
        alone, together = ([r[i] for r in runs[way]] for way in ("alone", "together"))
        med = {way: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
               for way, rows in (("alone", alone), ("together", together))}
        ratio = med["together"]["steps_s"] / med["alone"]["steps_s"]
        out["ratio"][i] = round(ratio, 3)
        out.setdefault("median", {})[i] = med
        for way in ("alone", "together"):
            m = med[way]
            print(f"  config {i} {way:8s}: steps {m['steps_s']:6.2f}s, system time {m['sys_s']:5.2f}s "
                  f"({m['sys_s'] / (m['sys_s'] + m['user_s']):.0%} of its CPU), {m['minflt'] / 1e3:.0f}k page faults")
        print(f"  config {i}: together / alone = {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
