"""Tests for segcore.data (pets, decoded, items, datamodule): image modes, trimap mapping, splits, layout, decode
cache, augmentation."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcore.data import PetsDataModule, PetsSegmentation, find_root, read_split, split_trainval, trimap_lut
from segcore.data.decoded import DecodedSplit, decode_item
from segcore.errors import UserError
from segcore.losses import IGNORE_INDEX
from segcore.synthetic import generate

SIZE = 64  # TINY's image_size


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test decodes into its own cache folder, so cache state never leaks between tests."""
    cache = tmp_path / "decode-cache"
    monkeypatch.setenv("SEGCORE_CACHE_DIR", str(cache))
    return cache


def config_for(tiny_config, data_dir, **changes):
    return dataclasses.replace(tiny_config, data_dir=str(data_dir), **changes)


def first_listed(root: Path, split: str = "trainval") -> str:
    names, problems = read_split(root, split)
    assert not problems and names
    return names[0]


def resized(img: Image.Image) -> np.ndarray:
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


# ----- odd image modes ------------------------------------------------------------------------------------------

def _write_odd(mode: str, rgb: Image.Image, path: Path) -> None:
    """Write ``rgb`` (the original image) at ``path`` (a ``.jpg`` name) in the given odd form."""
    if mode == "L":
        rgb.convert("L").save(path, "PNG")
    elif mode == "P":
        rgb.convert("P", palette=Image.ADAPTIVE, colors=256).save(path, "PNG")
    elif mode == "P+transparency":
        rgb.convert("P", palette=Image.ADAPTIVE, colors=256).save(path, "PNG", transparency=0)
    elif mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, "PNG")
    elif mode == "CMYK":
        rgb.convert("CMYK").save(path, "JPEG", quality=95)
    elif mode == "I;16":
        gray = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(gray).save(path, "PNG")
    elif mode == "PNG bytes as .jpg":
        rgb.save(path, "PNG")
    else:  # pragma: no cover
        raise AssertionError(mode)


# mode -> (mode PIL reports when reading the file, format PIL detects)
ODD_MODES = {
    "L": ("L", "PNG"),
    "P": ("P", "PNG"),
    "P+transparency": ("P", "PNG"),
    "RGBA": ("RGBA", "PNG"),
    "CMYK": ("CMYK", "JPEG"),
    "I;16": ("I;16", "PNG"),
    "PNG bytes as .jpg": ("RGB", "PNG"),
}


@pytest.mark.parametrize("mode", list(ODD_MODES), ids=list(ODD_MODES))
def test_odd_image_modes_load_as_rgb_uint8(mode, pets_copy, tiny_config):
    name = first_listed(pets_copy)
    image_file = pets_copy / "images" / f"{name}.jpg"
    trimap_file = pets_copy / "annotations" / "trimaps" / f"{name}.png"
    with Image.open(image_file) as f:
        original = f.convert("RGB")
    with Image.open(trimap_file) as t:
        assert t.size == original.size  # the replacement keeps the trimap's size
    _write_odd(mode, original, image_file)
    with Image.open(image_file) as f:  # the file really is in the odd form under test
        assert (f.mode, f.format) == ODD_MODES[mode]
        if mode == "P+transparency":
            assert "transparency" in f.info

    image, trimap = decode_item(image_file, trimap_file, SIZE)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert trimap.shape == (SIZE, SIZE) and set(np.unique(trimap).tolist()) <= {1, 2, 3}

    # the content survives the conversion (not a black or garbage image)
    ref = resized(original).astype(np.float32)
    got = image.astype(np.float32)
    if mode in ("RGBA", "PNG bytes as .jpg"):  # lossless: RGB channels kept exactly
        assert np.array_equal(image, resized(original))
    elif mode in ("L", "I;16"):  # gray: three equal channels following the original's luminance
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        gray = resized(original.convert("L")).astype(np.float32)
        assert np.corrcoef(got[..., 0].ravel(), gray.ravel())[0, 1] > 0.99
    else:  # palette quantisation / CMYK JPEG: close to the original colours
        assert np.abs(got - ref).mean() < 8, np.abs(got - ref).mean()

    # and the whole pipeline accepts it: check() then an item through the dataset
    dm = PetsDataModule(config_for(tiny_config, pets_copy))
    summary = dm.check()
    assert summary.train + summary.val == 12 and summary.test == 12
    decoded = dm.decoded["trainval"]
    j = decoded.names.index(name)
    item = PetsSegmentation(decoded, np.arange(len(decoded)))[j]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (1, SIZE, SIZE) and item["mask"].dtype == torch.uint8
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), image)


