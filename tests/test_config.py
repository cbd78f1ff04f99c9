"""Tests for segcore.config: defaults, validation (every problem in one UserError), coercion and config files."""
from __future__ import annotations

import json

import pytest
import yaml

from segcore.config import LOSSES, OPTIMIZERS, SCHEDULERS, TrainConfig, architectures
from segcore.errors import UserError

# fast to build and valid: validation only, nothing is trained here
VALID = dict(arch="unet", encoder="resnet18", encoder_weights="none")


def user_error(values) -> UserError:
    with pytest.raises(UserError) as info:
        TrainConfig.from_dict(values)
    return info.value


# ----- defaults -------------------------------------------------------------------------------------------
def test_defaults_match_the_original_example():
    cfg = TrainConfig()
    assert cfg.arch == "fpn"
    assert cfg.encoder == "resnet34"
    assert cfg.encoder_weights == "imagenet"
    assert cfg.lr == 1e-4
    assert cfg.weight_decay == 1e-4
    assert cfg.batch_size == 32
    assert cfg.image_size == 256
    assert cfg.optimizer == "adam"
    assert cfg.scheduler == "cosine"
    assert cfg.loss == "dice"
    assert (cfg.freeze_encoder, cfg.freeze_decoder, cfg.freeze_head) == (False, False, False)
    assert cfg.frozen_parts == []
    assert cfg.seed == 42
    assert cfg.val_fraction == 0.1


def test_defaults_are_valid():
    cfg = TrainConfig()
    assert cfg.problems() == []
    assert TrainConfig.from_dict({}) == cfg


# ----- unknown keys and invalid values ----------------------------------------------------------------------
def test_unknown_key_is_named_and_valid_keys_listed():
    err = user_error({**VALID, "learning_rate": 0.1})
    msg = str(err)
    assert "learning_rate" in msg
    assert "valid keys" in msg
    for key in ("lr", "batch_size", "freeze_encoder", "encoder_weights"):
        assert key in msg


