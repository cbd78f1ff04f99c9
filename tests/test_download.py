"""Tests for segcore.data.download against a local HTTP server on 127.0.0.1 serving tiny archives in the official
layout.

The real host is never contacted: ``segcore.data.download.resources`` is patched to the local URLs and md5 sums.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import multiprocessing
import socket
import tarfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import segcore.data.download
from segcore.data.download import FOLDER, download_pets, is_complete
from segcore.errors import UserError

pytestmark = pytest.mark.xdist_group("test_download")  # a module-scoped fixture: one worker

ARCHIVES = ("images.tar.gz", "annotations.tar.gz")


# ----- a counting HTTP server on loopback ------------------------------------------------------------------------

class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, request, client_address, server):
        super().__init__(request, client_address, server, directory=str(server.directory))

    def do_GET(self):
        # torchvision first resolves redirects with a GET carrying the header "Method: HEAD" and does not read the
        # body: that is a probe, not a fetch of the archive
        self.server.record("GET", self.path, probe=self.headers.get("Method") == "HEAD")
        time.sleep(self.server.delay)
        super().do_GET()

    def do_HEAD(self):
        self.server.record("HEAD", self.path, probe=True)
        super().do_HEAD()

    def log_message(self, *args):  # keep test output clean
        pass


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path):
        self.directory = directory
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, bool]] = []
        self.connections = 0
        self.delay = 0.0
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request, client_address):
        with self.lock:
            self.connections += 1  # any contact at all, including segcore's TCP reachability probe
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # a client closing a probe early is expected

    def record(self, method: str, path: str, probe: bool) -> None:
        with self.lock:
            self.requests.append((method, path, probe))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.connections = 0
        self.delay = 0.0

    def fetches(self, archive: str) -> int:
        """Full GETs of ``archive`` (a path under the served folder, e.g. ``bad/images.tar.gz``)."""
        with self.lock:
            return sum(1 for method, path, probe in self.requests if path == f"/{archive}" and not probe)

    def url(self, archive: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{archive}"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The dataset the archives are made of (12 generated images)."""
    from segcore.synthetic import generate

    return generate(tmp_path_factory.mktemp("pets-src"), num=12, seed=5, min_size=64, max_size=80)