# ----- trimap values -> mask -------------------------------------------------------------------------------------

# border mode -> mask values for trimap values 1 (pet), 2 (background), 3 (border)
EXPECTED_MASK = {"pet": (1, 0, 1), "background": (1, 0, 0), "ignore": (1, 0, IGNORE_INDEX)}


@pytest.mark.parametrize("border", list(EXPECTED_MASK))
def test_trimap_values_map_to_mask_per_border_mode(border):
    pet, background, edge = EXPECTED_MASK[border]
    lut = trimap_lut(border)
    assert (int(lut[1]), int(lut[2]), int(lut[3])) == (pet, background, edge)

    # a dataset item of a trimap holding all three values: left third pet, middle background, right third border
    trimap = np.full((SIZE, SIZE), 2, dtype=np.uint8)
    trimap[:, :20] = 1
    trimap[:, 44:] = 3
    decoded = DecodedSplit(["x"], np.zeros((1, 3, SIZE, SIZE), np.uint8), trimap[None])
    mask = PetsSegmentation(decoded, [0], border=border)[0]["mask"]
    assert mask.shape == (1, SIZE, SIZE) and mask.dtype == torch.uint8
    mask = mask[0].numpy()
    assert (mask[trimap == 1] == pet).all()
    assert (mask[trimap == 2] == background).all()
    assert (mask[trimap == 3] == edge).all()
    assert set(np.unique(mask).tolist()) == {pet, background, edge}


@pytest.mark.parametrize("border", list(EXPECTED_MASK))
def test_trimap_border_mode_through_datamodule(border, tiny_config, pets_root):
    dm = PetsDataModule(config_for(tiny_config, pets_root, border=border))
    dm.setup("fit")
    trimaps = np.asarray(dm.decoded["trainval"].labels)
    expected = np.array([0, *EXPECTED_MASK[border]], dtype=np.uint8)  # index = trimap value
    for k in range(len(dm.val_set)):
        j = int(dm.val_set.indices[k])
        assert set(np.unique(trimaps[j]).tolist()) == {1, 2, 3}
        assert np.array_equal(dm.val_set[k]["mask"][0].numpy(), expected[trimaps[j]])


# ----- splits ----------------------------------------------------------------------------------------------------

# n -> round(n * 0.1), at least 1 (Python's round: 0.5 -> 0, hence 1)
VAL_SIZES = {1: 1, 5: 1, 7: 1, 10: 1, 24: 2, 100: 10, 3680: 368}


@pytest.mark.parametrize("n", list(VAL_SIZES))
def test_split_trainval_is_deterministic_disjoint_and_complete(n):
    train, val = split_trainval(n, 0.1, seed=42)
    train2, val2 = split_trainval(n, 0.1, seed=42)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert len(val) == VAL_SIZES[n]
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))


@pytest.mark.parametrize("n", [24, 100, 3680])
def test_split_trainval_differs_with_seed(n):
    _, val_a = split_trainval(n, 0.1, seed=0)
    _, val_b = split_trainval(n, 0.1, seed=1)
    assert len(val_a) == len(val_b)
    assert not np.array_equal(val_a, val_b)


def _val_names(config) -> list[str]:
    dm = PetsDataModule(config)
    dm.setup("fit")
    names = dm.decoded["trainval"].names
    train_names = {names[int(i)] for i in dm.train_set.indices}
    val_names = [names[int(i)] for i in dm.val_set.indices]
    assert not train_names & set(val_names)
    assert len(train_names) + len(val_names) == len(names)
    return val_names


