"""The on-device data path (segcore.data.device_batches): the same batches as the host loader, chosen and announced
clearly.

No GPU here: the path runs on the CPU ("cpu" as its device), which is the code a GPU trial runs with another device.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader

from segcore.build import describe_device, make_trainer
from segcore.data import PetsDataModule, collate
from segcore.data.device_batches import DeviceBatches, choose
from segcore.errors import UserError
from segcore.model import SegmentationModule


def batches_of(iterable, epochs: int) -> list[dict[str, torch.Tensor]]:
    return [batch for _ in range(epochs) for batch in iterable]


@pytest.mark.parametrize("split, shuffle, drop_last", [("train", True, True), ("train", True, False),
                                                        ("val", False, False)])
def test_device_batches_are_the_loaders_batches_and_leave_the_generator_where_the_loader_does(
        tiny_config, split, shuffle, drop_last):
    cfg = dataclasses.replace(tiny_config, batch_size=3)
    datamodule = PetsDataModule(cfg)
    datamodule.setup("fit")
    dataset = datamodule.train_set if split == "train" else datamodule.val_set
    assert dataset.augment == (split == "train")

    torch.manual_seed(7)
    loader = batches_of(DataLoader(dataset, batch_size=3, shuffle=shuffle, drop_last=drop_last,
                                   collate_fn=collate), epochs=3)
    after_loader = torch.get_rng_state()
    torch.manual_seed(7)
    device = batches_of(DeviceBatches(dataset, torch.device("cpu"), 3, shuffle, drop_last), epochs=3)

    assert torch.equal(torch.get_rng_state(), after_loader)
    assert len(device) == len(loader) > 0
    for ours, theirs in zip(device, loader):
        assert ours["image"].dtype == theirs["image"].dtype == torch.uint8
        assert torch.equal(ours["image"], theirs["image"])
        assert torch.equal(ours["mask"], theirs["mask"])
    if split == "train":  # the flips and the order really are random: epochs differ
        assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(device[:2], device[len(device) // 3:]))


def test_device_batches_of_a_folder_of_three_classes_are_the_loaders(tiny_config, tmp_path):
    """A folder of one's own: its class table (255 kept as ignore) applied on the device path as on the loader's."""
    from test_generic_data import palette_png, write_dataset

    write_dataset(tmp_path, palette_png, n=6, ignore_band=True)
    (tmp_path / "classes.txt").write_text("background\npet\ntoy\n")
    cfg = dataclasses.replace(tiny_config, data_dir=str(tmp_path), image_size=32, batch_size=2,
                              classes=["background", "pet", "toy"])
    datamodule = PetsDataModule(cfg)
    datamodule.setup("fit")
    torch.manual_seed(3)
    loader = batches_of(DataLoader(datamodule.train_set, batch_size=2, shuffle=True, collate_fn=collate), 2)
    torch.manual_seed(3)
    device = batches_of(DeviceBatches(datamodule.train_set, torch.device("cpu"), 2, True, False), 2)
    assert len(device) == len(loader) == 4
    for ours, theirs in zip(device, loader):
        assert torch.equal(ours["image"], theirs["image"]) and torch.equal(ours["mask"], theirs["mask"])
    assert set(torch.cat([b["mask"] for b in device]).unique().tolist()) == {0, 1, 2, 255}


def fit_metrics(cfg, tmp_path) -> tuple[dict[str, float], object]:
    trainer = make_trainer(cfg, tmp_path, logger=False, checkpoint=False, enable_progress_bar=False,
                           enable_model_summary=False)
    datamodule = PetsDataModule(cfg)
    torch.manual_seed(0)
    trainer.fit(SegmentationModule(cfg), datamodule=datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, trainer.train_dataloader


def test_a_training_on_the_device_path_is_the_training_on_the_loader_path(tiny_config, tmp_path):
    # U-Net: no dropout. On the CPU dropout draws from the same generator as the flips, and the loader draws each
    # batch's flips between two steps where the device path draws an epoch's at its start (on a GPU dropout uses
    # the GPU's generator); with a network that draws nothing the two trainings must be the same.
    cfg = dataclasses.replace(tiny_config, arch="unet", epochs=2)
    on_loader, loader = fit_metrics(dataclasses.replace(cfg, data_path="loader"), tmp_path / "loader")
    on_device, batches = fit_metrics(dataclasses.replace(cfg, data_path="device"), tmp_path / "device")
    assert isinstance(loader, DataLoader) and isinstance(batches, DeviceBatches)
    assert on_device.keys() == on_loader.keys() and "val/iou" in on_device
    for key, value in on_loader.items():
        assert on_device[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_the_choice_of_path_says_why(tiny_config):
    datamodule = PetsDataModule(dataclasses.replace(tiny_config, data_path="auto"))
    datamodule.setup("fit")
    on_device, why = datamodule.data_path(torch.device("cpu"))
    assert not on_device and why.startswith("host loader (CPU")
    assert choose("loader", 10, torch.device("cpu")) == (False, "host loader (data_path=loader)")
    assert choose("device", 3 * 2**20, torch.device("cpu"))[1] == "held on cpu (3 MB; data_path=device)"
    assert choose("auto", 10, torch.device("cpu"), world_size=2)[1].startswith("host loader (DDP")
    with pytest.raises(UserError, match="key 'data_path': 'device' holds the whole split in one process"):
        choose("device", 10, torch.device("cpu"), world_size=2)
    line = describe_device(tiny_config, why)
    assert line.endswith(f"; data: {why}") and "channels_last=False" in line  # CPU: NCHW by default


def test_channels_last_and_mixed_precision_are_the_gpu_defaults(tiny_config, monkeypatch):
    from segcore import build, device

    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: True)
    cfg = dataclasses.replace(tiny_config, accelerator="auto", channels_last=None)
    assert device.channels_last_of(cfg) is True
    assert build.resolve_precision("auto", gpu=True, bf16=True) == "bf16-mixed"
    assert device.channels_last_of(dataclasses.replace(cfg, channels_last=False)) is False
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    assert device.channels_last_of(cfg) is False
