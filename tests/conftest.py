"""Shared test set-up: loopback-only Ray, no Hugging Face network, a private decode cache, a tiny generated dataset."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before anything imports ray / huggingface_hub, and inherited by every subprocess a test starts.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray binds to 127.0.0.1
os.environ["HF_HUB_OFFLINE"] = "1"
# The decode cache is the session's: made by the process that sets it (pytest-xdist's controller, whose workers
# inherit it) and removed by that process alone, at its end: a worker that finished first removed it under the other
# worker's tests, whose next process then found no library facts and imported SMP to ask again.
OWN_CACHE = "SEGCORE_CACHE_DIR" not in os.environ
os.environ.setdefault("SEGCORE_CACHE_DIR", str(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) /
                                              f"segcore-test-cache-{os.getpid()}"))

# The smallest config that still exercises the real code paths. Its encoder (2 M parameters with FPN's decoder,
# 24 MB checkpoints with Adam's state) keeps the suite's sweeps to a few hundred MB of disk; resnet18's are 157 MB.
SMALL_ENCODER = "tu-mobilenetv3_small_050"
# A trial that spent its whole budget: completed, or collapsed (segtune.results: one class predicted everywhere at
# its end), which the suite's tiny models on a few images, a few epochs from scratch, now and then are.
RAN_TO_END = ("completed", "collapsed")
TINY = dict(arch="fpn", encoder=SMALL_ENCODER, encoder_weights="none", image_size=64, batch_size=4, epochs=1,
            num_workers=0, accelerator="cpu", devices="1")


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300):
    """Run ``python <args>`` as a user would; returns the CompletedProcess (text output)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def pets_root(tmp_path_factory) -> Path:
    """A 24-image generated Oxford-IIIT Pet in the official layout (read-only for tests: copy it to change it)."""
    from segcore.synthetic import generate

    root = tmp_path_factory.mktemp("pets")
    generate(root, num=24, seed=0, min_size=64, max_size=96)
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    """A 24-image generated folder of one's own with three classes (segcore.synthetic_folder: images/, palette masks
    with an ignore band, classes.txt, splits/), read-only for tests."""
    from segcore.synthetic_folder import generate_folder

    root = tmp_path_factory.mktemp("folder") / "data"
    generate_folder(root, num=24, seed=0, min_size=64, max_size=96)
    return root


@pytest.fixture
def pets_copy(pets_root, tmp_path) -> Path:
    """A private copy of the generated dataset that a test may damage."""
    import shutil

    dst = tmp_path / "pets"
    shutil.copytree(pets_root, dst)
    return dst


@pytest.fixture(scope="session")
def shared_ray():
    """The session's one Ray head (tests/shared_ray.py), started at the first test that asks for it. Tests that are
    about starting or stopping Ray, signals, token authentication or a lost host start their own instead."""
    import shutil

    from shared_ray import SharedRay, short_folder

    from bench.ray_head import ray_head

    folder = short_folder("ray-tests-")
    try:
        with ray_head(len(os.sched_getaffinity(0)), folder, prestart_workers=False) as head:
            shared = SharedRay(head)
            try:
                yield shared
            finally:
                shared.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tiny_config(pets_root):
    from segcore.config import TrainConfig

    return TrainConfig(**TINY, data_dir=str(pets_root))


# Tests marked `cluster` (tests/cluster/: two hosts in network namespaces, a SLURM of the test's own) need root and
# several minutes: `make cluster-test` sets this and runs them; elsewhere they are skipped, with that said.
CLUSTER_TESTS = "SEGSWEEP_CLUSTER_TESTS"


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which names each test's xdist_group in its node id
def pytest_collection_modifyitems(config, items):
    if getattr(config.option, "loadgroup", False):
        alone = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if alone:  # a module's shared fixture (a sweep, a cluster) would be made again in each worker
            raise pytest.UsageError(f"--dist loadgroup did not group {alone[0]} (and {len(alone) - 1} more): this "
                                    "pytest and pytest-xdist do not work together; see requirements-dev.txt")
    if os.environ.get(CLUSTER_TESTS) == "1":
        return
    skip = pytest.mark.skip(reason="a cluster test (root, namespaces or Debian packages, minutes): "
                                   "`make cluster-test` runs it")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    if OWN_CACHE and "segcore-test-cache-" in os.environ.get("SEGCORE_CACHE_DIR", ""):
        shutil.rmtree(os.environ["SEGCORE_CACHE_DIR"], ignore_errors=True)