@pytest.fixture(scope="module")
def server(source, tmp_path_factory):
    """images.tar.gz and annotations.tar.gz with top-level images/ and annotations/, as the official archives;
    ``bad/<archive>``: the same archive with bytes flipped in the middle (a corrupted transfer), same file name."""
    serve = tmp_path_factory.mktemp("serve")
    (serve / "bad").mkdir()
    for archive, folder in zip(ARCHIVES, ("images", "annotations")):
        with tarfile.open(serve / archive, "w:gz") as tar:
            tar.add(source / folder, arcname=folder)  # recursive, in sorted order: list, test, trainval, trimaps
        data = bytearray((serve / archive).read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        (serve / "bad" / archive).write_bytes(bytes(data))
    srv = CountingServer(serve)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


@pytest.fixture
def local_resources(server, monkeypatch):
    """Point segcore.data.download at the local server; returns the ((url, md5), ...) it now uses."""
    server.reset()
    res = tuple((server.url(a), _md5(server.directory / a)) for a in ARCHIVES)
    monkeypatch.setattr(segcore.data.download, "resources", lambda: res)
    return res


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCORE_CACHE_DIR", str(tmp_path / "decode-cache"))


def assert_dataset_ok(data_dir: Path, source: Path, tiny_config) -> None:
    """Byte-identical to the archived dataset, and accepted by the data module's check()."""
    from segcore.data.datamodule import PetsDataModule

    root = data_dir / FOLDER
    for folder in ("images", "annotations"):
        want = sorted(p.relative_to(source) for p in (source / folder).rglob("*") if p.is_file())
        got = sorted(p.relative_to(root) for p in (root / folder).rglob("*") if p.is_file())
        assert got == want
        assert all((root / p).read_bytes() == (source / p).read_bytes() for p in want)
    summary = PetsDataModule(dataclasses.replace(tiny_config, data_dir=str(data_dir))).check()
    assert summary.root == root
    assert summary.train + summary.val == 6 and summary.test == 6


# ----- tests -----------------------------------------------------------------------------------------------------

def test_download_builds_a_dataset_check_accepts(local_resources, server, source, tmp_path, tiny_config):
    data_dir = tmp_path / "data"
    root = download_pets(data_dir)
    assert root == data_dir / FOLDER and is_complete(root)
    assert_dataset_ok(data_dir, source, tiny_config)
    assert [server.fetches(a) for a in ARCHIVES] == [1, 1]
    assert not list(root.glob("*.tar.gz"))  # the archives are not left behind


def test_second_call_downloads_nothing(local_resources, server, tmp_path):
    data_dir = tmp_path / "data"
    root = download_pets(data_dir)
    assert [server.fetches(a) for a in ARCHIVES] == [1, 1]
    server.reset()
    assert download_pets(data_dir) == root
    assert download_pets(root) == root  # pointing at the dataset folder itself works too
    assert server.requests == [] and server.connections == 0


@pytest.mark.parametrize("where", ["data_dir", "oxford-iiit-pet"])
def test_present_dataset_returned_without_any_request(where, local_resources, server, tmp_path):
    from segcore.synthetic import generate

    data_dir = tmp_path / "data"
    root = data_dir if where == "data_dir" else data_dir / FOLDER
    generate(root, num=4, seed=0, min_size=64, max_size=64)
    assert download_pets(data_dir) == root
    assert server.requests == [] and server.connections == 0
    if where == "data_dir":
        assert not (data_dir / FOLDER).exists()  # nothing created beside the user's dataset


def _download_in_child(data_dir: str, resources, barrier, results) -> None:
    """Runs in a spawned process: the same patched download, started together with the other process."""
    segcore.data.download.resources = lambda: resources
    barrier.wait(timeout=120)
    try:
        results.put(("ok", str(download_pets(data_dir))))
    except BaseException as exc:  # report everything to the parent
        results.put(("error", repr(exc)))


@pytest.mark.slow
def test_two_concurrent_processes_download_once(local_resources, server, source, tmp_path, tiny_config):
    data_dir = tmp_path / "data"
    server.delay = 0.3  # the first process holds the lock while the second arrives
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_download_in_child, args=(str(data_dir), local_resources, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert outcomes == [("ok", str(data_dir / FOLDER))] * 2
    assert [server.fetches(a) for a in ARCHIVES] == [1, 1]
    assert_dataset_ok(data_dir, source, tiny_config)


@pytest.mark.parametrize("corrupt", ARCHIVES)
def test_corrupt_archive_fails_md5_and_leaves_nothing_marked_complete(corrupt, local_resources, server, source,
                                                                      monkeypatch, tmp_path, tiny_config):
    from segcore.data.datamodule import PetsDataModule

    # the server sends corrupted bytes for one archive; the md5 expected is the true one
    damaged = tuple((server.url(f"bad/{corrupt}") if url.endswith(corrupt) else url, md5)
                    for url, md5 in local_resources)
    monkeypatch.setattr(segcore.data.download, "resources", lambda: damaged)
    data_dir = tmp_path / "data"
    with pytest.raises((RuntimeError, UserError)):
        download_pets(data_dir)
    assert server.fetches(f"bad/{corrupt}") == 1
    assert not is_complete(data_dir / FOLDER) and not is_complete(data_dir)
    assert not (data_dir / FOLDER / "annotations").exists()  # nothing of a corrupt annotations archive extracted
    with pytest.raises(UserError):  # and the data module does not take the partial folder for a dataset
        PetsDataModule(dataclasses.replace(tiny_config, data_dir=str(data_dir))).check()

    # once the transfer is good, the next call fetches that archive again and completes the dataset
    server.reset()
    monkeypatch.setattr(segcore.data.download, "resources", lambda: local_resources)
    assert download_pets(data_dir) == data_dir / FOLDER
    assert server.fetches(corrupt) == 1
    assert_dataset_ok(data_dir, source, tiny_config)


def test_interrupted_extraction_is_not_taken_for_complete(local_resources, server, source, monkeypatch, tmp_path,
                                                          tiny_config):
    import torchvision.datasets.utils as tv_utils

    real_extract = tv_utils.extract_archive

    def disk_full_during_annotations(from_path, to_path=None, remove_finished=False):
        if not str(from_path).endswith("annotations.tar.gz"):
            return real_extract(from_path, to_path, remove_finished)
        with tarfile.open(from_path) as tar:  # extract up to the first trimap, then run out of space
            for member in tar:
                tar.extract(member, to_path)
                if "/trimaps/" in member.name:
                    raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tv_utils, "extract_archive", disk_full_during_annotations)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="No space left on device"):
        download_pets(data_dir)
    assert not (data_dir / FOLDER / "images").exists()  # nothing half-made where the dataset goes
    monkeypatch.setattr(tv_utils, "extract_archive", real_extract)

    # the next --download run finishes the dataset from the kept archives, fetching neither again
    download_pets(data_dir)
    assert_dataset_ok(data_dir, source, tiny_config)
    assert server.fetches("images.tar.gz") == 1 and server.fetches("annotations.tar.gz") == 1


def test_unreachable_url_raises_user_error_quickly(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = tuple((f"http://127.0.0.1:{port}/{a}", "0" * 32) for a in ARCHIVES)
    monkeypatch.setattr(segcore.data.download, "resources", lambda: res)
    data_dir = tmp_path / "data"
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        download_pets(data_dir)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "--download" in message and "127.0.0.1" in message and str(data_dir / FOLDER) in message
    assert not is_complete(data_dir / FOLDER)
