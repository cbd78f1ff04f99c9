"""bench/data_throughput.py runs end to end (--quick) and writes its figures. Speed itself is never asserted here."""
from __future__ import annotations

import json

import pytest

from conftest import REPO, run_cli

RATE_KEYS = ("steady_img_s_core", "amortised_img_s_core")
BUILD_KEYS = ("build_seconds", "build_images", "build_threads", "build_img_s_core")


@pytest.mark.slow
def test_quick_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "out.json"
    cache = tmp_path / "cache"
    proc = run_cli("bench/data_throughput.py", "--quick", "--json", str(out), cwd=REPO,
                   env={"SEGCORE_CACHE_DIR": str(cache)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "segcore / per-item" in proc.stdout and "images / s / core" in proc.stdout

    figures = json.loads(out.read_text())
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
