"""Where a sweep keeps its results: a local or shared folder, or a cloud URI (s3://, gs://, ...).

Ray writes trials and checkpoints straight to the storage path. The driver's own files (trials.csv, optuna.journal,
best_config.yaml, summary.json, sweep.yaml) live in a local folder: the study's journal is appended to. With a URI
that folder is ``./results/<name>`` and its files are uploaded next to Ray's at the end of the sweep.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from segcore.cache import write_text_atomic  # noqa: F401 (segtune writes its files with it too)
from segcore.errors import UserError
from segtune.cluster import is_uri, redact

# The files of an experiment folder, named here once. The driver writes these (uploaded next to Ray's with a URI):
TRIALS_CSV = "trials.csv"
BEST_CONFIG_FILE = "best_config.yaml"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "sweep.yaml"  # the flags a sweep started with; --resume and --report read them back
SPACE_FILE = "space.yaml"  # the space as the sweep started with it (--set values fixed in)
# The Optuna study: a journal (one JSON line per change, appended: bench/study_storage.py measured it 4.5-7 x faster
# than SQLite per trial at 100-1,000 trials); sweeps started before it keep their SQLite file
OPTUNA_JOURNAL, OPTUNA_DB = "optuna.journal", "optuna.db"
TEST_METRICS_FILE = "test_metrics.json"
REPORT_FILE = "report.md"
REPORT_PLOTS = "report_*.png"
# Written once Tune's run ended without interruption, before errored trials are told FAIL to Optuna: from then on
# they are final, and --resume leaves them as they are (an interrupted sweep's errored trials continue from their
# last full state: a trial killed with a preempted job errors)
ENDED_FILE = "ended.json"
DRIVER_FILES = (TRIALS_CSV, BEST_CONFIG_FILE, SUMMARY_FILE, SETTINGS_FILE, SPACE_FILE, OPTUNA_JOURNAL, OPTUNA_DB,
                TEST_METRICS_FILE, REPORT_FILE, ENDED_FILE)
# each trial's folder: its result rows (one JSON object per reported epoch) and its parameters, both written by the
# driver (segtune.saved_state)
RESULT_FILE, PARAMS_FILE = "result.json", "params.json"
# and the trials write this into each of their checkpoint folders
CHECKPOINT_FILE = "checkpoint.ckpt"
# beside it, when the epoch improved val/iou: image | truth | prediction of the first validation images (uint8
# H x W x 3, numpy), the report's figure of the best weights without running them in the driver
PREDICTIONS_FILE = "val_predictions.npy"
# Query options of pyarrow's filesystems that carry secrets. A URI holding one would reach Ray's logs and its
# pickled experiment state, so it is refused: credentials come from the environment or an instance role.
SECRET_QUERY_KEYS = {"access_key", "secret_key", "session_token", "access_token", "account_key", "sas_token",
                     "password", "token"}


def check_uri(uri: str) -> None:
    parts = urlsplit(uri)
    secrets = sorted(k for k, _ in parse_qsl(parts.query) if k.lower() in SECRET_QUERY_KEYS)
    if parts.username or parts.password or secrets:
        what = "a user name or password" if (parts.username or parts.password) else ", ".join(secrets)
        raise UserError(f"--storage-path {redact(uri)}: holds {what}; credentials in a URI would end up in logs "
                        "and in the experiment's saved state. Give them through the environment (AWS_* variables, "
                        "GOOGLE_APPLICATION_CREDENTIALS) or an instance role")
    if not parts.netloc:
        raise UserError(f"--storage-path {redact(uri)}: no bucket after {parts.scheme}://")


class Storage:
    def __init__(self, storage_path: str, name: str):
        self.name = name
        self.is_uri = is_uri(storage_path)
        if self.is_uri:
            check_uri(storage_path)
            self.uri = storage_path
            self.local = Path("results").resolve() / name
        else:
            self.uri = None
            self.local = Path(storage_path).resolve() / name

    def check_writable(self) -> None:
        """The local folder (the experiment's, or the driver files' with a URI) can be created and written: found
        out now, not after the data is decoded. Permission bits say yes to root everywhere, even under /proc or on a
        read-only mount, so a probe folder and file are made in the nearest existing folder above the experiment's
        (not in it: an existing experiment is left as it was) and removed again."""
        if self.local.exists() and not self.local.is_dir():
            raise UserError(f"--name: {self.local} is a file, not an experiment folder; choose another --name or "
                            "--storage-path (nothing is overwritten)")
        existing = self.local.parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"--storage-path: {existing} is a file, so {self.local} cannot be created there")
        probe = existing / f".segsweep-write-probe-{os.getpid()}"
        try:
            probe.mkdir()
            try:
                (probe / "probe").write_bytes(b"probe")
            finally:
                shutil.rmtree(probe, ignore_errors=True)
        except OSError as err:
            raise UserError(f"--storage-path: cannot create folders and files in {existing} "
                            f"({err.strerror or err}), so {self.local} cannot be written") from None

    @property
    def ray_path(self) -> str:
        """``RunConfig.storage_path``: the folder (or URI) holding experiment folders."""
        return self.uri if self.is_uri else str(self.local.parent)

    @property
    def ray_path_of_experiment(self) -> str:
        if not self.is_uri:
            return str(self.local)
        parts = urlsplit(self.uri)  # the name goes into the path, before any ?options
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{self.name}"))

    def uri_of(self, filename: str) -> str:
        parts = urlsplit(self.ray_path_of_experiment)
        return urlunsplit(parts._replace(path=f"{parts.path}/{filename}"))

    @property
    def shown(self) -> str:
        """Printable: nothing secret is ever in a URI we accept, and other query options are masked too."""
        if self.is_uri:
            return f"{redact(self.ray_path_of_experiment)} (driver files in {self.local})"
        return str(self.local)

    def upload(self) -> None:
        if not self.is_uri:
            return
        import pyarrow.fs

        files = [self.local / name for name in DRIVER_FILES] + sorted(self.local.glob(REPORT_PLOTS))
        for path in files:
            if path.is_file():
                pyarrow.fs.copy_files(str(path), self.uri_of(path.name))
