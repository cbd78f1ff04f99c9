"""The Ray cluster a sweep runs on: connecting, what it can run, and where results can be stored."""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from segcore.errors import UserError

DDP_DRIVER_CPU = 0.01  # what the trial process of a DDP trial reserves besides its workers (Ray refuses zero)
# The test switch for fractional GPUs on a machine without any: a Ray node started with logical GPUs
# (`ray start --num-gpus 1`, no CUDA), whose GPU trials then train on the CPU. Set for the driver, which passes it
# to its trials. Never set in normal use: there a trial Ray gave a GPU to, in a process that sees no CUDA device,
# fails with the reason (segtune.trial.on_assigned_gpu) rather than training on the CPU unnoticed.
LOGICAL_GPUS_ON_CPU = "SEGSWEEP_LOGICAL_GPUS_ON_CPU"


# glibc's allocator in the trials' processes: keep the memory torch frees for the next step instead of returning it
# to the kernel. By default glibc gives every tensor over 32 MB its own mmap and unmaps it when freed, and trims
# the heaps, so each training step faults its activations' pages in again: 2-3 million page faults and 16% of the
# CPU in the kernel per epoch at 256 px on the CPU (bench/side_by_side.py; 6-9% at 64 px). One arena, no mmap,
# no trim: the heap grows to the step's peak and is mostly reused (peak memory the same within 2%; per epoch of one
# config, 2.67M -> 15k faults at 256 px, 176k -> 67k at 64 px, where glibc 2.36 cannot give some of torch's 64-byte
# aligned requests a freed block of their own size: the aligned request is larger). A GPU trial's
# tensors live in CUDA's own caching allocator; this is its host side. Read by glibc when a process starts, so it is
# set in the trials' environment, not here; a GLIBC_TUNABLES of the driver's own (even empty) is passed instead.
ALLOCATOR_ENV = "GLIBC_TUNABLES"
KEEP_FREED_MEMORY = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def trial_env(base: dict[str, str]) -> dict[str, str]:
    """The environment every trial gets: ``base``, the allocator's settings (above), and the test switch above when
    the driver has it."""
    return {**base, ALLOCATOR_ENV: os.environ.get(ALLOCATOR_ENV, KEEP_FREED_MEMORY),
            **({LOGICAL_GPUS_ON_CPU: "1"} if os.environ.get(LOGICAL_GPUS_ON_CPU) == "1" else {})}


@dataclass
class Cluster:
    resources: dict[str, float]
    node_ids: list[str]
    node_cpus: list[float]
    node_addresses: list[str]
    # Node addresses: one per machine. (Not host names: containers and namespaces often share one, and a node
    # on another machine under the same name must still see --storage-path.)
    hosts: set[str]


def connect(address: Optional[str], trial_env: dict[str, str], dashboard: bool = False) -> Cluster:
    """Join ``address`` or start a local Ray; ``trial_env`` is set in every trial and worker process (a job
    runtime_env: the driver's own environment is left as it is).

    A local instance starts Ray's dashboard only when asked (``dashboard``): its processes take about 0.7 s to start
    and a share of a core for the whole sweep, which on a small machine is taken from the trials."""
    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    if address:
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address, runtime_env={"env_vars": trial_env}, logging_level=logging.WARNING)
        except (ConnectionError, AuthenticationError) as err:
            raise UserError(_refused(address, err)) from None
    else:
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenAuthOn())
        # "local": a new instance even if RAY_ADDRESS points at a cluster (joining one is what --address is for).
        # (Tune 2.60 gives every trial actor a runtime_env of its own, so trials start in new worker processes
        # whether or not the job has one.)
        # No worker processes prestarted for the driver: Ray starts them with no runtime_env, so no trial, nor the
        # final test (both run with one), can use them; on a small machine their start took a core for a second
        # and made ray.init itself ~0.7 s longer (bench/ray_start.py).
        ray.init(address="local", runtime_env={"env_vars": trial_env}, logging_level=logging.WARNING,
                 include_dashboard=dashboard, _system_config={"prestart_worker_first_driver": False})
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return Cluster(resources=dict(ray.cluster_resources()), node_ids=[n["NodeID"] for n in nodes],
                   node_cpus=[n["Resources"].get("CPU", 0.0) for n in nodes],
                   node_addresses=[n.get("NodeManagerAddress", "?") for n in nodes],
                   hosts={n.get("NodeManagerAddress") or n.get("NodeManagerHostname") for n in nodes})


