"""The original training CLI end to end: a 1-epoch run on a tiny generated set, outputs read back."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_ENCODER, run_cli
from segcore.metrics_names import LEARNING_RATE, SWEEP_METRIC, TRAIN_LOSS, stage_metric

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_train_cli")]


def tiny_flags(data_dir: Path, out: Path) -> list[str]:
    return ["-m", "segcore.train", "--data_dir", str(data_dir), "--output_dir", str(out), "--encoder", SMALL_ENCODER,
            "--encoder_weights", "none", "--image_size", "64", "--batch_size", "4", "--epochs", "1",
            "--num_workers", "0", "--accelerator", "cpu", "--lr", "3e-4", "--wd", "1e-5", "--freeze_head"]


def load_events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def cli_run(pets_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    proc = run_cli(*tiny_flags(pets_root, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_cli_writes_metrics_json(cli_run):
    out, proc = cli_run
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("val", "test"):
        for name in ("iou", "per_image_iou", "dice", "loss"):
            assert stage_metric(stage, name) in metrics[stage]
        assert 0.0 <= metrics[stage][stage_metric(stage, "iou")] <= 1.0
    assert Path(metrics["best_checkpoint"]).is_file()
    assert "test/iou" in proc.stdout


def test_cli_writes_resolved_config_with_flags_applied(cli_run):
    out, _ = cli_run
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["lr"] == 3e-4 and cfg["weight_decay"] == 1e-5 and cfg["freeze_head"] is True
    assert cfg["freeze_encoder"] is False and cfg["arch"] == "fpn"


def test_cli_event_files_hold_scalars_hparams_and_overlays(cli_run):
    out, _ = cli_run
    acc = load_events(out)
    tags = acc.Tags()
    for tag in (SWEEP_METRIC, stage_metric("val", "per_image_iou"), stage_metric("val", "dice"), TRAIN_LOSS,
                LEARNING_RATE):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert tags["images"] == ["val/predictions"]
    # the HParams dashboard's session entry, declaring val/iou as a metric and holding the config
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and "_hparams_/experiment" in plugin
    from tensorboard.plugins.hparams import plugin_data_pb2

    exp = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
    assert SWEEP_METRIC in [m.name.tag for m in exp.metric_infos]
    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(3e-4)
    assert start.hparams["encoder"].string_value == SMALL_ENCODER


def test_cli_config_file_with_flag_override(pets_root, tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"arch": "unet", "lr": 0.01, "loss": "dice+bce", "optimizer": "sgd"}))
    out = tmp_path / "run"
    flags = tiny_flags(pets_root, out) + ["--config", str(cfg_file)]
    flags[flags.index("--lr") + 1] = "2e-3"  # the flag wins over the file
    proc = run_cli(*flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["arch"], cfg["lr"], cfg["loss"], cfg["optimizer"]) == ("unet", 2e-3, "dice+bce", "sgd")


def test_cli_help_lists_original_flags():
    proc = run_cli("-m", "segcore.train", "--help")
    assert proc.returncode == 0
    for flag in ("--lr", "--batch_size", "--wd", "--freeze_encoder", "--freeze_head", "--freeze_decoder",
                 "--config", "--precision", "--devices"):
        assert flag in proc.stdout


def test_offline_imagenet_weights_fail_with_advice(pets_root, tmp_path):
    flags = tiny_flags(pets_root, tmp_path / "run")
    flags[flags.index("--encoder_weights") + 1] = "imagenet"
    flags[flags.index("--encoder") + 1] = "resnet18"  # an encoder whose weights segcore.weights can fetch
    proc = run_cli(*flags, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "encoder_weights 'imagenet'" in proc.stderr and "segcore.weights resnet18" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_offline_imagenet_weights_fail_within_seconds(monkeypatch, tmp_path):
    """The bound is on the weights step itself (SMP alone retries ~24 s offline), not on Python start-up."""
    from huggingface_hub import constants

    from segcore.errors import UserError
    from segcore.weights import create_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot be reached"):
        create_model("fpn", "resnet18", "imagenet")
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f}s: the weights check must not wait on network retries"


@pytest.mark.parametrize("asked, gpu, bf16, used", [
    ("auto", True, True, "bf16-mixed"),  # Ampere and newer: bf16, no loss scaling
    ("auto", True, False, "16-mixed"),  # older GPUs: fp16 with loss scaling
    ("auto", False, False, "32-true"),  # the CPU: full precision
    ("32-true", True, True, "32-true"),  # asked for explicitly: as asked
    ("bf16-mixed", False, False, "bf16-mixed"),
])
def test_auto_precision_is_mixed_on_gpus_and_full_on_the_cpu(asked, gpu, bf16, used):
    from segcore.build import resolve_precision

    assert resolve_precision(asked, gpu=gpu, bf16=bf16) == used


def test_device_line_shows_every_gpu_choice_and_this_machine_trains_in_full_precision(tiny_config):
    import torch

    from segcore.build import describe_device, make_trainer

    cfg = tiny_config.replace(precision="auto", accelerator="auto")
    line = describe_device(cfg)
    for part in ("precision=", "(asked: auto)", "channels_last=", "compile=", "pin_memory=", "non_blocking_copies="):
        assert part in line, line
    if not torch.cuda.is_available():
        assert line.startswith("device: CPU") and "precision=32-true" in line
        trainer = make_trainer(cfg, None, logger=False, checkpoint=False, enable_progress_bar=False)
        assert trainer.precision == "32-true"
