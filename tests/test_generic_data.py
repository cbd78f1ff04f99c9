"""segcore.data.generic: each mask encoding read as what it stores (palette index, index PNG / 16-bit TIFF, 0/255,
RGB colours through classes.yaml), 255 ignored, classes named, and every problem of a broken folder in one error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segcore.data.generic import IGNORE, check_generic
from segcore.data.layouts import find_layout
from segcore.errors import UserError

SIZE = 16
COLOURS = [(0, 0, 0), (200, 30, 30), (30, 200, 30)]


def label_map(seed: int, classes: int = 3, ignore_band: bool = False) -> np.ndarray:
    """A 24 x 32 label map: class 0 around, classes 1.. as blocks; optionally a 255 band along one edge."""
    labels = np.zeros((24, 32), np.uint8)
    for c in range(1, classes):
        y = (seed * 3 + c * 7) % 12
        labels[y:y + 8, (c - 1) * 10:(c - 1) * 10 + 9] = c
    if ignore_band:
        labels[:, -2:] = IGNORE
    return labels


def write_dataset(root, encode, n: int = 6, classes: int = 3, ignore_band: bool = False) -> None:
    """``n`` pairs in images/ + masks/, each mask written by ``encode(labels, path)``; split files 4 / 1 / 1."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        labels = label_map(i, classes, ignore_band)
        wide = labels.astype(np.int32)
        rgb = np.stack([wide * 60 % 256, np.full_like(wide, 90), 255 - wide], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"im{i}.jpg")
        encode(labels, root / "masks" / f"im{i}")
    (root / "splits").mkdir()
    for split, stems in (("train", range(4)), ("val", [4]), ("test", [5])):
        (root / "splits" / f"{split}.txt").write_text("".join(f"im{i}\n" for i in stems))


def palette_png(labels, path):
    img = Image.fromarray(labels, mode="P")
    img.putpalette([v for c in [(250, 250, 0), (0, 0, 250), (0, 250, 0)] for v in c] + [0] * (253 * 3))
    img.save(path.with_suffix(".png"))


def index_png(labels, path):
    Image.fromarray(labels, mode="L").save(path.with_suffix(".png"))


def index_tiff_16bit(labels, path):
    Image.fromarray(labels.astype(np.uint16)).save(path.with_suffix(".tif"))


def rgb_png(labels, path):
    table = np.array(COLOURS + [(0, 0, 0)] * 253, np.uint8)
    Image.fromarray(table[labels]).save(path.with_suffix(".png"))


def check(root, **kw):
    return check_generic(find_layout(root, **kw), SIZE)


@pytest.mark.parametrize("encode, encoding", [(palette_png, "palette"), (index_png, "index"),
                                              (index_tiff_16bit, "index")], ids=["palette", "index", "tiff16"])
def test_single_channel_masks_are_their_stored_class_indices(tmp_path, encode, encoding):
    write_dataset(tmp_path, encode)
    (tmp_path / "classes.txt").write_text("background\npet\ntoy\n")
    data = check(tmp_path)
    assert data.class_names == ["background", "pet", "toy"] and encoding in data.encoding
    train = data.decoded["train"]
    assert train.images.shape == (4, 3, SIZE, SIZE) and train.labels.shape == (4, SIZE, SIZE)
    expected = np.asarray(Image.fromarray(label_map(0)).resize((SIZE, SIZE), Image.NEAREST))
    assert np.array_equal(data.lut[train.labels[0]], expected)  # the palette's index, never its colour
    assert sum(data.train_shares) == pytest.approx(1.0) and all(s > 0 for s in data.train_shares)
    assert not data.warnings


def test_classes_are_named_from_the_values_and_255_is_ignored(tmp_path):
    write_dataset(tmp_path, index_png, classes=4, ignore_band=True)
    data = check(tmp_path)
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert "255 = ignore" in data.encoding and data.lut[IGNORE] == IGNORE
    labels = data.lut[data.decoded["train"].labels]
    assert (labels[:, :, -1] == IGNORE).all()  # the band: not a class, so neither trained on nor scored
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, IGNORE}


def test_masks_of_only_0_and_255_are_binary_with_255_the_foreground(tmp_path):
    write_dataset(tmp_path, lambda labels, path: index_png(np.where(labels > 0, 255, 0).astype(np.uint8), path))
    data = check(tmp_path)
    assert data.class_names == ["background", "foreground"]
    assert data.encoding.startswith("binary 0/255 (255 = foreground")
    assert (data.lut[0], data.lut[255]) == (0, 1)
    assert set(np.unique(data.lut[data.decoded["train"].labels]).tolist()) == {0, 1}


def test_rgb_masks_through_the_colours_of_classes_yaml(tmp_path):
    write_dataset(tmp_path, rgb_png)
    (tmp_path / "classes.yaml").write_text("sky: [0, 0, 0]\nroof: [200, 30, 30]\ntree: [30, 200, 30]\n")
    data = check(tmp_path)
    assert data.class_names == ["sky", "roof", "tree"] and "RGB colours" in data.encoding
    expected = np.asarray(Image.fromarray(label_map(1)).resize((SIZE, SIZE), Image.NEAREST))
    assert np.array_equal(data.lut[data.decoded["train"].labels[1]], expected)


def test_a_class_missing_from_a_split_is_warned_about(tmp_path):
    write_dataset(tmp_path, index_png)
    index_png(np.zeros((24, 32), np.uint8), tmp_path / "masks" / "im4")  # the val image: all class 0
    data = check(tmp_path)
    assert data.warnings == ["warning: no pixel of class class_1, class_2 in the val split"]


def test_a_broken_dataset_names_every_problem_at_once(tmp_path):
    write_dataset(tmp_path, index_png, n=6)
    masks = tmp_path / "masks"
    index_png(np.full((10, 10), 1, np.uint8), masks / "im0")  # another size than its image
    labels = label_map(1)
    labels[0, 0] = 7
    index_png(labels, masks / "im1")  # 7: no class of 3, not 255
    (masks / "im2.png").write_bytes(b"not a png")  # unreadable
    rgb_png(label_map(3), masks / "im3")  # colour, and no classes.yaml has colours
    (tmp_path / "classes.txt").write_text("background\npet\ntoy\n")
    with pytest.raises(UserError) as caught:
        check(tmp_path)
    lines = caught.value.problems
    text = "\n".join(lines)
    assert f"{masks / 'im0.png'}: mask size 10x10 differs from its image's 32x24" in text
    assert f"{masks / 'im1.png'}: values [7] are neither a class (0-2, {tmp_path / 'classes.txt'}) nor 255" in text
    assert f"{masks / 'im2.png'}: cannot be decoded as a mask" in text
    assert f"{masks / 'im3.png'}: a colour (RGB) mask, and no classes.yaml gives the classes' colours" in text
    assert len(lines) == 4, lines
    assert str(caught.value).startswith(f"dataset {tmp_path}: 4 problem(s) found:")


def test_a_colour_not_in_classes_yaml_is_named_with_its_file(tmp_path):
    write_dataset(tmp_path, rgb_png)
    (tmp_path / "classes.yaml").write_text("sky: [0, 0, 0]\nroof: [200, 30, 30]\n")  # tree's colour missing
    with pytest.raises(UserError) as caught:
        check(tmp_path)
    lines = caught.value.problems
    assert any("colours not in classes.yaml: (30, 200, 30)" in line for line in lines), lines
