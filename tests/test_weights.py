"""Pretrained weights from a local state-dict file, and the offline behaviour of the hub path."""
from __future__ import annotations

import pytest
import torch

from segcore.errors import UserError
from segcore.weights import create_model, hub_reachable, is_cached


def test_encoder_weights_from_state_dict_file(tmp_path):
    source = create_model("fpn", "resnet18", "none")
    path = tmp_path / "enc.pth"
    torch.save(source.encoder.state_dict(), path)
    model = create_model("unet", "resnet18", str(path))  # another arch: only the encoder is loaded
    for (name, a), b in zip(source.encoder.state_dict().items(), model.encoder.state_dict().values()):
        assert torch.equal(a, b), name


def test_encoder_weights_file_with_prefixed_keys_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = create_model("fpn", "resnet18", "none")
    path = tmp_path / "enc.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in source.encoder.state_dict().items()}, str(path))
    model = create_model("fpn", "resnet18", str(path))
    assert torch.equal(model.encoder.conv1.weight, source.encoder.conv1.weight)


def test_mismatched_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(create_model("fpn", "resnet18", "none").encoder.state_dict(), path)
    with pytest.raises(UserError, match="does not match encoder"):
        create_model("fpn", "resnet34", str(path))


def test_offline_hub_is_reported_without_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # empty: even a developer's cache is out of play
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub_reachable()  # offline mode: no probe is even attempted
    assert not is_cached("resnet18", "imagenet")
    with pytest.raises(UserError, match="cannot be reached"):
        create_model("fpn", "resnet18", "imagenet")
