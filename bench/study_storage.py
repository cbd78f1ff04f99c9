"""Which storage for the sweep's Optuna study: SQLite (RDBStorage) or Optuna's journal file (JournalFileBackend)?

The sweep's driver is the study's only writer; what it does per trial is what is timed here, over the default
space's distributions (two log-uniform floats, seven categoricals): ask with seeded TPE (whose cost grows with the
trials it models, O(n log n) by design), report a value per epoch (``--epochs``), read the study back once per
commit (segtune.search.write_committed), tell the ending, and set the user attributes the sweep sets. For each N:
the milliseconds per ask at the end (the median of the last quarter), the whole loop's time per trial, and the
file's size; in-memory storage as the floor. TPE sees every trial in every storage: nothing is dropped from its
history to make it faster.

    python -m bench.study_storage                        # N = 100, 300, 1000
    python -m bench.study_storage --trials 100 --json out.json
    python -m bench.study_storage --quick                # N = 20: proves it runs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

STORAGES = ("sqlite", "journal", "memory")


def distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {"lr": FloatDistribution(1e-5, 1e-2, log=True), "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
            "batch_size": CategoricalDistribution([8, 16, 32]),
            "freeze": CategoricalDistribution(["none", "encoder", "decoder", "head", "encoder+decoder",
                                               "encoder+head", "decoder+head"]),
            "encoder": CategoricalDistribution(["resnet18", "resnet34", "efficientnet-b0", "mobilenet_v2"]),
            "arch": CategoricalDistribution(["fpn", "unet", "deeplabv3plus", "linknet"]),
            "optimizer": CategoricalDistribution(["adam", "adamw", "sgd"]),
            "scheduler": CategoricalDistribution(["cosine", "onecycle", "step", "none"]),
            "loss": CategoricalDistribution(["dice", "bce", "dice+bce", "focal"])}


def storage_for(kind: str, folder: Path):
    import optuna

    if kind == "sqlite":
        return optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}"), folder / "optuna.db"
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        path = folder / "optuna.journal"
        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), path
    return optuna.storages.InMemoryStorage(), None


def run(kind: str, n: int, epochs: int, folder: Path) -> dict:
    import math
    import random

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, path = storage_for(kind, folder)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=10)
    study = optuna.create_study(study_name="bench", storage=storage, sampler=sampler, direction="maximize")
    space, rng = distributions(), random.Random(0)
    asks, started = [], time.perf_counter()
    for number in range(n):
        t = time.perf_counter()
        trial = study.ask(space)
        asks.append(time.perf_counter() - t)
        trial.set_user_attr("ray_trial_id", f"t{number:05d}")
        trial.set_user_attr("run_name", f"{number:03d}-{trial.params['arch']}-{trial.params['encoder']}")
        quality = 0.9 - 0.08 * abs(math.log10(trial.params["lr"]) + 3.3) - 0.1 * rng.random()
        ran = 1 if rng.random() < 2 / 3 else epochs  # as ASHA: most stop at the first rung
        for step in range(1, ran + 1):
            trial.report(quality * (1 - 0.5 ** (step + 1)), step)
            study.get_trials(deepcopy=False)  # the commit's read-back (write_committed)
        trial.set_user_attr("outcome", "completed" if ran == epochs else "stopped early")
        if ran == epochs:
            study.tell(trial, quality * (1 - 0.5 ** (epochs + 1)))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    whole = time.perf_counter() - started
    assert len(study.get_trials(deepcopy=False)) == n  # every trial is there, read back
    tail = asks[-max(1, n // 4):]
    return {"storage": kind, "n": n, "ask_ms": round(1000 * statistics.median(tail), 2),
            "per_trial_ms": round(1000 * whole / n, 2), "whole_s": round(whole, 2),
            "file_kb": round(os.path.getsize(path) / 1024, 1) if path else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    p.add_argument("--epochs", type=int, default=3, help="steps of a trial that is not stopped at the first")
    p.add_argument("--quick", action="store_true", help="N = 20: proves it runs")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.quick:
        args.trials = [20]
    runs = []
    print(f"{'N':>5} {'storage':>8} {'ask ms':>8} {'ms/trial':>9} {'file KB':>8}")
    for n in args.trials:
        for kind in args.storages:
            with tempfile.TemporaryDirectory(prefix="bench-study-") as folder:
                r = run(kind, n, args.epochs, Path(folder))
            runs.append(r)
            print(f"{n:>5} {kind:>8} {r['ask_ms']:>8.1f} {r['per_trial_ms']:>9.1f} "
                  f"{'-' if r['file_kb'] is None else r['file_kb']:>8}", flush=True)
    for n in args.trials:
        by = {r["storage"]: r for r in runs if r["n"] == n}
        if "sqlite" in by and "journal" in by:
            ratio = by["sqlite"]["per_trial_ms"] / by["journal"]["per_trial_ms"]
            print(f"N={n}: per trial, sqlite / journal = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"config": {**vars(args), "json": str(args.json)}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
