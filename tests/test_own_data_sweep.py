"""A sweep on a folder of one's own with three classes (issue #35), through the real CLI on the session's shared
Ray: the generated stand-in (``--synthetic --synthetic-layout folder``), its mean IoU as ``val/iou``, each class's
IoU and the pixel accuracy read back from trials.csv, TensorBoard's event files, test_metrics.json and the report.
Its data budget is forced below the decoded data's size: trials and the final test load the data on their node,
memory-mapped from its cache (segtune.assets' node-cache path; the Pets sweeps take the object store path)."""
from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, SMALL_ENCODER, run_cli
from segtune.assets import BUDGET_ENV

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_own_data_sweep")]
CLASSES = ("background", "pet", "toy")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_ray):
    root = tmp_path_factory.mktemp("own")
    flags = ["tune_main.py", "--synthetic", "--synthetic-layout", "folder", "--synthetic-images", "20",
             "--data-dir", str(root / "data"), "--space", "own_data", "--set", f"encoder={SMALL_ENCODER}",
             "--set", "arch=unet", "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2",
             "--storage-path", str(root / "results"), "--name", "own", "--seed", "0"]
    with shared_ray.joined() as join:
        proc = run_cli(*flags, *join.flags, env={**join.env, BUDGET_ENV: "0.05"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "results" / "own", proc


def test_the_plan_names_the_layout_the_classes_and_the_encoding(sweep):
    _, proc = sweep
    out = proc.stdout
    assert "images + masks layout at 64px: train 12, val 4, test 4 (splits/*.txt)" in out
    assert "classes (3, share of the training pixels): background " in out and ", toy " in out
    assert "masks: palette masks, 255 = ignore" in out
    assert "data path: node cache (0.25 MB decoded, more than 0.05 MB: " + f"{BUDGET_ENV}=0.05)" in out


def test_trials_csv_and_tensorboard_hold_each_class_iou(sweep):
    experiment, _ = sweep
    with open(experiment / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        per_class = [float(row[f"val/iou/{c}"]) for c in CLASSES if row[f"val/iou/{c}"] != ""]
        assert 0 <= float(row["val/acc"]) <= 1 and per_class
        # val/iou is the mean of the classes scored, at the trial's best epoch
        assert float(row["best_val/iou"]) == pytest.approx(sum(per_class) / len(per_class), abs=1e-5)
    events = EventAccumulator(str(experiment / rows[0]["name"]), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/iou", "val/acc", *(f"val/iou/{c}" for c in CLASSES)} <= tags
    assert [e.step for e in events.Scalars("val/iou/toy")] == [1, 2]
    # HParams compares trials by each class's IoU too
    from test_sweep import hparams_data

    root = EventAccumulator(str(experiment))
    root.Reload()
    metrics = [m.name.tag for m in hparams_data(root, "_hparams_/experiment").experiment.metric_infos]
    assert metrics[-4:] == ["val/acc", *(f"val/iou/{c}" for c in CLASSES)]


def test_the_final_test_and_the_report_give_each_class(sweep):
    experiment, proc = sweep
    test = json.loads((experiment / "test_metrics.json").read_text())
    assert set(test["per_class_iou"]) == set(CLASSES) and 0 <= test["test/acc"] <= 1
    scored = [v for v in test["per_class_iou"].values() if v is not None]
    assert test["test/iou"] == pytest.approx(sum(scored) / len(scored), abs=1e-5)
    assert "mean IoU" in proc.stdout and "IoU by class: background" in proc.stdout
    report = (experiment / "report.md").read_text()
    assert "## IoU by class" in report and "| toy |" in report
    assert "each class in its colour (the legend under the picture)" in report
    best = json.loads((experiment / "summary.json").read_text())["best_config"]
    assert best["classes"] == list(CLASSES)  # best_config.yaml reproduces on the same folder
    assert (REPO / "search_spaces" / "own_data.yaml").is_file()


def test_best_config_reproduces_on_the_same_folder(sweep):
    """best_config.yaml names the folder and its classes: segcore-train takes it as it is (its data check agrees)."""
    from segcore.config import TrainConfig
    from segcore.data.datamodule import PetsDataModule
    from segcore.data.dataset import classes_for

    cfg = TrainConfig.from_file(sweep[0] / "best_config.yaml")
    summary = PetsDataModule(cfg).check()
    assert classes_for(cfg.classes, summary, cfg.data_dir) == list(CLASSES) == cfg.class_names


@pytest.mark.parametrize("layout, encode, classes", [
    ("images-masks", "index_png", ["class_0", "class_1", "class_2"]),
    ("mmseg", "rgb_png", ["bg", "red", "green"]),
    ("split-folders", "binary_0_255", ["background", "foreground"]),
], ids=["index-png", "mmseg-rgb-classes-yaml", "split-folders-0-255"])
def test_each_layout_and_encoding_sweeps_and_reports_its_classes(tmp_path, shared_ray, layout, encode, classes):
    """Beside the stand-in's palette masks with an ignore band (above): index PNGs named by their values, MMSeg's
    folders with RGB masks and classes.yaml, per-split folders with 0/255 masks (binary: val/iou is the
    foreground's, no per-class columns). One trial of one epoch each, read back from every output."""
    import test_generic_data as masks_of
    import test_own_data

    flat = tmp_path / "flat"
    encoder = getattr(masks_of, encode, None) or getattr(test_own_data, encode)
    masks_of.write_dataset(flat, encoder, n=6, ignore_band=encode == "index_png")
    if encode == "rgb_png":
        (flat / "classes.yaml").write_text("bg: [0, 0, 0]\nred: [200, 30, 30]\ngreen: [30, 200, 30]\n")
    data = flat if layout == "images-masks" else test_own_data.per_split_layout(flat, tmp_path / layout, layout)
    flags = ["tune_main.py", "--data-dir", str(data), "--space", "own_data", "--set", f"encoder={SMALL_ENCODER}",
             "--set", "arch=unet", "--set", "image_size=32", "--set", "batch_size=2", "--num-samples", "1",
             "--max-epochs", "1", "--grace-period", "1", "--storage-path", str(tmp_path / "results"), "--name", "s"]
    with shared_ray.joined() as join:
        proc = run_cli(*flags, *join.flags, env=join.env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = tmp_path / "results" / "s"
    kind = {"images-masks": "images + masks", "mmseg": "mmseg", "split-folders": "split folders"}[layout]
    assert f"{kind} layout at 32px: train 4, val 1, test 1" in proc.stdout
    test = json.loads((experiment / "test_metrics.json").read_text())
    with open(experiment / "trials.csv") as f:
        row = next(csv.DictReader(f))
    events = EventAccumulator(str(experiment / row["name"]), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert 0 <= test["test/iou"] <= 1 and "val/iou" in tags
    if len(classes) == 2:
        assert "masks: binary 0/255 (255 = foreground" in proc.stdout
        assert "per_class_iou" not in test and "val/acc" not in row and "val/iou/foreground" not in tags
        return
    assert list(test["per_class_iou"]) == classes
    assert {f"val/iou/{c}" for c in classes} | {"val/acc"} <= set(row) & tags
