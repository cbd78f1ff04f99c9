"""Every bench/ script runs end to end on tiny sizes (--quick) and writes consistent figures.

Speed itself is never asserted here: the figures are measured by hand and recorded in BENCHMARKS.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

RATE_KEYS = ("steady_img_s_core", "amortised_img_s_core")
BUILD_KEYS = ("build_seconds", "build_images", "build_threads", "build_img_s_core")


def run_quick(script: str, tmp_path, env: dict | None = None, timeout: float = 900) -> tuple[str, dict]:
    """Run a bench script (a path, or ``-m module``) with --quick; its stdout and the figures it wrote to --json.
    (The timeout only ends a hung run: quick sweeps take 1-2 minutes, and over 5 beside a loaded machine's work.)"""
    out = tmp_path / "figures.json"
    proc = run_cli(*script.split(), "--quick", "--json", str(out), cwd=REPO, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_quick_data_throughput_runs_and_writes_json(tmp_path):
    cache = tmp_path / "cache"
    stdout, figures = run_quick("bench/data_throughput.py", tmp_path, env={"SEGCORE_CACHE_DIR": str(cache)})
    assert "segcore / per-item" in stdout and "images / s / core" in stdout

    assert figures["config"]["quick"] is True and figures["config"]["cores"] >= 1
    assert figures["runs"], "no run recorded"
    for run in figures["runs"]:
        assert run["workers"] >= 0
        for key in RATE_KEYS + ("images_per_epoch",):
            assert run["per_item"][key] > 0, key
            assert run["segcore"][key] > 0, key
        for key in BUILD_KEYS:
            assert run["segcore"][key] > 0, key
        assert all(t > 0 for t in run["per_item"]["epoch_seconds"] + run["segcore"]["epoch_seconds"])
        assert run["ratio_steady"] > 0 and run["ratio_amortised"] > 0
    # the fresh per-run cache folder is removed again: nothing left behind in the user's cache location
    assert not any(cache.glob("bench-cache-*"))


@pytest.mark.slow
def test_quick_sweep_efficiency_joins_a_ray_started_before_each_sweep_and_writes_json(tmp_path):
    """--ray running: each sweep joins a head the bench started for it (token authentication on), as on a cluster;
    the bench itself checks in the head's logs that the sweep's driver joined it, and fails otherwise. (The local
    way differs only in not passing --address: every other sweep of the suite starts its own Ray.)"""
    stdout, fig = run_quick("bench/sweep_efficiency.py --ray running", tmp_path)
    assert "wall / floor =" in stdout
    assert (fig["configs"], fig["epochs"], fig["image_size"]) == (4, 1, 64)
    assert fig["bare_total_s"] > 0 and fig["floor_s"] == pytest.approx(fig["bare_total_s"] / fig["cores"], abs=0.01)
    # the floor again with the trials' allocator settings, in a process of its own
    assert fig["floor_trials_allocator_s"] == pytest.approx(fig["bare_total_trials_allocator_s"] / fig["cores"],
                                                            abs=0.01) and fig["bare_total_trials_allocator_s"] > 0
    assert fig["ray"] == "running" and list(fig["runs"]) == ["1@running-ray", "auto@running-ray"]
    for run in fig["runs"].values():
        assert run["wall_over_floor"] == pytest.approx(run["wall_s"] / fig["floor_s"], rel=0.01)  # both rounded
        assert run["wall_over_floor_trials_allocator"] == pytest.approx(run["wall_s"] / fig["floor_trials_allocator_s"],
                                                                        rel=0.01)
        # start-up and tail lie inside the sweep's wall time: the trial spans were read from the real result.json
        assert 0 < run["startup_s"] and 0 <= run["tail_s"] and run["startup_s"] + run["tail_s"] < run["wall_s"]
        assert run["trials_total_s"] > 0 and run["epochs"] == 4
    # one epoch each: the full state every epoch, against the weights alone (the first epoch always improves)
    assert fig["runs"]["auto@running-ray"]["checkpoint_mb_per_epoch"] < \
        fig["runs"]["1@running-ray"]["checkpoint_mb_per_epoch"]
    assert "(joined a running Ray)" in stdout and "joining a running Ray" in stdout
    # the plain pattern (bench/plain_sweep.py) ran the same 4 configs, and the ratio is of the two walls
    plain = fig["plain"]
    assert plain["trials"] == 4 and plain["wall_s"] > 0
    assert plain["plain_over_sweep"] == pytest.approx(plain["wall_s"] / fig["runs"]["auto@running-ray"]["wall_s"],
                                                      rel=0.01)
    assert "the sweep is" in stdout and "faster" in stdout


@pytest.mark.slow
def test_quick_epoch_overhead_times_the_same_epochs_four_ways(tmp_path):
    stdout, fig = run_quick("-m bench.epoch_overhead", tmp_path)
    assert (fig["arch"], fig["epochs"]) == ("unet", 2)
    assert fig["epochs_reported"] == [2]  # every trial loop ran and reported both epochs
    assert set(fig["seconds"]) == {"bare", "loop", "policy", "policy_lightning_io"}
    for name, seconds in fig["seconds"].items():
        assert all(s > 0 for s in seconds)
        assert fig["over_bare"][name] == pytest.approx(min(seconds) / min(fig["seconds"]["bare"]), rel=0.01)
    assert "x bare" in stdout


@pytest.mark.slow
def test_quick_asha_vs_fifo_runs_the_same_configs_under_both(tmp_path, shared_ray):
    with shared_ray.joined() as join:  # both sweeps join the session's Ray (what is checked is not Ray's start)
        stdout, fig = run_quick(f"bench/asha_vs_fifo.py --address {join.address}", tmp_path, env=join.env)
    assert "epochs ASHA / FIFO =" in stdout
    assert fig["same_configs"] is True
    n, max_epochs = fig["num_samples"], fig["max_epochs"]
    assert fig["fifo"]["epochs"] == n * max_epochs and fig["fifo"]["stopped_early"] == 0  # FIFO runs every epoch
    assert n * fig["grace_period"] <= fig["asha"]["epochs"] <= n * max_epochs
    assert fig["epoch_ratio"] == pytest.approx(fig["asha"]["epochs"] / fig["fifo"]["epochs"])
    assert fig["best_diff"] == pytest.approx(fig["asha"]["best"] - fig["fifo"]["best"])
    assert 0 <= fig["asha"]["best"] <= 1 and 0 <= fig["fifo"]["best"] <= 1


@pytest.mark.slow
def test_quick_trial_start_runs_and_writes_json(tmp_path):
    stdout, fig = run_quick("-m bench.trial_start", tmp_path)
    assert "plain / hook" in stdout and "plain / warm" in stdout
    assert [r["way"] for r in fig["runs"]] == ["plain", "hook", "warm"]
    assert (fig["driver_work"], fig["trials"]) == (1.0, 1)
    plain, hook, warm = fig["runs"]
    # the hook ran in the trial's process before the trainable (it imported what trials import); without it the
    # trainable imported it itself
    assert plain["preloaded"] == [False] and hook["preloaded"] == [True], fig["runs"]
    # the warming tasks ran in workers of their own; a trial found its imports done exactly when it ran in one
    assert len(warm["warm_pids"]) == 1 and plain["warm_pids"] == [] and not plain["reused"]
    assert [pid in warm["warm_pids"] for pid in warm["pids"]] == warm["preloaded"], warm
    assert warm["reused"] == any(warm["preloaded"]), warm  # what the bench says is what the trial found
    for run in fig["runs"]:
        assert 0 < run["to_entered"] <= run["to_imported"], run
    assert fig["plain_over_hook"] == pytest.approx(fig["best"]["plain"] / fig["best"]["hook"])
    assert fig["plain_over_warm"] == pytest.approx(fig["best"]["plain"] / fig["best"]["warm"])


@pytest.mark.slow
def test_quick_startup_ab_runs_both_checkouts_and_writes_json(tmp_path):
    stdout, fig = run_quick("-m bench.startup_ab --baseline HEAD", tmp_path)
    assert "baseline / this" in stdout
    assert [(r["way"], r["round"]) for r in fig["runs"]] == [("this", 0), ("baseline", 0)]
    for run in fig["runs"]:  # read from the real result.json of each sweep: inside its wall time
        assert 0 < run["startup_s"] and 0 <= run["tail_s"] and run["startup_s"] + run["tail_s"] < run["wall_s"], run
    for key in ("wall_s", "startup_s", "tail_s"):
        this, base = fig["median"]["this"][key], fig["median"]["baseline"][key]
        assert fig["baseline_over_this"][key] == (pytest.approx(base / this, abs=0.01) if this else None), key
    # the baseline's worktree is gone again
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    assert "startup-ab-" not in worktrees


@pytest.mark.slow
def test_quick_ray_start_times_both_ways_and_writes_json(tmp_path):
    stdout, fig = run_quick("-m bench.ray_start", tmp_path)
    assert "prestarted / none" in stdout
    assert set(fig["runs"]) == {"prestarted", "none prestarted"} and fig["rounds"] == 1
    for way, [run] in fig["runs"].items():  # two actors ready after ray.init returned
        assert 0 < run["init_s"] < run["actors_s"], (way, run)
        assert fig["medians"][way] == {k: round(v, 2) for k, v in run.items()}


@pytest.mark.slow
def test_quick_side_by_side_times_each_config_alone_and_together(tmp_path):
    stdout, fig = run_quick("-m bench.side_by_side", tmp_path)
    assert "together / alone" in stdout and fig["configs"] == [0, 1] and fig["rounds"] == 1
    for way in ("alone", "together"):
        [run] = fig["runs"][way]
        assert set(run) == {"0", "1"}
        for probe in run.values():  # each process timed its own steps and read its own counters
            assert probe["steps_s"] > 0 and probe["minflt"] > 0 and probe["user_s"] > 0, (way, probe)
    for i in ("0", "1"):
        assert fig["ratio"][i] == round(fig["runs"]["together"][0][i]["steps_s"] /
                                        fig["runs"]["alone"][0][i]["steps_s"], 3)


@pytest.mark.slow
def test_cpu_by_process_finds_a_torch_process_under_its_kind_and_passes_its_exit_code_on(tmp_path):
    out = tmp_path / "cpu.json"
    python = sys.executable
    # a script of a name no other process has: the sampling sees the whole machine (the suite's other worker too)
    script = tmp_path / "cpu_by_process_probe.py"
    script.write_text("import torch\nsum(i * i for i in range(2 * 10**6))\n")
    proc = run_cli("-m", "bench.cpu_by_process", "--interval", "0.1", "--json", str(out), "--", python, str(script),
                   cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fig = json.loads(out.read_text())
    mine = fig["by_kind"][f"{Path(python).name} {script.name}"]  # the command's own process, which imported torch
    assert mine["processes"] == 1 and mine["torch_processes"] == 1 and mine["cpu_s"] > 0.5, fig["by_kind"]
    assert fig["torch_processes"] >= 1 and fig["torch_core_s"] >= mine["cpu_s"]
    assert 0 < fig["sampled_core_s"] and fig["busy_core_s"] > 0 and fig["exit"] == 0
    assert "processes that imported torch:" in proc.stdout

    proc = run_cli("-m", "bench.cpu_by_process", "--", python, "-c", "import sys; sys.exit(3)", cwd=REPO)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the command's exit code, as `time` passes it on


@pytest.mark.slow
def test_quick_bookkeeping_runs_the_sweeps_path_and_bare_tune_on_sleeping_trials(tmp_path):
    stdout, fig = run_quick("-m bench.bookkeeping --ways ours bare defaults --checkpoint-kb 4", tmp_path)
    assert "wall/min" in stdout and "x bare's" in stdout
    runs = {r["way"]: r for r in fig["runs"]}
    assert set(runs) == {"ours", "bare", "defaults"} and all(r["n"] == 6 == r["trials"] for r in runs.values())
    seconds = fig["config"]["seconds"]
    for way, run in runs.items():
        # the minimum is the trial-seconds the trials ran (ASHA stops some: fewer results than FIFO's 6 x 3)
        assert run["min_s"] == pytest.approx(run["results"] * seconds / 2, abs=0.01), way
        assert run["wall_over_min"] == pytest.approx(run["wall_s"] / run["min_s"], rel=0.01)
        assert run["snapshots"] >= 1 and run["peak_mb"] > 0
    assert runs["defaults"]["results"] == 6 * 3 and runs["ours"]["results"] <= 6 * 3
    ours = runs["ours"]
    # the sweep's own path ran: commits, the study's suggestions, its end, trials.csv with a row per trial
    assert ours["commits"] >= 1 and ours["commit_kb"] > 0 and ours["suggest_ms"] > 0 and ours["trials_csv_rows"] == 6
    assert ours["end_s"] == pytest.approx(ours["summarise_s"] + ours["report_s"], abs=0.02)
    assert ours["over_bare"] == pytest.approx(ours["wall_over_min"] / runs["bare"]["wall_over_min"], rel=0.01)


@pytest.mark.slow
def test_quick_study_storage_times_each_storage_with_every_trial_read_back(tmp_path):
    stdout, fig = run_quick("-m bench.study_storage", tmp_path)
    assert "sqlite / journal" in stdout
    assert [(r["storage"], r["n"]) for r in fig["runs"]] == [("sqlite", 20), ("journal", 20), ("memory", 20)]
    for run in fig["runs"]:
        assert run["ask_ms"] > 0 and run["per_trial_ms"] > 0
        assert (run["file_kb"] is None) == (run["storage"] == "memory")
