"""segcore.data.layouts: each generic layout found by --data-dir alone, images paired with masks by stem, splits and
class names read as the folder gives them, and every problem of a broken folder named at once."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcore.data.layouts import NAMES_SHOWN, find_layout


def write_pair(images: Path, masks: Path, stem: str, image_suffix: str = ".jpg", mask_suffix: str = ".png") -> None:
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(images / f"{stem}{image_suffix}")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / f"{stem}{mask_suffix}")


def stems(layout, split: str) -> list[str]:
    return [p.stem for p in layout.splits[split]]


def test_images_and_masks_with_split_files_pair_by_stem_across_suffixes(tmp_path):
    for i, suffix in enumerate([".jpg", ".jpeg", ".png", ".tif", ".bmp", ".JPG"]):
        write_pair(tmp_path / "images", tmp_path / "masks", f"s{i}", suffix, ".tif" if i == 3 else ".png")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("s0\ns1\ns2.png\n\n# a comment\ns3\n")
    (tmp_path / "splits" / "val.txt").write_text("s4\n")
    (tmp_path / "splits" / "test.txt").write_text("s5\n")
    layout = find_layout(tmp_path)
    assert layout.kind == "images + masks" and layout.split_source == "splits/*.txt" and not layout.problems
    assert (stems(layout, "train"), stems(layout, "val"), stems(layout, "test")) == (
        ["s0", "s1", "s2", "s3"], ["s4"], ["s5"])
    pair = layout.splits["train"][3]
    assert (pair.image.name, pair.mask.name) == ("s3.tif", "s3.tif")
    assert layout.classes is None  # no class file: named from the masks' values later
    assert "train 4, val 1, test 1" in layout.describe()


def test_without_split_files_the_split_is_drawn_by_fractions_and_seed(tmp_path):
    for i in range(20):
        write_pair(tmp_path / "images", tmp_path / "masks", f"img{i:02d}")
    a, b, c = (find_layout(tmp_path, val_fraction=0.2, test_fraction=0.3, seed=s) for s in (1, 1, 2))
    assert [len(a.splits[s]) for s in ("train", "val", "test")] == [10, 4, 6] and not a.problems
    assert a.splits == b.splits and a.splits != c.splits  # the seed decides, and only the seed
    every = sorted(p.stem for s in a.splits.values() for p in s)
    assert every == [f"img{i:02d}" for i in range(20)]  # each pair in exactly one split
    assert a.split_source == "drawn: val 0.2, test 0.3 of the pairs, seed 1"


def test_split_folders_and_mmsegmentation_folders(tmp_path):
    folders = tmp_path / "folders"
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            write_pair(folders / split / "images", folders / split / "masks", f"{split}{i}")
    layout = find_layout(folders)
    assert layout.kind == "split folders" and not layout.problems
    assert [len(layout.splits[s]) for s in ("train", "val", "test")] == [3, 2, 1]

    mmseg = tmp_path / "mmseg"
    for split, n in (("train", 2), ("val", 2)):  # no test split: MMSegmentation's common case
        for i in range(n):
            write_pair(mmseg / "img_dir" / split, mmseg / "ann_dir" / split, f"{split}{i}")
    layout = find_layout(mmseg)
    assert layout.kind == "mmseg" and not layout.problems
    assert [len(layout.splits[s]) for s in ("train", "val", "test")] == [2, 2, 0]


def test_a_pets_folder_or_an_empty_one_is_no_generic_layout(tmp_path):
    (tmp_path / "pets" / "images").mkdir(parents=True)
    (tmp_path / "pets" / "annotations").mkdir()
    assert find_layout(tmp_path / "pets") is None
    assert find_layout(tmp_path) is None


@pytest.mark.parametrize("name, body, names, colours", [
    ("classes.txt", "background\npet\ntoy\n", ["background", "pet", "toy"], None),
    ("classes.yaml", "[background, road]", ["background", "road"], None),
    ("classes.yaml", "background: [0, 0, 0]\nroad: [128, 64, 128]\ncar: [0, 0, 142]\n",
     ["background", "road", "car"], [(0, 0, 0), (128, 64, 128), (0, 0, 142)]),
    ("id2label.json", json.dumps({"1": "cell", "0": "background"}), ["background", "cell"], None),
], ids=["txt", "yaml-list", "yaml-colours", "id2label"])
def test_class_names_from_each_class_file(tmp_path, name, body, names, colours):
    write_pair(tmp_path / "images", tmp_path / "masks", "a")
    write_pair(tmp_path / "images", tmp_path / "masks", "b")
    (tmp_path / name).write_text(body)
    layout = find_layout(tmp_path, val_fraction=0.5, test_fraction=0.0)
    assert not layout.problems, layout.problems
    assert layout.classes.names == names and layout.classes.colours == colours
    assert layout.classes.source == str(tmp_path / name)


def test_a_broken_folder_has_every_problem_named(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(8):
        write_pair(images, masks, f"ok{i}")
    for i in range(NAMES_SHOWN + 2):  # images without masks: counted, the first few named
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / f"lonely{i}.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "orphan.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "ok0.png")  # a second image of stem ok0
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("ok1\nok2\nmissing\n../etc/passwd\n")
    (tmp_path / "splits" / "val.txt").write_text("ok2\n")
    (tmp_path / "classes.txt").write_text("background\nbackground\n")
    problems = find_layout(tmp_path).problems
    text = "\n".join(problems)
    assert f"{images}: two images named 'ok0' (ok0.jpg, ok0.png)" in text
    assert f"{images}: {NAMES_SHOWN + 2} image(s) without a mask in {masks}: lonely0, lonely1" in text
    assert "... (2 more)" in text
    assert f"{masks}: 1 mask(s) without an image in {images}: orphan" in text
    assert f"{tmp_path / 'splits' / 'train.txt'}: 1 stem(s) with no image and mask pair: missing" in text
    assert "train.txt:4: '../etc/passwd' is a path, not a file stem" in text
    assert f"{tmp_path / 'splits' / 'val.txt'}: 1 stem(s) also in train.txt: ok2" in text
    assert "classes.txt: class name(s) given twice: background" in text
    assert len(problems) == 7, problems  # one line each


@pytest.mark.parametrize("body, message", [
    ("road: [128, 64]\n", "class 'road': expected a colour [r, g, b] of 0-255 integers"),
    ("a: [1, 2, 3]\nb: [1, 2, 3]\n", "two classes share a colour"),
    ("just text", "expected a list of class names, or name: [r, g, b] per class"),
    ("[only]", "1 class(es); a segmentation needs at least 2"),
    ("a: [1, 2, 3\n", "not valid YAML"),
])
def test_a_bad_classes_yaml_is_named(tmp_path, body, message):
    write_pair(tmp_path / "images", tmp_path / "masks", "a")
    write_pair(tmp_path / "images", tmp_path / "masks", "b")
    (tmp_path / "classes.yaml").write_text(body)
    layout = find_layout(tmp_path, val_fraction=0.5, test_fraction=0.0)
    assert layout.classes is None and any(message in p and "classes.yaml" in p for p in layout.problems), \
        layout.problems


def test_an_empty_train_or_val_split_and_a_half_split_folder_are_named(tmp_path):
    write_pair(tmp_path / "train" / "images", tmp_path / "train" / "masks", "a")
    (tmp_path / "val" / "images").mkdir(parents=True)  # its masks folder missing
    layout = find_layout(tmp_path)
    assert f"{tmp_path / 'val' / 'masks'}: not found (its other half is there)" in layout.problems
    assert f"{tmp_path}: the val split is empty (train/ val/ test/ folders)" in layout.problems
