"""Fetch the Oxford-IIIT Pet archives (the URLs and md5 sums torchvision uses), verify and extract them once.

A file lock in the data dir serialises processes on one host: the first downloads and extracts, the others wait and
then find the dataset complete. Offline, a short connection probe fails within seconds instead of hanging.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from segcore.errors import UserError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
FOLDER = "oxford-iiit-pet"  # where torchvision's OxfordIIITPet looks, so both read the same copy


def resources() -> tuple[tuple[str, str], ...]:
    from torchvision.datasets import OxfordIIITPet

    return OxfordIIITPet._RESOURCES  # ((url, md5), ...): images.tar.gz, annotations.tar.gz


def is_complete(root: Path) -> bool:
    return all((root / p).exists() for p in ("images", "annotations/trimaps", "annotations/trainval.txt",
                                             "annotations/test.txt"))


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_pets(data_dir: str | Path) -> Path:
    """Make ``data_dir`` (or its ``oxford-iiit-pet/``) hold the dataset; returns the dataset root.

    Archives go to ``<data_dir>/.downloads/`` and are kept until everything is extracted (a failed second archive
    does not cost the first again); extraction happens in a staging folder whose ``images/`` and then
    ``annotations/`` are renamed into place last, so a dataset that looks complete is complete.
    """
    data_dir = Path(data_dir)
    for existing in (data_dir, data_dir / FOLDER):
        if is_complete(existing):
            return existing
    root = data_dir / FOLDER
    data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_dir / ".download.lock")):
        if is_complete(root):  # another process finished it while we waited
            return root
        for part in ("images", "annotations"):
            if (root / part).exists():
                raise UserError(f"--download: {root / part} exists but the dataset is incomplete; move it away "
                                "and run again")
        from torchvision.datasets.utils import download_and_extract_archive

        archives, staging = data_dir / ".downloads", data_dir / f".{FOLDER}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for url, md5 in resources():
            if not _reachable(url):
                raise UserError(f"--download: cannot reach {urlparse(url).hostname} to fetch {url} (offline?). "
                                f"Download images.tar.gz and annotations.tar.gz elsewhere, extract them into "
                                f"{root} and run without --download")
            log.info("downloading %s", url)
            try:  # an archive already in .downloads with the right md5 is not fetched again
                download_and_extract_archive(url, download_root=str(archives), extract_root=str(staging), md5=md5)
            except (RuntimeError, OSError, EOFError) as err:
                raise UserError(f"--download: {url}: {err} (run again to retry)") from None
        if not is_complete(staging):
            raise UserError(f"--download: the archives did not hold images/ and annotations/ as expected "
                            f"(extracted into {staging})")
        root.mkdir(parents=True, exist_ok=True)
        for part in ("images", "annotations"):  # annotations last: is_complete() looks for them
            os.replace(staging / part, root / part)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(archives, ignore_errors=True)
    return root