def test_setup_fit_twice_gives_same_validation_images(tiny_config, pets_root):
    config = config_for(tiny_config, pets_root, val_fraction=0.5)
    first = _val_names(config)
    assert len(first) == 6
    assert _val_names(config) == first
    assert _val_names(dataclasses.replace(config, seed=config.seed + 1)) != first


# ----- layout ----------------------------------------------------------------------------------------------------

def test_find_root_finds_torchvision_subfolder(tmp_path, tiny_config):
    dataset = generate(tmp_path / "oxford-iiit-pet", num=4, seed=0, min_size=64, max_size=64)
    assert find_root(tmp_path) == dataset
    assert find_root(dataset) == dataset
    summary = PetsDataModule(config_for(tiny_config, tmp_path)).check()
    assert summary.root == dataset and summary.train + summary.val == 2 and summary.test == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="oxford-iiit-pet"):
        find_root(tmp_path / "empty")


# ----- decoded cache ---------------------------------------------------------------------------------------------

def _cache_state(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(cache.iterdir())
            if not p.name.endswith(".lock")}


def _count_decodes(monkeypatch) -> list[str]:
    import segcore.data.decoded

    calls: list[str] = []
    real = segcore.data.decoded.decode_item

    def counting(image_file, trimap_file, size):
        calls.append(Path(image_file).stem)
        return real(image_file, trimap_file, size)

    monkeypatch.setattr(segcore.data.decoded, "decode_item", counting)
    return calls


def test_decoded_cache_reused_by_a_new_datamodule(tiny_config, pets_copy, private_cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    config = config_for(tiny_config, pets_copy)
    first = PetsDataModule(config)
    first.check()
    assert len(calls) == 24  # every image decoded once
    state = _cache_state(private_cache)
    assert sum(name.endswith(".json") for name in state) == 2  # one entry per split

    calls.clear()
    second = PetsDataModule(config)
    second.check()
    assert calls == []  # nothing decoded again
    assert _cache_state(private_cache) == state  # no new files, none rewritten
    for split in ("trainval", "test"):
        assert second.decoded[split].names == first.decoded[split].names
        assert np.array_equal(second.decoded[split].images, first.decoded[split].images)
        assert np.array_equal(second.decoded[split].labels, first.decoded[split].labels)


def test_decoded_cache_rebuilt_when_an_image_changes(tiny_config, pets_copy, private_cache, monkeypatch):
    config = config_for(tiny_config, pets_copy)
    first = PetsDataModule(config)
    first.check()
    before = _cache_state(private_cache)

    name = first_listed(pets_copy)
    image_file = pets_copy / "images" / f"{name}.jpg"
    with Image.open(image_file) as f:
        flipped = f.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)
    flipped.save(image_file, "JPEG", quality=90)  # rewritten in place: new bytes and mtime, same name

    calls = _count_decodes(monkeypatch)
    second = PetsDataModule(config)
    second.check()
    after = _cache_state(private_cache)
    new = sorted(set(after) - set(before))
    assert len(new) == 3 and all(n.startswith("trainval-") for n in new)  # .json + .images.npy + .labels.npy
    assert {k: after[k] for k in before} == before  # the test split's entry is reused untouched
    assert len(calls) == 12  # the trainval split decoded again, the test split not

    j = first.decoded["trainval"].names.index(name)
    old = np.asarray(first.decoded["trainval"].images[j])
    now = np.asarray(second.decoded["trainval"].images[j])
    assert np.abs(now.astype(int) - old[..., ::-1].astype(int)).mean() < 3  # the new entry holds the new image
    assert np.abs(now.astype(int) - old.astype(int)).mean() > 10


# ----- augmentation ----------------------------------------------------------------------------------------------

