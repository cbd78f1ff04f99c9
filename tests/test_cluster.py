"""Scale-out on this one machine: a 2-node Ray cluster on 127.0.0.1, DDP trials, resource checks, driver assets."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import RAN_TO_END, REPO, SMALL_ENCODER, run_cli
from segcore.errors import UserError
from segtune import cluster

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_cluster")]

FAULTS = REPO / "tests" / "faults"  # sitecustomize.py: here, trials that wait for each other (its docstring)
SMP_RESNET18 = ("smp-hub/resnet18.imagenet", "3f2325ff978283d47aa6a1d6878ca20565622683")  # SMP 0.6's pins


def read_trials(experiment: Path) -> list[dict]:
    with open(experiment / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def barrier(tmp_path_factory) -> Path:
    """Where trials of this module's cluster wait for each other (tests/faults/sitecustomize.py): a test that needs
    trials side by side makes the folder for its sweep; without it no trial waits."""
    return tmp_path_factory.mktemp("cluster") / "barrier"


@pytest.fixture(scope="module")
def two_nodes(barrier):
    """Head + one worker node, one CPU each, both on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).

    Its processes are told its address (RAY_ADDRESS, inherited from the raylets): other Ray instances run on this
    machine beside it (the suite's other worker), and Ray Train's placement-group cleaner, which frees a stopped DDP
    trial's workers, looks the cluster up through the state API, which without an address refuses to choose among
    several instances ("Found multiple active Ray instances"): the stopped trial's workers were never freed and
    the next trial waited for them forever.

    Its processes also load tests/faults/sitecustomize.py, which makes trials wait for each other while ``barrier``
    exists (its docstring says why)."""
    import ray
    from ray.cluster_utils import Cluster

    from bench.ray_head import free_port

    port = free_port()
    with pytest.MonkeyPatch.context() as env:  # for the cluster's own processes, not for the tests' drivers
        env.setenv("RAY_GCS_SERVER_PORT", str(port))
        env.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")])))
        env.setenv("SEGSWEEP_TEST_BARRIER_DIR", str(barrier))
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        c.add_node(num_cpus=1)
    assert c.address == f"127.0.0.1:{port}", c.address
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def fake_hf_cache(tmp_path_factory):
    """An HF cache holding 'imagenet' weights for resnet18 (random, but real files in the hub's layout)."""
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file

    home = tmp_path_factory.mktemp("hf")
    repo, revision = SMP_RESNET18
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    assert (settings["repo_id"], settings["revision"]) == SMP_RESNET18, "SMP changed its weight pins"
    snapshot = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text('{"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}')
    return home, state


def test_sweep_on_two_nodes_uses_both_and_driver_weights(two_nodes, barrier, fake_hf_cache, tmp_path):
    hf_home, cached_state = fake_hf_cache
    storage = tmp_path / "results"
    # The first two trials wait for each other in their first step: on a loaded machine a trial of 2 s could
    # otherwise end before the second node's trial process has started, and Tune gives the next trials to the
    # first process (seen: all four on the head node).
    barrier.mkdir()
    try:
        proc = run_cli("tune_main.py", "--address", two_nodes.address, "--synthetic", "--data-dir", str(tmp_path / "d"),
                       "--space", "smoke", "--set", "image_size=64", "--set", "encoder=resnet18",
                       "--set", "encoder_weights=imagenet", "--set", "freeze=encoder", "--num-samples", "4",
                       "--max-epochs", "1", "--scheduler", "fifo", "--storage-path", str(storage), "--name", "twonodes",
                       env={"HF_HOME": str(hf_home)}, timeout=600)
        waited = sorted(p.name for p in barrier.iterdir())
    finally:
        shutil.rmtree(barrier)  # no later trial of this cluster waits
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(waited) == 2, waited  # two trial processes met there
    assert "weights resnet18: imagenet" in proc.stdout
    rows = read_trials(storage / "twonodes")
    assert len(rows) == 4 and all(r["status"] in RAN_TO_END for r in rows)
    assert len({r["node_id"] for r in rows}) == 2, [r["node_id"] for r in rows]  # trials ran on both nodes
    assert {r["hostname"] for r in rows} and {r["device"] for r in rows} == {"cpu"}
    assert {r["world_size"] for r in rows} == {"1"}
    # Trials cannot read the HF cache (TRIAL_ENV points them elsewhere) and the encoder was frozen: the trained
    # checkpoint's encoder is exactly the weights the driver read from its cache and shipped.
    from segcore.model import SegmentationModule

    best = json.loads((storage / "twonodes" / "summary.json").read_text())["best_checkpoint"]
    module = SegmentationModule.from_checkpoint(best)
    for key, value in cached_state.items():
        assert torch.equal(module.net.encoder.state_dict()[key], value), key


def test_ddp_trials_report_world_size_and_are_stopped_cleanly(two_nodes, folder_root, tmp_path):
    """On a folder of one's own with three classes: each rank its share of the data, the class IoUs of the whole
    split reported (the Pets sweeps cover the rest)."""
    import ray
    from ray.util import placement_group_table

    storage = tmp_path / "results"
    proc = run_cli("tune_main.py", "--address", two_nodes.address, "--data-dir", str(folder_root),
                   "--space", "smoke", "--set", "image_size=64", "--set", f"encoder={SMALL_ENCODER}",
                   "--num-samples", "3", "--max-epochs", "2", "--reduction-factor", "2", "--workers-per-trial", "2",
                   "--cpus-per-trial", "0.5", "--storage-path", str(storage), "--name", "ddp",
                   # one trial at a time: ASHA's cut at a rung depends on which trials reached it first, and two
                   # trials side by side reach it in either order (seen: none stopped); one by one, the seeded
                   # configs meet the rung in one order, and the trial after a stopped one needs its workers freed
                   "--max-concurrent", "1",
                   "--no-final-test",  # what is checked is the trials' workers; the final test is test_sweep's
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(storage / "ddp")
    assert len(rows) == 3
    assert {r["world_size"] for r in rows} == {"2"}
    assert all(0 <= float(r["val/iou/toy"]) <= 1 and 0 <= float(r["val/acc"]) <= 1 for r in rows)
    assert "stopped early" in [r["status"] for r in rows], [r["status"] for r in rows]
    # every trial after a stopped one got its workers: a leaked worker group would have starved it
    assert all(r["status"] in (*RAN_TO_END, "stopped early") for r in rows)
    deadline = time.monotonic() + 60  # Ray Train frees a stopped trial's placement group shortly after
    while time.monotonic() < deadline and any(p["state"] == "CREATED" for p in placement_group_table().values()):
        time.sleep(1)
    assert not [p for p in placement_group_table().values() if p["state"] == "CREATED"]
    assert ray.available_resources().get("CPU") == pytest.approx(2.0)


def test_storage_probe_sees_a_shared_path_from_every_node(two_nodes, tmp_path):
    import ray

    node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert len(node_ids) == 2
    cluster.check_storage_shared(tmp_path / "shared", node_ids)  # same filesystem: accepted
    assert cluster.nodes_seeing(str(tmp_path / "absent"), node_ids) == [False, False]


@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-trial", "1"], "--gpus-per-trial 1: the cluster has 0 GPU(s)"),
    (["--gpus-per-trial", "0.25"], "--gpus-per-trial 0.25: the cluster has 0 GPU(s)"),
    (["--cpus-per-trial", "64"], "--cpus-per-trial 64: no node has that many CPUs"),
    (["--workers-per-trial", "3", "--cpus-per-trial", "1"], "--workers-per-trial 3"),
    (["--gpus-per-trial", "2"], "use --workers-per-trial"),
], ids=["gpu", "fractional-gpu", "cpus", "workers", "multi-gpu-without-workers"])
def test_unmeetable_resources_fail_before_launch(flags, message, pets_root, tmp_path):
    proc = run_cli("tune_main.py", "--data-dir", str(pets_root), "--space", "smoke", "--set", "image_size=64",
                   "--storage-path", str(tmp_path / "results"), *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_unmeetable_resources_on_a_cluster_fail_before_launch(two_nodes, pets_root, tmp_path):
    proc = run_cli("tune_main.py", "--address", two_nodes.address, "--data-dir", str(pets_root), "--space", "smoke",
                   "--set", "image_size=64", "--cpus-per-trial", "2", "--storage-path", str(tmp_path / "results"))
    assert proc.returncode == 2 and "no node has that many CPUs (largest: 1)" in proc.stderr, proc.stderr[-2000:]


def test_resource_check_counts_gpus_per_worker():
    with pytest.raises(UserError, match="x --workers-per-trial 4"):
        cluster.check_resources(1, 1, 4, {"CPU": 32.0, "GPU": 2.0}, [16.0, 16.0])
    assert cluster.check_resources(1, 0.25, 1, {"CPU": 8.0, "GPU": 1.0}, [8.0]) == (
        "8 CPUs, 1 GPUs; --gpus-per-trial 0.25: 4 trials share each GPU, up to 4 trials at once")
    assert cluster.check_resources(1, 0.3, 1, {"CPU": 2.0, "GPU": 2.0}, [2.0]).endswith(
        "3 trials share each GPU, up to 2 trials at once")  # the CPUs are what limits it
    assert cluster.check_resources(1, 1, 2, {"CPU": 8.0, "GPU": 4.0}, [4.0, 4.0]).endswith(
        "2 GPU(s) per trial, up to 2 trials at once")
    assert cluster.trial_concurrency(2, 1, 2, {"CPU": 16.0, "GPU": 4.0}) == 2


def test_storage_uris_never_show_credentials():
    assert cluster.redact("s3://AKIA:secret@bucket/sweeps?access_key=x") == "s3://***@bucket/sweeps?***"
    assert cluster.redact("gs://bucket/path") == "gs://bucket/path"
    assert cluster.is_uri("s3://b/p") and cluster.is_uri("gs://b") and not cluster.is_uri("/shared/nfs")
    from segtune.storage import Storage

    for uri in ("s3://AKIA:secret@bucket/sweeps", "s3://bucket/sweeps?region=eu-west-1&secret_key=secret"):
        with pytest.raises(UserError, match="credentials") as err:  # refused: Ray would log and pickle them
            Storage(uri, "x")
        assert "secret" not in str(err.value).replace("secret_key", "") and "AKIA" not in str(err.value)
    storage = Storage("s3://bucket/sweeps/?endpoint_override=minio.internal:9000", "x")
    assert storage.ray_path_of_experiment == "s3://bucket/sweeps/x?endpoint_override=minio.internal:9000"
    assert storage.shown.startswith("s3://bucket/sweeps/x?*** ") and "minio" not in storage.shown


def test_uri_storage_uploads_the_driver_files_and_the_report_plots(tmp_path, monkeypatch):
    """No bucket here: pyarrow's copy is recorded instead of run. Everything the driver wrote goes next to Ray's
    files (report.md with its plots), nothing else from the folder."""
    import pyarrow.fs

    from segtune.storage import Storage

    monkeypatch.chdir(tmp_path)  # a URI sweep keeps its driver files in ./results/<name>
    storage = Storage("s3://bucket/sweeps?region=eu-west-1", "x")
    storage.local.mkdir(parents=True)
    written = ["trials.csv", "summary.json", "sweep.yaml", "report.md", "report_val_iou.png", "report_predictions.png"]
    for name in written + ["notes.txt"]:
        (storage.local / name).write_text(name)
    copied = []
    monkeypatch.setattr(pyarrow.fs, "copy_files", lambda src, dst: copied.append((Path(src).name, dst)))
    storage.upload()
    assert sorted(copied) == sorted((n, f"s3://bucket/sweeps/x/{n}?region=eu-west-1") for n in written)


def test_asset_step_needs_no_network_when_assets_are_present(fake_hf_cache, pets_root, tmp_path):
    """Dataset present and weights cached: the driver's asset step runs with the hub offline and downloads nothing."""
    hf_home, _ = fake_hf_cache
    proc = run_cli("tune_main.py", "--dry-run", "--data-dir", str(pets_root), "--space", "smoke",
                   "--set", "image_size=64", "--set", "encoder=resnet18", "--set", "encoder_weights=imagenet",
                   "--storage-path", str(tmp_path / "results"),
                   env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weights resnet18: imagenet" in proc.stdout and "dry run: nothing started" in proc.stdout


LOCAL_RAY_PROBE = """
import ctypes, json, os, resource, threading, time

import ray

from segtune import cluster


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def workers():  # Ray's Python workers: children of the raylet this process started (named ray::IDLE, ray::Trial)
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
            if parent(parent(pid)) == os.getpid() and (b"default_worker.py" in command or (
                    command.startswith(b"ray::") and b"Agent" not in command)):
                found.append(pid)
        except (OSError, ValueError):  # gone meanwhile
            pass
    return len(found)


cluster.connect(None, cluster.trial_env({"SEGSWEEP_WORKER": "1"}))  # as the driver connects
time.sleep(3)  # Ray prestarts as the driver registers
idle = workers()


@ray.remote(num_cpus=1, runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}})  # as Tune creates a trial actor
class Trial:
    def refault(self):
        # As a trial trains, in a thread of its own: a 64 MB block from glibc (where torch's CPU allocator gets its
        # memory) written, freed, and asked for again a step later. (Measured on torch's own tensors this probe would
        # also count what glibc 2.36 cannot reuse: torch asks for 64-byte aligned blocks, and a freed block of the
        # same size is too small for an aligned request.)
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.memset.argtypes, libc.free.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t], [ctypes.c_void_p]
        faults = []

        def step():
            size = 64 << 20
            for _ in range(2):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                block = libc.malloc(size)
                libc.memset(block, 1, size)
                libc.free(block)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

        thread = threading.Thread(target=step)
        thread.start()
        thread.join()
        return faults


trial = Trial.remote()
faults = ray.get(trial.refault.remote())
print(json.dumps({"idle_workers": idle, "workers": workers(), "refaults": faults}))
ray.shutdown()
"""


@pytest.fixture(scope="module")
def local_ray_probe() -> dict:
    """One local Ray started as the driver starts it, and one trial-like actor in it."""
    proc = subprocess.run([sys.executable, "-c", LOCAL_RAY_PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != cluster.ALLOCATOR_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_local_ray_prestarts_no_worker_that_nothing_could_use(local_ray_probe):
    """Ray prestarts a worker per CPU for its first driver, with no runtime_env: no trial (Tune gives each actor one)
    and no final test (it has the job's) runs in one, and their start slowed the sweep's. The sweep's Ray starts none;
    a trial then starts its own process."""
    assert (local_ray_probe["idle_workers"], local_ray_probe["workers"]) == (0, 1)


def test_a_trial_process_reuses_the_memory_its_steps_free(local_ray_probe):
    """glibc's default allocator unmaps a freed block over 32 MB, and the next step's faults its 16k pages in again
    (a third of a trial's kernel time at 256 px). In a trial's process it keeps them: no page faults the second time."""
    first, again = local_ray_probe["refaults"]
    assert first > 16000 and again < 100, local_ray_probe  # again 16385 with glibc's defaults


def test_the_trials_allocator_settings_yield_to_the_drivers_own(monkeypatch):
    monkeypatch.delenv(cluster.ALLOCATOR_ENV, raising=False)
    assert cluster.trial_env({"A": "1"}) == {"A": "1", cluster.ALLOCATOR_ENV: cluster.KEEP_FREED_MEMORY}
    monkeypatch.setenv(cluster.ALLOCATOR_ENV, "")  # the user's choice, even glibc's defaults
    assert cluster.trial_env({"A": "1"}) == {"A": "1", cluster.ALLOCATOR_ENV: ""}