def _refused(address: str, err: Exception) -> str:
    """Why ``ray.init(address=...)`` failed, in the user's terms: a missing or wrong token, or no cluster there."""
    from ray.exceptions import AuthenticationError

    causes, cause = [], err
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    # (Ray 2.60 raises the GCS client's AuthenticationError as text inside a RuntimeError: both are looked for.)
    if any(isinstance(c, AuthenticationError) or "InvalidAuthToken" in str(c) for c in causes):
        if os.environ.get("RAY_AUTH_MODE") != "token":
            why = "this driver sends no token (RAY_AUTH_MODE is not 'token' here)"
        else:
            where = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                     os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
            why = f"the token this driver sends ({where}) is missing or not the cluster's"
        return (f"--address {address}: refused by the cluster's token authentication: {why}. Set RAY_AUTH_MODE=token "
                "and give this process the token the cluster was started with (README.md, 'Token authentication')")
    return f"--address {address}: no Ray cluster could be joined there ({err})"


class _TokenAuthOn(logging.Filter):
    """A local instance with token authentication on (Ray's default) is what the user wants: nothing to act on.
    (The warning Ray gives when it is off stays.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


class _NotMainThread(logging.Filter):
    """ray.init outside the main thread says it set no SIGTERM handler: the driver installs its own afterwards."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class LocalStart:
    """A local Ray started in a background thread, beside the driver's own preparation (imports, data decoding,
    weights): starting Ray is mostly waiting for its processes, a couple of seconds the driver can use.

    ``result()`` waits for it and returns the Cluster (or raises what ``ray.init`` raised); ``abandon()``, when the
    preparation failed, waits for it and shuts it down, so a refused sweep leaves nothing running.

    The thread stays alive until the process ends: Ray starts its local processes (GCS, raylet) with a parent-death
    signal, which Linux sends when the *thread* that started them ends, not the process."""

    def __init__(self, trial_env: dict[str, str], dashboard: bool = False):
        import ray  # noqa: F401 (imported here, not in the thread: module imports hold the import lock)

        logging.getLogger("ray._private.worker").addFilter(_NotMainThread())
        self._outcome: tuple[Optional[Cluster], Optional[BaseException]] = (None, None)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(trial_env, dashboard), name="ray-start", daemon=True)
        self._thread.start()

    def _run(self, trial_env: dict[str, str], dashboard: bool) -> None:
        try:
            self._outcome = (connect(None, trial_env, dashboard), None)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread by result()
            self._outcome = (None, err)
        self._started.set()
        threading.Event().wait()  # see the class's docstring: Ray's processes live as long as this thread


    def result(self) -> Cluster:
        self._started.wait()
        started, error = self._outcome
        if error is not None:
            raise error
        return started

    def abandon(self) -> None:
        import ray

        self._started.wait()
        if ray.is_initialized():
            ray.shutdown()


def shutdown_beside() -> threading.Thread:
    """Shut Ray down in a thread of its own, while the driver goes on with work that needs no Ray (the report):
    ``ray.shutdown`` mostly waits for Ray's processes to end. ``shutdown`` waits for it."""
    import ray

    stopping = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    stopping.start()
    return stopping


def shutdown(stopping: Optional[threading.Thread] = None) -> None:
    """Ray shut down, whether ``shutdown_beside`` began it or not (the driver's last step, whatever ended it)."""
    import ray

    if stopping is not None:
        stopping.join()
    if ray.is_initialized():
        ray.shutdown()


