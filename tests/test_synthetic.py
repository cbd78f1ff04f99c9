"""Tests for segcore.synthetic: the Oxford-IIIT Pet stand-in in the official layout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcore.errors import UserError
from segcore.synthetic import BREEDS, generate

pytestmark = pytest.mark.xdist_group("test_synthetic")  # a module-scoped fixture: one worker

REPO = Path(__file__).resolve().parents[1]
NUM = 40


def _read_split(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pets") / "oxford-iiit-pet"
    out = generate(root, num=NUM, seed=0)
    assert out == root
    return root


def test_layout(dataset: Path):
    ann = dataset / "annotations"
    raw = (ann / "list.txt").read_text().splitlines()
    header = [line for line in raw if line.startswith("#")]
    assert len(header) == 6 and raw[:6] == header
    assert header[0] == "#Image CLASS-ID SPECIES BREED ID"

    lines = _read_split(ann / "list.txt")
    assert len(lines) == NUM
    names = set()
    ids_by_breed: dict[str, tuple[int, int, int]] = {}
    for line in lines:
        cols = line.split(" ")
        assert len(cols) == 4, line
        name, class_id, species, breed_id = cols[0], int(cols[1]), int(cols[2]), int(cols[3])
        breed, n = name.rsplit("_", 1)
        assert breed in BREEDS and int(n) >= 1
        assert 1 <= class_id <= 37 and BREEDS[class_id - 1] == breed
        is_cat = breed[0].isupper()
        assert species == (1 if is_cat else 2)
        assert 1 <= breed_id <= (12 if is_cat else 25)
        assert ids_by_breed.setdefault(breed, (class_id, species, breed_id)) == (class_id, species, breed_id)
        assert (dataset / "images" / f"{name}.jpg").is_file()
        assert (ann / "trimaps" / f"{name}.png").is_file()
        names.add(name)
    assert len(names) == NUM

    # a few known ids from the official list
    official = {"Abyssinian": (1, 1, 1), "american_bulldog": (2, 2, 1), "Bengal": (6, 1, 2),
                "boxer": (9, 2, 5), "Sphynx": (34, 1, 12)}
    for breed, ids in official.items():
        if breed in ids_by_breed:
            assert ids_by_breed[breed] == ids
    assert len(BREEDS) == 37 and sum(b[0].isupper() for b in BREEDS) == 12

    trainval = _read_split(ann / "trainval.txt")
    test = _read_split(ann / "test.txt")
    assert not (set(trainval) & set(test))
    assert sorted(trainval + test) == sorted(lines)
    assert abs(len(trainval) - len(test)) <= 1
    assert len(list((dataset / "images").iterdir())) == NUM
    assert len(list((ann / "trimaps").iterdir())) == NUM


def test_trimaps(dataset: Path):
    for line in _read_split(dataset / "annotations" / "list.txt"):
        name = line.split()[0]
        image = Image.open(dataset / "images" / f"{name}.jpg")
        trimap = Image.open(dataset / "annotations" / "trimaps" / f"{name}.png")
        assert image.mode == "RGB" and image.format == "JPEG"
        assert trimap.mode == "L" and trimap.format == "PNG"
        assert trimap.size == image.size
        assert all(96 <= s <= 160 for s in image.size)
        t = np.asarray(trimap)
        assert set(np.unique(t).tolist()) == {1, 2, 3}, name
        # the pet must be visibly different from the background (so a model can learn it)
        rgb = np.asarray(image, dtype=np.float32)
        diff = np.linalg.norm(rgb[t == 1].mean(axis=0) - rgb[t == 2].mean(axis=0))
        assert diff > 30, (name, diff)


def test_deterministic(tmp_path: Path):
    a = _all_files(generate(tmp_path / "a", num=10, seed=3))
    b = _all_files(generate(tmp_path / "b", num=10, seed=3))
    assert a == b
    c = _all_files(generate(tmp_path / "c", num=10, seed=4))
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert images and all(a[k] != c[k] for k in images)


def test_bad_arguments(tmp_path: Path):
    for kwargs, flag in [({"num": 1}, "--num"), ({"min_size": 20}, "--min-size"),
                         ({"min_size": 150, "max_size": 100}, "--max-size")]:
        with pytest.raises(UserError, match=flag):
            generate(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()
    # small images still get all three trimap values
    root = generate(tmp_path / "small", num=6, seed=1, min_size=32, max_size=32)
    for p in (root / "annotations" / "trimaps").iterdir():
        assert set(np.unique(np.asarray(Image.open(p))).tolist()) == {1, 2, 3}
    with pytest.raises(UserError, match="refusing to overwrite"):
        generate(root, num=6)


def test_torchvision_reads_it(tmp_path: Path):
    datasets = pytest.importorskip("torchvision.datasets")
    root = generate(tmp_path / "oxford-iiit-pet", num=12, seed=0)
    ds = datasets.OxfordIIITPet(root=str(tmp_path), split="trainval", target_types="segmentation", download=False)
    assert len(ds) == len(_read_split(root / "annotations" / "trainval.txt")) == 6
    image, trimap = ds[0]
    assert isinstance(image, Image.Image) and isinstance(trimap, Image.Image)
    assert image.mode == "RGB" and image.size == trimap.size
    assert set(np.unique(np.asarray(trimap)).tolist()) == {1, 2, 3}
    test_ds = datasets.OxfordIIITPet(root=str(tmp_path), split="test", target_types="category", download=False)
    assert len(test_ds) == 6


def test_cli(tmp_path: Path):
    out = tmp_path / "pets"
    cmd = [sys.executable, "-m", "segcore.synthetic", str(out), "--num", "12"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.strip().splitlines()) == 1
    assert "12" in first.stdout and str(out) in first.stdout
    assert len(list((out / "images").glob("*.jpg"))) == 12

    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert str(out) in second.stderr
    assert "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1

    bad = subprocess.run([sys.executable, "-m", "segcore.synthetic", str(tmp_path / "x"), "--num", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--num" in bad.stderr and "Traceback" not in bad.stderr
