"""Fractional GPUs, simulated: a Ray node that declares two logical GPUs (no CUDA here) and --gpus-per-trial 0.5.
Ray's scheduling and GPU assignment are the real thing; only the training falls back to the CPU, and only under the
explicit test switch (segtune.cluster.LOGICAL_GPUS_ON_CPU)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import RAN_TO_END, SMALL_ENCODER, run_cli
from segtune.cluster import LOGICAL_GPUS_ON_CPU

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_fractional_gpus")]

SWITCH = {LOGICAL_GPUS_ON_CPU: "1"}


@pytest.fixture(scope="module")
def two_logical_gpus():
    """One node (127.0.0.1) with 4 logical CPUs and 2 logical GPUs: room for four half-GPU trials at once."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 2})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def sweep(cluster, pets_root: Path, storage: Path, name: str, env: dict, samples: int = 4, epochs: int = 8):
    return run_cli("tune_main.py", "--address", cluster.address, "--data-dir", str(pets_root), "--space", "smoke",
                   "--set", "image_size=64", "--set", f"encoder={SMALL_ENCODER}", "--set", "batch_size=8",
                   "--num-samples", str(samples), "--max-epochs", str(epochs), "--scheduler", "fifo",
                   "--gpus-per-trial", "0.5", "--cpus-per-trial", "1", "--storage-path", str(storage),
                   "--name", name, "--no-final-test", env=env, timeout=600)


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]


def test_half_gpu_trials_share_each_gpu_two_at_a_time(two_logical_gpus, pets_root, tmp_path):
    storage = tmp_path / "results"
    proc = sweep(two_logical_gpus, pets_root, storage, "half", SWITCH, epochs=40)  # trials of ~10 s: they overlap
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the plan, printed before launch, says how the GPUs are shared
    plan = proc.stdout[:proc.stdout.index("experiment:")]
    assert "per trial 1 CPU, 0.5 GPU" in plan
    assert "4 CPUs, 2 GPUs; --gpus-per-trial 0.5: 2 trials share each GPU, up to 4 trials at once" in plan
    # each trial's device line names the GPU it holds and says why it trains on the CPU
    assert f"(share 0.5); no CUDA: training on the CPU ({LOGICAL_GPUS_ON_CPU}=1)" in proc.stdout

    with open(storage / "half" / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 4 and all(t["status"] in RAN_TO_END for t in trials), trials
    # the four trials ran at the same time (start = first report - its time, end = last report). Trials of a few
    # seconds did not always: actors start seconds apart on a cold machine, and a trial that ended first had its
    # actor, and its GPU, reused by the last one.
    spans = []
    for t in trials:
        rows = rows_of(Path(t["path"]))
        spans.append((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]))
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    # ... so each saw one GPU of Ray's, and each GPU went to two of them
    gpus = sorted(t["gpu"] for t in trials)
    assert gpus == ["0", "0", "1", "1"], gpus


def test_a_gpu_trial_without_cuda_fails_with_the_reason_unless_switched(two_logical_gpus, pets_root, tmp_path):
    """Normal use: no silent CPU run when Ray gave the trial a GPU its process cannot see."""
    storage = tmp_path / "results"
    proc = sweep(two_logical_gpus, pets_root, storage, "nocuda", {LOGICAL_GPUS_ON_CPU: ""}, samples=1, epochs=1)
    with open(storage / "nocuda" / "trials.csv") as f:
        (trial,) = list(csv.DictReader(f))
    assert trial["status"] == "errored", (trial, proc.stdout[-2000:])
    assert "holds GPU" in trial["error"] and "sees no CUDA device" in trial["error"], trial["error"]
    assert trial["epochs"] == "0"