def check_resources(cpus_per_trial: float, gpus_per_trial: float, workers: int = 1,
                    cluster: Optional[dict[str, float]] = None, node_cpus: Optional[list[float]] = None,
                    count_gpus: bool = True) -> str:
    """Refuse requests no node can meet. ``cluster`` defaults to this machine (no Ray needed for a dry run), whose
    GPUs torch counts unless ``count_gpus`` is False (a request for none: torch's import is then saved).

    With ``workers`` > 1 the per-trial figures are per worker (each DDP worker is placed on its own)."""
    if cluster is None:
        cluster = {"CPU": float(os.cpu_count() or 1)}
        if count_gpus:
            import torch

            cluster["GPU"] = float(torch.cuda.device_count())
        node_cpus = [cluster["CPU"]]
    gpus = cluster.get("GPU", 0.0)
    total_gpus = gpus_per_trial * workers
    if gpus_per_trial > 0 and gpus < total_gpus:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}" + (f" x --workers-per-trial {workers}" if workers > 1
                                                                  else "")
                        + f": the cluster has {gpus:g} GPU(s)"
                        + ("; use --gpus-per-trial 0 to train on CPUs" if gpus == 0 else ""))
    biggest = max(node_cpus or [cluster.get("CPU", 0.0)])
    if cpus_per_trial > biggest:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g}: no node has that many CPUs (largest: {biggest:g})")
    needed = cpus_per_trial * workers + (DDP_DRIVER_CPU if workers > 1 else 0.0)
    if needed > cluster.get("CPU", 0.0):
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g} x --workers-per-trial {workers}: a trial needs "
                        f"{needed:g} CPUs (workers + {DDP_DRIVER_CPU} for the trial's driver), the cluster has "
                        f"{cluster.get('CPU', 0):g}")
    text = f"{cluster.get('CPU', 0):g} CPUs" + (f", {gpus:g} GPUs" if "GPU" in cluster or count_gpus else "")
    if gpus_per_trial > 0:
        at_once = trial_concurrency(cpus_per_trial, gpus_per_trial, workers, cluster)
        if gpus_per_trial < 1 and workers == 1:
            text += (f"; --gpus-per-trial {gpus_per_trial:g}: {math.floor(1 / gpus_per_trial + 1e-9)} trials share "
                     f"each GPU, up to {at_once} trials at once")
        else:
            text += f"; {gpus_per_trial * workers:g} GPU(s) per trial, up to {at_once} trials at once"
    return text


def trial_concurrency(cpus_per_trial: float, gpus_per_trial: float, workers: int,
                      cluster: dict[str, float]) -> int:
    """How many trials fit the cluster at once. Tune needs the figure: with a searcher it otherwise keeps a
    single trial pending, and a DDP trial's driver holds next to nothing."""
    driver = DDP_DRIVER_CPU if workers > 1 else 0.0
    fits = [int(cluster.get("CPU", 0.0) // (cpus_per_trial * workers + driver))]
    if gpus_per_trial > 0:
        fits.append(int(cluster.get("GPU", 0.0) // (gpus_per_trial * workers)))
    return max(1, min(fits))


URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://")


def is_uri(path: str) -> bool:
    return path.startswith(URI_SCHEMES)


def redact(uri: str) -> str:
    """A storage URI without credentials (user:secret@ or ?access_key=...): safe to print or log."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username or parts.password:
        netloc = "***@" + netloc
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_storage_shared(storage: Path, node_ids: list[str], addresses: Optional[list[str]] = None) -> None:
    """On a cluster spanning several hosts a local --storage-path must be one filesystem seen by all of them.

    Probed with a marker file the driver writes and a task on each node looks for; a folder the probe had to
    create is removed again when the path is refused."""
    created = [p for p in (storage, *storage.parents) if not p.exists()]
    marker = storage / f".segsweep-visible-{os.getpid()}"
    storage.mkdir(parents=True, exist_ok=True)
    marker.write_text("probe")
    try:
        seen = nodes_seeing(str(marker), node_ids)
    finally:
        marker.unlink(missing_ok=True)
    missing = [a for a, ok in zip(addresses or node_ids, seen) if not ok]
    if missing:
        for folder in created:  # deepest first: only folders the probe made, and only if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise UserError(f"--storage-path {storage}: not visible from {len(missing)} of {len(node_ids)} nodes "
                        f"({', '.join(missing)}): a folder local to this host; use a shared filesystem path "
                        "(NFS, ...) mounted at the same path on every node, or an s3:// / gs:// URI")


def nodes_seeing(path: str, node_ids: list[str]) -> list[bool]:
    """Whether ``path`` exists as seen from each node (a zero-CPU task pinned to it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def exists(p: str) -> bool:
        return os.path.exists(p)

    return ray.get([exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(path)
                    for n in node_ids])
