"""A folder of one's own (issue #35) from the data to the model: every layout and mask encoding reaches training as
class indices (255 ignored), two classes train as binary and more as multi-class with a mean IoU and each class's
IoU, Oxford-IIIT Pet's trimap trains as three classes on request, and the classes travel in the config and the
checkpoint. The sweep on such a folder is test_own_data_sweep.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_generic_data import IGNORE, index_png, label_map, palette_png, rgb_png, write_dataset

from conftest import TINY, run_cli
from segcore.config import TrainConfig
from segcore.data.datamodule import PetsDataModule
from segcore.data.dataset import check_dataset, classes_for
from segcore.errors import UserError

SIZE = 32


def binary_0_255(labels, path):  # the foreground saved as 255: MMSegmentation's most asked question
    Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), mode="L").save(path.with_suffix(".png"))


def config_for(root, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "image_size": SIZE, "batch_size": 2, "data_dir": str(root), **changes})


def batches_of(cfg: TrainConfig):
    datamodule = PetsDataModule(cfg)
    summary = datamodule.check()
    datamodule.cfg = cfg.replace(classes=classes_for(cfg.classes, summary, cfg.data_dir))
    datamodule.setup("fit")
    val = datamodule.val_set.__getitems__(list(range(len(datamodule.val_set))))
    return summary, datamodule, val["mask"].numpy()


@pytest.mark.parametrize("encode, classes_file, expected_classes", [
    (palette_png, "classes.txt", ["background", "pet", "toy"]),
    (index_png, None, ["class_0", "class_1", "class_2"]),
    (rgb_png, "classes.yaml", ["bg", "red", "green"]),
    (binary_0_255, None, ["background", "foreground"]),
], ids=["palette", "index", "rgb", "binary-0-255"])
def test_every_mask_encoding_reaches_the_model_as_class_indices(tmp_path, encode, classes_file, expected_classes):
    # a colour mask has no 255 (its colours are all classes); in a 0/255 mask 255 is the foreground
    ignore_band = encode not in (rgb_png, binary_0_255)
    write_dataset(tmp_path, encode, ignore_band=ignore_band)
    if classes_file == "classes.txt":
        (tmp_path / "classes.txt").write_text("background\npet\ntoy\n")
    elif classes_file == "classes.yaml":
        (tmp_path / "classes.yaml").write_text("bg: [0, 0, 0]\nred: [200, 30, 30]\ngreen: [30, 200, 30]\n")
    summary, datamodule, masks = batches_of(config_for(tmp_path))
    assert summary.classes == expected_classes and (summary.train, summary.val, summary.test) == (4, 1, 1)
    assert datamodule.cfg.num_classes == len(expected_classes)
    # the validation image is im4: its labels resized as the decoder resizes them, then the classes trained on
    stored = np.asarray(Image.fromarray(label_map(4, ignore_band=ignore_band)).resize((SIZE, SIZE), Image.NEAREST))
    expected = np.where(stored == IGNORE, IGNORE, np.minimum(stored, len(expected_classes) - 1))  # 2 classes: 0 / 1
    assert np.array_equal(masks[0, 0], expected)
    assert (IGNORE in masks) == ignore_band


def per_split_layout(flat, root, layout: str):
    """``flat`` (write_dataset's images/ + masks/ + splits/) laid out again as ``layout``: "mmseg" (img_dir/ +
    ann_dir/) or "split-folders" ({train,val,test}/{images,masks}/); classes files copied along."""
    for split in ("train", "val", "test"):
        images, masks = ((root / "img_dir" / split, root / "ann_dir" / split) if layout == "mmseg"
                         else (root / split / "images", root / split / "masks"))
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for stem in (flat / "splits" / f"{split}.txt").read_text().split():
            shutil.copy(flat / "images" / f"{stem}.jpg", images)
            shutil.copy(next((flat / "masks").glob(f"{stem}.*")), masks)
    for name in ("classes.txt", "classes.yaml"):
        if (flat / name).is_file():
            shutil.copy(flat / name, root)
    return root


@pytest.mark.parametrize("layout", ["mmseg", "split-folders"])
def test_per_split_layouts_keep_their_own_train_and_val(tmp_path, layout):
    flat = tmp_path / "flat"
    write_dataset(flat, palette_png)
    root = per_split_layout(flat, tmp_path / layout, layout)
    decoded: dict = {}
    summary = check_dataset(root, SIZE, 0.1, 0.2, 0, decoded)
    assert (summary.train, summary.val, summary.test) == (4, 1, 1)
    assert decoded["trainval"].n_train == 4 and decoded["trainval"].names[4] == "im4"
    assert decoded["test"].names == ["im5"] and decoded["test"].lut is not None


def test_a_folder_without_test_split_tests_on_val_and_says_so(tmp_path):
    write_dataset(tmp_path, palette_png)
    (tmp_path / "splits" / "test.txt").unlink()
    decoded: dict = {}
    summary = check_dataset(tmp_path, SIZE, 0.1, 0.2, 0, decoded)
    assert decoded["test"].names == ["im4"] and summary.test_source == "val"
    assert "no test split (the final test reads val)" in summary.plan_lines(SIZE)[0]


def test_segcore_train_on_a_folder_of_three_classes_logs_mean_and_per_class_iou(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, palette_png, n=8, ignore_band=True)
    (data / "classes.txt").write_text("background\npet\ntoy\n")
    out = tmp_path / "run"
    proc = run_cli("-m", "segcore.train", "--data_dir", str(data), "--output_dir", str(out), "--encoder",
                   TINY["encoder"], "--encoder_weights", "none", "--image_size", str(SIZE), "--epochs", "1",
                   "--batch_size", "2", "--accelerator", "cpu", "--devices", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "classes (3, share of the training pixels): background" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("val", "test"):
        values = metrics[stage]
        assert {f"{stage}/iou", f"{stage}/acc", f"{stage}/iou/background", f"{stage}/iou/pet",
                f"{stage}/iou/toy"} <= set(values)
        per_class = [values[f"{stage}/iou/{c}"] for c in ("background", "pet", "toy")]
        # the mean IoU is the mean of the classes scored (NaN: absent from truth and prediction, left out)
        assert values[f"{stage}/iou"] == pytest.approx(np.nanmean(per_class), abs=1e-6)
    from segcore.model import SegmentationModule

    module = SegmentationModule.from_checkpoint(metrics["best_checkpoint"])  # the classes came with it
    assert module.class_names == ["background", "pet", "toy"] and module.multiclass
    import torch

    assert module(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)).shape == (1, 3, SIZE, SIZE)


def test_a_binary_0_255_folder_trains_as_two_classes_with_one_logit(tmp_path):
    from segcore.train import run

    data = tmp_path / "data"
    write_dataset(data, binary_0_255, n=8)
    metrics = run(config_for(data), tmp_path / "run", progress=False)
    assert "val/iou/foreground" not in metrics["val"] and "val/pet_fraction" in metrics["val"]
    from segcore.model import SegmentationModule

    module = SegmentationModule.from_checkpoint(metrics["best_checkpoint"])
    assert module.class_names == ["background", "foreground"] and not module.multiclass


def test_pets_trimap_trains_as_three_classes_with_border_class(pets_root):
    cfg = TrainConfig(**{**TINY, "data_dir": str(pets_root), "border": "class"})
    assert cfg.class_names == ["background", "pet", "border"]
    _, _, masks = batches_of(cfg)
    assert set(np.unique(masks)) == {0, 1, 2}  # trimap 2 background -> 0, 1 pet -> 1, 3 border -> 2
    from segcore.model import SegmentationModule

    module = SegmentationModule(cfg)
    assert module.multiclass and module.net.segmentation_head[0].out_channels == 3


def test_classes_key_is_checked_against_the_data(tmp_path, pets_root):
    with pytest.raises(UserError, match="key 'classes': Oxford-IIIT Pet"):
        batches_of(TrainConfig(**{**TINY, "data_dir": str(pets_root), "classes": ["a", "b", "c"]}))
    write_dataset(tmp_path, palette_png)
    (tmp_path / "classes.txt").write_text("background\npet\ntoy\n")
    with pytest.raises(UserError, match=r"key 'classes': \['a', 'b', 'c'\] differ"):
        batches_of(config_for(tmp_path, classes=["a", "b", "c"]))
    with pytest.raises(UserError, match="name\\(s\\) given twice: a"):
        TrainConfig.from_dict({"classes": ["a", "a"]})


def test_predict_writes_class_indices_as_palette_pngs_in_the_classes_colours(tmp_path):
    """segcore.predict with a model of three classes: the mask is the argmax as a 'P' PNG (index, not colour) at the
    image's own size, its palette the classes' colours; the overlay tints each class."""
    import torch

    from segcore.model import SegmentationModule
    from segcore.palette import class_colours
    from segcore.predict import predict_paths

    torch.manual_seed(0)
    module = SegmentationModule(config_for(tmp_path, classes=["background", "pet", "toy"])).eval()
    image = tmp_path / "in.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    written, skipped = predict_paths(module, [image], tmp_path / "out", progress=False)
    assert not skipped and [p.name for p in written] == ["in_mask.png", "in_overlay.png"]
    with Image.open(written[0]) as mask:
        assert mask.mode == "P" and mask.size == (50, 40)
        assert mask.getpalette()[:9] == [v for c in class_colours(3) for v in c]
        values = set(np.unique(np.asarray(mask)).tolist())
    with torch.inference_mode():  # the argmax of the probabilities resized to the image: the same classes appear
        x = torch.from_numpy(np.array(Image.open(image).resize((SIZE, SIZE), Image.BILINEAR))).permute(2, 0, 1)[None]
        expected = set(torch.unique(module(x).argmax(1)).tolist())
    assert values <= {0, 1, 2} and values & expected


def test_the_generated_folder_stand_in_has_three_classes_and_is_deterministic(tmp_path):
    from segcore.synthetic import main as synthetic_main
    from segcore.synthetic_folder import generate_folder

    assert synthetic_main([str(tmp_path / "a"), "--layout", "folder", "--num", "6", "--min-size", "48",
                           "--max-size", "80"]) == 0
    generate_folder(tmp_path / "b", num=6, min_size=48, max_size=80)
    a, b = tmp_path / "a", tmp_path / "b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "classes.txt").read_text().split() == ["background", "pet", "toy"]
    for mask in (a / "masks").iterdir():
        with Image.open(mask) as img:
            assert img.mode == "P" and set(np.unique(np.asarray(img)).tolist()) == {0, 1, 2, IGNORE}
    with pytest.raises(UserError, match="not an empty folder"):
        generate_folder(a, num=6)


def test_a_folder_decoded_before_is_checked_from_its_cache(tmp_path, monkeypatch):
    """The values each mask held travel with the decoded cache: a second check reads no mask, and still finds the
    same classes (and would find the same problems)."""
    import segcore.data.generic as generic

    write_dataset(tmp_path, palette_png, ignore_band=True)
    first: dict = {}
    summary = check_dataset(tmp_path, SIZE, 0.1, 0.2, 0, first)
    calls = []
    monkeypatch.setattr(generic, "read_mask", lambda *a: calls.append(a) or pytest.fail("a mask read again"))
    again: dict = {}
    assert check_dataset(tmp_path, SIZE, 0.1, 0.2, 0, again).classes == summary.classes and not calls
    assert isinstance(again["trainval"].images, np.memmap)  # mapped from the cache, not decoded into memory
    assert np.array_equal(again["trainval"].labels, first["trainval"].labels)


def test_the_node_cache_path_gives_the_batches_of_the_object_store_path(tmp_path, monkeypatch):
    """Issue #35, data larger than the object store: with a budget too small for the decoded data, trials load it
    on their node (memory-mapped from its cache) instead of receiving it; the batches are the same."""
    import torch

    from segtune.assets import BUDGET_ENV, build_assets, choose_data_path

    write_dataset(tmp_path, palette_png, n=8, ignore_band=True)
    cfg = config_for(tmp_path, batch_size=1)
    paths = {}
    for budget in ("1000", "0.001"):  # MB: the object store, then the node cache
        monkeypatch.setenv(BUDGET_ENV, budget)
        assets, _, _, classes = build_assets([cfg])
        line = choose_data_path(assets)
        paths[budget] = (assets, line)
    (store, store_line), (node, node_line) = paths["1000"], paths["0.001"]
    assert store_line.startswith("data path: object store") and not store.node_cache
    assert node_line.startswith("data path: node cache") and f"{BUDGET_ENV}=0.001" in node_line
    assert node.decoded == {} and node.recipe.data_dir == str(tmp_path)
    import pickle

    assert len(pickle.dumps(node)) < 2000 < len(pickle.dumps(store))  # nothing of the data travels
    trial_cfg = cfg.replace(classes=classes)
    batches = {}
    for name, assets in (("store", store), ("node", node)):
        datamodule = PetsDataModule(trial_cfg, decoded=assets.data_for(trial_cfg))
        datamodule.setup("fit")
        torch.manual_seed(0)
        batches[name] = [b for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()) for b in loader]
    assert len(batches["store"]) == len(batches["node"]) > 2
    for a, b in zip(batches["store"], batches["node"], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
