"""What segcore keeps between runs, in ``$SEGCORE_CACHE_DIR`` (default ``~/.cache/segcore``): the decoded splits
(``segcore.data.decoded``) and the installed libraries' answers to the questions a config's validation asks.

Validating a config asks SMP which architectures and encoders exist, which weights an encoder has, and whether an
architecture x encoder x image size builds (``segcore.config``). Answering needs SMP imported, and with it torch,
timm and torchvision: 1.5-2 s before a sweep's driver can start Ray, on every launch. The answers depend only on the
installed versions, so they are kept per version (``library-facts-<hash of the versions>.json``): the first
validation under a version computes them; the next launches read them. Another version of SMP, timm or torch is
another file. A cache that cannot be read or written is only slower: the facts are computed again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

FACTS_FORMAT = 1  # bump when what a key means changes
FACTS_LIBRARIES = ("segmentation_models_pytorch", "timm", "torch")


def cache_dir() -> Path:
    return Path(os.environ.get("SEGCORE_CACHE_DIR") or Path.home() / ".cache" / "segcore")


def _versions() -> str:
    found = []
    for name in FACTS_LIBRARIES:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}==?")
    return f"format {FACTS_FORMAT}; " + ", ".join(found)


class LibraryFacts:
    """A memo on disk: ``get(key, compute)`` returns the stored answer, or computes, stores and returns it.
    Answers are JSON values (lists, strings, booleans, None)."""

    def __init__(self) -> None:
        self._facts: dict[str, Any] | None = None
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            versions = _versions()
            self._path = cache_dir() / f"library-facts-{hashlib.sha256(versions.encode()).hexdigest()[:16]}.json"
        return self._path

    def _load(self) -> dict[str, Any]:
        if self._facts is None:
            try:
                self._facts = dict(json.loads(self.path.read_text())["facts"])
            except (OSError, ValueError, KeyError, TypeError):
                self._facts = {}
        return self._facts

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        facts = self._load()
        if key not in facts:
            facts[key] = compute()
            self._save(key, facts[key])
        return facts[key]

    def _save(self, key: str, value: Any) -> None:
        """Merge ``key`` into the file (another process may have added facts since it was read)."""
        try:
            try:
                stored = dict(json.loads(self.path.read_text())["facts"])
            except (OSError, ValueError, KeyError, TypeError):
                stored = {}
            stored[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"versions": _versions(), "facts": stored}, sort_keys=True))
        except OSError as err:
            log.debug("library facts not saved in %s: %s", self.path, err)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or none of it: a signal or a lost machine mid-write leaves the old file (or no file), never a
    truncated one that the next reader (--resume, --report, the next launch) would then choke on."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


FACTS = LibraryFacts()
