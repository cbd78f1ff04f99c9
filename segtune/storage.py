"""Where a sweep keeps its results: a local or shared folder, or a cloud URI (s3://, gs://, ...).

Ray writes trials and checkpoints straight to the storage path. The driver's own files (trials.csv, optuna.db,
best_config.yaml, summary.json, sweep.json) live in a local folder: SQLite needs a real filesystem. With a URI
that folder is ``./results/<name>`` and its files are uploaded next to Ray's at the end of the sweep.
"""
from __future__ import annotations

from pathlib import Path

from segtune.cluster import is_uri, redact

DRIVER_FILES = ("trials.csv", "best_config.yaml", "summary.json", "sweep.json", "optuna.db")


class Storage:
    def __init__(self, storage_path: str, name: str):
        self.name = name
        self.is_uri = is_uri(storage_path)
        if self.is_uri:
            self.uri = storage_path.rstrip("/")
            self.local = Path("results").resolve() / name
        else:
            self.uri = None
            self.local = Path(storage_path).resolve() / name

    @property
    def ray_path(self) -> str:
        """``RunConfig.storage_path``: the folder (or URI) holding experiment folders."""
        return self.uri if self.is_uri else str(self.local.parent)

    @property
    def ray_path_of_experiment(self) -> str:
        return f"{self.uri}/{self.name}" if self.is_uri else str(self.local)

    @property
    def shown(self) -> str:
        """Printable: credentials in a URI are never shown."""
        if self.is_uri:
            return f"{redact(self.ray_path_of_experiment)} (driver files in {self.local})"
        return str(self.local)

    def upload(self) -> None:
        if not self.is_uri:
            return
        import pyarrow.fs

        for name in DRIVER_FILES:
            if (self.local / name).is_file():
                pyarrow.fs.copy_files(str(self.local / name), f"{self.ray_path_of_experiment}/{name}")