@pytest.mark.parametrize("lr", [-1e-3, 0.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_lr_is_rejected(lr):
    err = user_error({**VALID, "lr": lr})
    assert "'lr'" in str(err)
    assert len(err.problems) == 1


@pytest.mark.parametrize(
    "key, bad, valid_examples",
    [
        ("arch", "segnet", ["unet", "fpn"]),
        ("encoder", "resnet9000", ["resnet18", "resnet34"]),
        ("optimizer", "lbfgs", ["adam", "sgd"]),
        ("scheduler", "warmup", ["cosine", "plateau"]),
        ("loss", "lovasz", ["dice", "focal"]),
    ],
)
def test_unknown_choice_names_key_and_lists_valid_choices(key, bad, valid_examples):
    err = user_error({**VALID, key: bad})
    msg = str(err)
    assert f"'{key}'" in msg
    assert bad in msg
    for name in valid_examples:
        assert name in msg
    assert len(err.problems) == 1


def test_choice_lists_are_the_advertised_ones():
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "adagrad", "rmsprop"}
    assert set(SCHEDULERS) == {"none", "step", "exponential", "cosine", "onecycle", "cyclic", "plateau"}
    assert set(LOSSES) == {"bce", "dice", "focal", "jaccard", "dice+bce"}
    assert {"unet", "fpn", "linknet", "deeplabv3plus", "pan", "manet"} <= set(architectures())


def test_freezing_all_three_parts_is_rejected():
    err = user_error({**VALID, "freeze_encoder": True, "freeze_decoder": True, "freeze_head": True})
    msg = str(err)
    assert "freeze_encoder" in msg and "freeze_decoder" in msg and "freeze_head" in msg


@pytest.mark.parametrize("frozen", [("encoder",), ("decoder",), ("head",), ("encoder", "decoder"),
                                    ("decoder", "head")])
def test_freezing_fewer_than_three_parts_is_accepted(frozen):
    cfg = TrainConfig.from_dict({**VALID, **{f"freeze_{p}": True for p in frozen}})
    assert cfg.frozen_parts == list(frozen)


def test_several_problems_are_all_reported_in_one_error():
    err = user_error({**VALID, "lr": -1, "optimizer": "lbfgs", "loss": "lovasz", "batch_size": 0,
                      "image_size": 100, "val_fraction": 1.5})
    msg = str(err)
    assert len(err.problems) == 6
    for key in ("'lr'", "'optimizer'", "'loss'", "'batch_size'", "'image_size'", "'val_fraction'"):
        assert key in msg


def test_unknown_keys_and_bad_values_are_reported_together():
    err = user_error({**VALID, "bogus": 1, "batch_size": 3.5, "lr": -1, "optimizer": "lbfgs"})
    msg = str(err)
    for key in ("'bogus'", "'batch_size'", "'lr'", "'optimizer'"):
        assert key in msg
    assert len(err.problems) == 4


def test_wrong_types_are_reported_together():
    err = user_error({**VALID, "batch_size": 3.5, "lr": "fast", "freeze_encoder": "maybe"})
    assert len(err.problems) == 3
    msg = str(err)
    for key in ("batch_size", "lr", "freeze_encoder"):
        assert f"'{key}'" in msg


# ----- type coercion --------------------------------------------------------------------------------------
def test_numeric_string_is_coerced_to_float():
    cfg = TrainConfig.from_dict({**VALID, "lr": "1e-3", "weight_decay": "0"})
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 0.0 and isinstance(cfg.weight_decay, float)


@pytest.mark.parametrize("text, expected", [("true", True), ("True", True), ("yes", True), ("1", True),
                                            ("false", False), ("no", False), ("0", False)])
def test_boolean_strings_are_coerced(text, expected):
    cfg = TrainConfig.from_dict({**VALID, "freeze_encoder": text})
    assert cfg.freeze_encoder is expected


def test_int_field_accepts_integral_values_only():
    assert TrainConfig.from_dict({**VALID, "batch_size": "8"}).batch_size == 8
    assert TrainConfig.from_dict({**VALID, "batch_size": 8.0}).batch_size == 8
    err = user_error({**VALID, "batch_size": 3.5})
    assert "'batch_size'" in str(err) and "3.5" in str(err)
    err = user_error({**VALID, "epochs": True})
    assert "'epochs'" in str(err)


def test_int_for_float_field_becomes_float():
    cfg = TrainConfig.from_dict({**VALID, "lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


# ----- config files ---------------------------------------------------------------------------------------
def test_from_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("arch: unet\nencoder: resnet18\nencoder_weights: none\nlr: 1e-3\nbatch_size: 8\n"
                    "freeze_encoder: true\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.arch, cfg.encoder, cfg.encoder_weights) == ("unet", "resnet18", "none")
    assert cfg.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string: coerced
    assert cfg.batch_size == 8
    assert cfg.freeze_encoder is True
    assert cfg.optimizer == TrainConfig().optimizer  # unspecified keys keep their defaults


def test_from_json_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**VALID, "optimizer": "sgd", "momentum": 0.5, "scheduler": "step"}))
    cfg = TrainConfig.from_file(path)
    assert (cfg.optimizer, cfg.momentum, cfg.scheduler) == ("sgd", 0.5, "step")


def test_problems_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: -1\n")
    with pytest.raises(UserError, match="bad.yaml"):
        TrainConfig.from_file(path)


def test_missing_or_non_mapping_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        TrainConfig.from_file(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- lr\n- 1e-3\n")
    with pytest.raises(UserError, match="mapping"):
        TrainConfig.from_file(path)


def test_yaml_python_object_tag_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f'lr: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UserError) as info:
        TrainConfig.from_file(path)
    assert "evil.yaml" in str(info.value)
    assert not marker.exists()


def test_saved_config_round_trips(tmp_path):
    cfg = TrainConfig.from_dict({**VALID, "lr": 3e-4, "optimizer": "adamw", "scheduler": "onecycle",
                                 "freeze_decoder": True, "devices": "1", "data_dir": "1e-3", "border": "ignore"})
    path = tmp_path / "config.yaml"
    cfg.save(path)
    assert yaml.safe_load(path.read_text())["lr"] == 3e-4
    assert TrainConfig.from_file(path) == cfg


# ----- timm encoders --------------------------------------------------------------------------------------
def test_timm_universal_encoder_is_accepted():
    cfg = TrainConfig.from_dict({**VALID, "encoder": "tu-resnet18"})
    assert cfg.encoder == "tu-resnet18"


def test_unknown_timm_encoder_is_rejected():
    err = user_error({**VALID, "encoder": "tu-nonexistent_model"})
    msg = str(err)
    assert "'encoder'" in msg and "tu-nonexistent_model" in msg
    assert "tu-<timm model name>" in msg


# ----- combinations the config accepts but the model cannot run (segcore bugs, see reasons) ----------------
@pytest.mark.parametrize("image_size", [64, 96])
def test_pan_with_too_small_images_is_rejected_or_runs(image_size):
    import torch

    from segcore.model import SegmentationModule

    values = {**VALID, "arch": "pan", "image_size": image_size}
    try:
        cfg = TrainConfig.from_dict(values)
    except UserError as err:
        assert "image_size" in str(err)
        return
    module = SegmentationModule(cfg).eval()
    with torch.no_grad():
        out = module(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    assert out.shape == (1, 1, image_size, image_size)


@pytest.mark.parametrize("arch, encoder", [("dpt", "resnet18"), ("unet", "tu-vit_tiny_patch16_224")])
def test_arch_encoder_mismatch_is_a_user_error(arch, encoder):
    from segcore.model import SegmentationModule

    values = {**VALID, "arch": arch, "encoder": encoder, "image_size": 224}
    try:
        cfg = TrainConfig.from_dict(values)
    except UserError as err:
        assert "'encoder'" in str(err) or "'arch'" in str(err)
        return
    try:
        SegmentationModule(cfg)  # builds, or fails with a UserError the CLI can print
    except UserError:
        pass
