"""The sweep end to end through the real CLI (local Ray on 127.0.0.1) on a generated dataset."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli
from segcore.metrics_names import SWEEP_METRIC

pytestmark = pytest.mark.slow

NUM_SAMPLES = 6
MAX_EPOCHS = 3


def sweep_flags(data_dir: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["tune_main.py", "--synthetic", "--data-dir", str(data_dir), "--space", "smoke",
            "--set", "image_size=64", "--set", "encoder=resnet18", "--num-samples", str(NUM_SAMPLES),
            "--max-epochs", str(MAX_EPOCHS), "--grace-period", "1", "--reduction-factor", "2",
            "--storage-path", str(storage), "--name", name, "--seed", "0", *extra]


def read_trials(experiment: Path) -> list[dict]:
    with open(experiment / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli(*sweep_flags(root / "data", root / "results", "e2e"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "results" / "e2e", proc


def test_sweep_trials_csv_has_one_row_per_sample_and_early_stops(sweep):
    experiment, _ = sweep
    rows = read_trials(experiment)
    assert len(rows) == NUM_SAMPLES
    statuses = [r["status"] for r in rows]
    assert "stopped early" in statuses and "completed" in statuses, statuses
    for row in rows:
        epochs = int(row["epochs"])
        assert (row["status"] == "completed") == (epochs == MAX_EPOCHS)
        assert 0.0 <= float(row[f"best_{SWEEP_METRIC}"]) <= 1.0
        assert row["hostname"] and row["node_ip"] == "127.0.0.1"
        assert row["param.lr"] and row["param.freeze"] in ("none", "head", "decoder")


def test_sweep_prints_summary(sweep):
    experiment, proc = sweep
    out = proc.stdout
    assert f"Best {SWEEP_METRIC}:" in out and "stopped early" in out
    assert f"tensorboard --logdir {experiment}" in out
    summary = json.loads((experiment / "summary.json").read_text())
    best = max(float(r[f"best_{SWEEP_METRIC}"]) for r in read_trials(experiment))
    assert summary["best_value"] == pytest.approx(best, abs=1e-5)
    assert Path(summary["best_checkpoint"]).is_file()


def test_optuna_study_records_pruned_and_complete_trials(sweep):
    experiment, _ = sweep
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len(study.trials) == NUM_SAMPLES
    rows = read_trials(experiment)
    states = sorted(t.state.name for t in study.trials)
    expected = sorted("PRUNED" if r["status"] == "stopped early" else "COMPLETE" for r in rows)
    assert states == expected
    for trial in study.trials:
        # every epoch's val/iou is an intermediate value, one per epoch run
        assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1))
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert len(trial.intermediate_values) < MAX_EPOCHS
        else:
            assert len(trial.intermediate_values) == MAX_EPOCHS
            assert trial.value == pytest.approx(trial.intermediate_values[MAX_EPOCHS])
    assert study.best_value == pytest.approx(max(t.value for t in study.trials
                                                 if t.state == optuna.trial.TrialState.COMPLETE))


def test_tensorboard_holds_hparams_and_val_iou_for_every_trial(sweep):
    experiment, _ = sweep
    trial_dirs = sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trial_"))
    assert len(trial_dirs) == NUM_SAMPLES
    for trial_dir in trial_dirs:
        acc = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        epochs = int(json.loads((trial_dir / "result.json").read_text().splitlines()[-1])["training_iteration"])
        for tag in (f"ray/tune/{SWEEP_METRIC}", "ray/tune/train/loss", "ray/tune/lr"):
            assert tag in scalars, (trial_dir.name, scalars)
        assert len(acc.Scalars(f"ray/tune/{SWEEP_METRIC}")) == epochs
        hparams = acc.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in hparams, trial_dir.name
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        assert "lr" in start.session_start_info.hparams
        experiment_info = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
        assert f"ray/tune/{SWEEP_METRIC}" in [m.name.tag for m in experiment_info.metric_infos]


def test_best_config_trains_with_segcore_train(sweep, tmp_path):
    experiment, _ = sweep
    best = yaml.safe_load((experiment / "best_config.yaml").read_text())
    assert best["epochs"] == MAX_EPOCHS and best["image_size"] == 64
    proc = run_cli("-m", "segcore.train", "--config", str(experiment / "best_config.yaml"), "--epochs", "1",
                   "--output_dir", str(tmp_path / "repro"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "repro" / "metrics.json").is_file()


def test_dry_run_starts_nothing(tmp_path, pets_root):
    proc = run_cli("tune_main.py", "--dry-run", "--data-dir", str(pets_root), "--space", "smoke",
                   "--storage-path", str(tmp_path / "results"), "--name", "dry")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: nothing started" in proc.stdout and "space smoke" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_list_spaces_names_each_space_with_its_description():
    proc = run_cli("tune_main.py", "--list-spaces")
    assert proc.returncode == 0
    lines = dict(line.split(None, 1) for line in proc.stdout.strip().splitlines())
    assert {"default", "smoke"} <= set(lines)
    assert "original example" in lines["default"] and "CPU" in lines["smoke"]


def test_existing_experiment_is_not_overwritten_without_resume(sweep):
    experiment, _ = sweep
    before = (experiment / "trials.csv").read_bytes()
    proc = run_cli(*sweep_flags(experiment.parent.parent / "data", experiment.parent, "e2e"))
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    assert (experiment / "trials.csv").read_bytes() == before