def test_train_augmentation_flips_image_and_mask_together(tiny_config, pets_root):
    dm = PetsDataModule(config_for(tiny_config, pets_root))
    dm.setup("fit")
    train = dm.train_set
    assert train.augment and not dm.val_set.augment
    j = int(train.indices[0])
    image = torch.from_numpy(np.array(dm.decoded["trainval"].images[j]))  # stored channels first
    mask = torch.from_numpy(train.lut[np.array(dm.decoded["trainval"].labels[j])]).unsqueeze(0)
    flipped_image, flipped_mask = image.flip(-1), mask.flip(-1)
    assert not torch.equal(image, flipped_image) and not torch.equal(mask, flipped_mask)

    torch.manual_seed(0)
    seen = {"original": 0, "flipped": 0}
    for _ in range(100):
        item = train[0]
        if torch.equal(item["image"], image):
            assert torch.equal(item["mask"], mask)
            seen["original"] += 1
        else:
            assert torch.equal(item["image"], flipped_image)
            assert torch.equal(item["mask"], flipped_mask)
            seen["flipped"] += 1
    assert seen["original"] > 20 and seen["flipped"] > 20, seen


def test_validation_items_are_never_flipped(tiny_config, pets_root):
    dm = PetsDataModule(config_for(tiny_config, pets_root))
    dm.setup("fit")
    j = int(dm.val_set.indices[0])
    image = torch.from_numpy(np.array(dm.decoded["trainval"].images[j]))
    torch.manual_seed(0)
    assert all(torch.equal(dm.val_set[0]["image"], image) for _ in range(20))


# ----- batches ---------------------------------------------------------------------------------------------------

def test_loader_batches_equal_the_items_and_flip_image_and_mask_together(tiny_config, pets_root):
    """The loader takes whole batches (``__getitems__``): the same tensors as the items, each flipped or not."""
    dm = PetsDataModule(config_for(tiny_config, pets_root, border="ignore", batch_size=5))
    dm.setup("fit")
    plain = PetsSegmentation(dm.decoded["trainval"], dm.train_set.indices, border="ignore")

    val_batch = next(iter(dm.val_dataloader()))  # no augmentation: exactly the stacked items, in order
    n = len(val_batch["image"])
    assert n == min(5, len(dm.val_set))
    for key in ("image", "mask"):
        assert torch.equal(val_batch[key], torch.stack([dm.val_set[k][key] for k in range(n)]))

    cache_before = np.array(dm.decoded["trainval"].images)
    torch.manual_seed(0)
    positions = list(range(len(plain)))
    batch = dm.train_set.__getitems__(positions)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (len(plain), 3, SIZE, SIZE)
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (len(plain), 1, SIZE, SIZE)
    flipped = 0
    for k in positions:
        item = plain[k]
        if torch.equal(batch["image"][k], item["image"]):
            assert torch.equal(batch["mask"][k], item["mask"])
        else:  # flipped: the image and its mask, both
            assert torch.equal(batch["image"][k], item["image"].flip(-1))
            assert torch.equal(batch["mask"][k], item["mask"].flip(-1))
            flipped += 1
    assert 0 < flipped < len(plain)  # a random share, not none or all
    assert np.array_equal(dm.decoded["trainval"].images, cache_before)  # the shared cache is never flipped in place


def test_the_data_package_checks_data_without_torch_and_its_modules_import_in_any_order():
    """A sweep's driver checks and decodes the data while its Ray starts, and imports no torch before its trials do;
    the package's public names (segcore.data.PetsDataModule, ...) still resolve, each from its module on first use.
    In a fresh process the device path is imported before the modules it uses: an import circle fails there."""
    import subprocess
    import sys

    code = ("import sys, segcore.data, segcore.data.pets, segcore.data.decoded, segcore.data.download; "
            "light = 'torch' not in sys.modules; import segcore.data.device_batches; "
            "from segcore.data import PetsDataModule, find_root, collate; "
            "import segcore.data.datamodule as dm, segcore.data.items as it, segcore.data.pets as p; "
            "print(light, PetsDataModule is dm.PetsDataModule, collate is it.collate, find_root is p.find_root)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True"] * 4, out.stdout + out.stderr
    with pytest.raises(AttributeError, match="no attribute 'PetDataModule'"):
        import segcore.data

        segcore.data.PetDataModule  # noqa: B018 - a misspelt name is an AttributeError, not an import
