"""Fetch the Oxford-IIIT Pet archives (the URLs and md5 sums torchvision uses), verify and extract them once.

A file lock in the data dir serialises processes on one host: the first downloads and extracts, the others wait and
then find the dataset complete. Offline, a short connection probe fails within seconds instead of hanging.
"""
from __future__ import annotations

import logging
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
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_pets(data_dir: str | Path) -> Path:
    """Make ``data_dir`` (or its ``oxford-iiit-pet/``) hold the dataset; returns the dataset root."""
    data_dir = Path(data_dir)
    for existing in (data_dir, data_dir / FOLDER):
        if is_complete(existing):
            return existing
    root = data_dir / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_dir / ".download.lock")):
        if is_complete(root):  # another process finished it while we waited
            return root
        from torchvision.datasets.utils import download_and_extract_archive

        for url, md5 in resources():
            if not _reachable(url):
                raise UserError(f"--download: cannot reach {urlparse(url).hostname} to fetch {url} (offline?). "
                                f"Download images.tar.gz and annotations.tar.gz elsewhere, extract them into "
                                f"{root} and run without --download")
            log.info("downloading %s", url)
            # verifies the md5 before extracting; a corrupt archive raises and is fetched again next time
            download_and_extract_archive(url, download_root=str(root), md5=md5, remove_finished=True)
    if not is_complete(root):
        raise UserError(f"--download: {root} is incomplete after extracting the archives")
    return root
