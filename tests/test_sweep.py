"""The sweep end to end through the real CLI (local Ray on 127.0.0.1) on a generated dataset."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import RAN_TO_END, REPO, SMALL_ENCODER, run_cli
from segcore.metrics_names import SWEEP_METRIC

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_sweep")]

NUM_SAMPLES = 6
MAX_EPOCHS = 3
KEEP_BEST = 2  # of 6 trials: the others' weights are deleted as they end


def sweep_flags(data_dir: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["tune_main.py", "--synthetic", "--data-dir", str(data_dir), "--space", "smoke",
            "--set", "image_size=64", "--set", f"encoder={SMALL_ENCODER}", "--num-samples", str(NUM_SAMPLES),
            "--max-epochs", str(MAX_EPOCHS), "--grace-period", "1", "--reduction-factor", "2",
            "--storage-path", str(storage), "--name", name, "--seed", "0", *extra]


def counted(rows: list[dict]) -> list[dict]:
    """The rows that may be the sweep's best: a finite value, neither diverged nor collapsed (segtune.results)."""
    from segtune.results import MEANINGLESS

    return [r for r in rows if r["status"] not in MEANINGLESS and r[f"best_{SWEEP_METRIC}"] != ""]


def load_study(experiment: Path) -> optuna.Study:
    """The sweep's study, read back from its journal file with Optuna's own classes (as optuna-dashboard reads it)."""
    from optuna.storages.journal import JournalFileBackend

    assert not (experiment / "optuna.db").exists()
    return optuna.load_study(study_name="e2e", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(experiment / "optuna.journal"))))


def read_trials(experiment: Path) -> list[dict]:
    with open(experiment / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_ray):
    """The module's one sweep, on the session's shared Ray (what it checks is not Ray's own start)."""
    root = tmp_path_factory.mktemp("sweep")
    with shared_ray.joined() as join:
        proc = run_cli(*sweep_flags(root / "data", root / "results", "e2e", "--max-concurrent", "2",
                                    "--keep-best", str(KEEP_BEST), *join.flags),
                       env=join.env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "results" / "e2e", proc


def test_sweep_trials_csv_has_one_row_per_sample_and_early_stops(sweep):
    experiment, _ = sweep
    rows = read_trials(experiment)
    assert len(rows) == NUM_SAMPLES
    statuses = [r["status"] for r in rows]
    assert "stopped early" in statuses and set(statuses) & set(RAN_TO_END), statuses
    for row in rows:
        epochs = int(row["epochs"])
        assert (row["status"] in RAN_TO_END) == (epochs == MAX_EPOCHS)
        assert 0.0 <= float(row[f"best_{SWEEP_METRIC}"]) <= 1.0
        assert row["hostname"] and row["node_ip"] == "127.0.0.1"
        assert row["param.lr"] and row["param.freeze"] in ("none", "head", "decoder")


def test_trials_reuse_worker_processes_instead_of_importing_torch_again(sweep):
    experiment, _ = sweep
    pids = {json.loads(line)["pid"] for folder in trial_folders(experiment)
            for line in (folder / "result.json").read_text().splitlines()}
    assert 1 <= len(pids) <= 2, pids  # 6 trials, 2 at a time (--max-concurrent 2): two worker processes serve all


def test_sweep_prints_summary(sweep):
    experiment, proc = sweep
    out = proc.stdout
    assert f"Best {SWEEP_METRIC}:" in out and "stopped early" in out
    assert f"tensorboard --logdir {experiment}" in out
    summary = json.loads((experiment / "summary.json").read_text())
    best = max(float(r[f"best_{SWEEP_METRIC}"]) for r in counted(read_trials(experiment)))
    assert summary["best_value"] == pytest.approx(best, abs=1e-5)
    assert Path(summary["best_checkpoint"]).is_file()


def test_only_the_best_trials_keep_their_best_weights_and_trials_csv_and_the_report_say_whose(sweep):
    """--keep-best 2: once the sweep has ended, the two best trials that count (segtune.results.MEANINGLESS) keep
    one checkpoint each, their best epoch's; every other trial none."""
    experiment, proc = sweep
    rows = read_trials(experiment)
    best = f"best_{SWEEP_METRIC}"
    ranked = sorted(counted(rows), key=lambda r: float(r[best]), reverse=True)
    # (two trials equally good at the boundary could keep either's weights: none here)
    assert len(ranked) <= KEEP_BEST or ranked[KEEP_BEST - 1][best] != ranked[KEEP_BEST][best], ranked
    top = {r["name"] for r in ranked[:KEEP_BEST]}
    for row in rows:
        files = sorted((experiment / row["name"]).glob("checkpoint_*/checkpoint.ckpt"))
        if row["name"] not in top:
            assert files == [] and row["weights"] == "", row
            continue
        assert len(files) == 1 and row["weights"] == str(files[0]), row
        reported = [json.loads(line) for line in (experiment / row["name"] / "result.json").read_text().splitlines()]
        [saved_with] = [r for r in reported if r.get("checkpoint_dir_name") == files[0].parent.name]
        assert saved_with[SWEEP_METRIC] == pytest.approx(float(row[best]), abs=1e-5)  # the trial's best epoch's
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["best_checkpoint"] == next(r["weights"] for r in ranked[:1])
    assert f"the best weights of the {KEEP_BEST} best trials" in proc.stdout  # the plan says so
    report = (experiment / "report.md").read_text()
    assert f"Weights kept on disk: {len(top)} trial(s) (`--keep-best {KEEP_BEST}`" in report
    kept_lines = [line for line in report.splitlines() if line.startswith("| ") and line.endswith("| kept |")]
    assert sorted(re.search(r"`(\S+)`", line).group(1) for line in kept_lines) == sorted(top)


def test_optuna_study_records_pruned_and_complete_trials(sweep):
    experiment, _ = sweep
    study = load_study(experiment)
    assert len(study.trials) == NUM_SAMPLES
    rows = read_trials(experiment)
    states = sorted(t.state.name for t in study.trials)
    expected = sorted({"stopped early": "PRUNED", "completed": "COMPLETE", "collapsed": "FAIL"}[r["status"]]
                      for r in rows)
    assert states == expected
    for trial in study.trials:
        # every epoch's val/iou is an intermediate value, one per epoch run
        assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1))
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert len(trial.intermediate_values) < MAX_EPOCHS
        else:  # ran to the end: its value is its last epoch's (none for a collapsed one: FAIL)
            assert len(trial.intermediate_values) == MAX_EPOCHS
            if trial.state == optuna.trial.TrialState.COMPLETE:
                assert trial.value == pytest.approx(trial.intermediate_values[MAX_EPOCHS])
    complete = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        assert study.best_value == pytest.approx(max(complete))
    # named as the sweep names them: its metric, and for each trial the Tune trial and the outcome in trials.csv
    assert study.metric_names == [SWEEP_METRIC]
    by_id = {r["trial_id"]: r["status"] for r in rows}
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(by_id)
    for trial in study.trials:
        assert trial.user_attrs["outcome"] == by_id[trial.user_attrs["ray_trial_id"]]


def test_one_number_names_each_trial_everywhere(sweep):
    """TensorBoard's run, trials.csv, report.md, the status line, the summary and Optuna name a trial alike: its
    Optuna number, as NNN-<arch>-<encoder>."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    experiment, proc = sweep
    rows = read_trials(experiment)
    study = load_study(experiment)
    by_number = {t.number: t for t in study.trials}
    assert sorted(int(r["trial"]) for r in rows) == sorted(by_number) == list(range(NUM_SAMPLES))
    encoder = SMALL_ENCODER
    for row in rows:
        number, name = int(row["trial"]), row["name"]
        assert name == f"{number:03d}-{row['param.arch']}-{encoder}" == Path(row["path"]).name
        attrs = by_number[number].user_attrs
        assert (attrs["run_name"], attrs["ray_trial_id"], attrs["outcome"]) == (name, row["trial_id"], row["status"])
        assert by_number[number].params["lr"] == pytest.approx(float(row["param.lr"]), rel=1e-5)
    # TensorBoard's runs are the trials' names (and the experiment's root, which holds the HParams configuration)
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(experiment))
    multiplexer.Reload()
    assert set(multiplexer.Runs()) - {"."} == {r["name"] for r in rows}
    report = (experiment / "report.md").read_text()
    assert sorted((int(n), run) for n, run, *_ in table(report, f"{SWEEP_METRIC} per epoch")) == \
        sorted((int(r["trial"]), r["name"]) for r in rows)
    summary = json.loads((experiment / "summary.json").read_text())
    best = max(counted(rows), key=lambda r: float(r[f"best_{SWEEP_METRIC}"]))
    assert summary["best_trial"] == best["name"]
    assert f"Trial {best['trial']}, `{best['name']}`" in report
    assert f"Best {SWEEP_METRIC}: {summary['best_value']:.4f} (trial {best['name']})" in proc.stdout
    status_lines = [line for line in proc.stdout.splitlines() if f"best {SWEEP_METRIC}" in line]
    assert status_lines and status_lines[-1].endswith(f"({best['name']})"), status_lines[-1:]


def hparams_data(acc: EventAccumulator, tag: str):
    from tensorboard.plugins.hparams import plugin_data_pb2

    return plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[tag])


def test_tensorboard_compares_trials_by_their_metrics_domains_and_outcomes(sweep):
    from tensorboard.plugins.hparams import api_pb2

    from segtune.board import BEST, EPOCHS, SCALARS

    experiment, _ = sweep
    rows = {r["name"]: r for r in read_trials(experiment)}
    trial_dirs = trial_folders(experiment)
    assert len(trial_dirs) == NUM_SAMPLES == len(rows)
    statuses = {"completed": api_pb2.STATUS_SUCCESS, "stopped early": api_pb2.STATUS_UNKNOWN,
                "collapsed": api_pb2.STATUS_FAILURE}
    for trial_dir in trial_dirs:
        row = rows[trial_dir.name]
        acc = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        # the names a Lightning user knows, one point per epoch run; none of Ray's bookkeeping
        assert scalars == {*SCALARS, BEST, EPOCHS, "train/loss_step"}, (trial_dir.name, scalars)
        epochs = int(row["epochs"])
        assert [e.step for e in acc.Scalars(SWEEP_METRIC)] == list(range(1, epochs + 1))
        # the training loss of every step, numbered on from epoch to epoch; the epoch's value is their mean
        steps = acc.Scalars("train/loss_step")
        per_epoch = len(steps) // epochs
        assert per_epoch >= 1 and [e.step for e in steps] == list(range(1, epochs * per_epoch + 1))
        first_epoch = sum(e.value for e in steps[:per_epoch]) / per_epoch
        assert acc.Scalars("train/loss")[0].value == pytest.approx(first_epoch, rel=1e-4)
        # what the trial learned: image | truth | prediction of the first validation images, at every epoch it ran
        assert acc.Tags()["images"] == ["val/predictions"]
        images = acc.Images("val/predictions")
        assert [i.step for i in images] == list(range(1, epochs + 1))
        from PIL import Image

        with Image.open(io.BytesIO(images[-1].encoded_image_string)) as grid:
            assert grid.format == "JPEG" and abs(grid.width / grid.height - 3 / 5) < 0.05  # 3 columns x 5 images
        assert acc.Scalars(BEST)[-1].value == pytest.approx(float(row[f"best_{SWEEP_METRIC}"]),
                                                                          abs=1e-5)
        # one session per trial: its values, its outcome as in trials.csv, how it ended
        start = hparams_data(acc, "_hparams_/session_start_info").session_start_info
        assert start.group_name == trial_dir.name  # the session is named as the run
        assert start.hparams["outcome"].string_value == row["status"]
        assert start.hparams["lr"].number_value == pytest.approx(float(row["param.lr"]), rel=1e-5)
        assert start.hparams["arch"].string_value == row["param.arch"]
        end = hparams_data(acc, "_hparams_/session_end_info").session_end_info
        assert end.status == statuses[row["status"]]
    # the experiment's configuration, at its root: every searched key with its domain, the metrics to compare
    root = EventAccumulator(str(experiment))
    root.Reload()
    config = hparams_data(root, "_hparams_/experiment").experiment
    infos = {h.name: h for h in config.hparam_infos}
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    searched = [k for k, v in space.items() if isinstance(v, dict) and k not in ("encoder", "image_size")]  # --set
    assert list(infos)[:len(searched)] == searched  # the searched keys first, in the space's order
    assert {"encoder", "image_size", "encoder_weights"} <= set(infos)  # the fixed ones too, one value each
    assert [v.number_value for v in infos["image_size"].domain_discrete.values] == [64]
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (1.0e-4, 3.0e-2)
    assert [v.string_value for v in infos["arch"].domain_discrete.values] == ["fpn", "unet"]
    assert [v.number_value for v in infos["batch_size"].domain_discrete.values] == [8, 16]
    assert {v.string_value for v in infos["outcome"].domain_discrete.values} >= {"completed", "stopped early",
                                                                                  "diverged", "errored"}
    assert [m.name.tag for m in config.metric_infos] == [BEST, SWEEP_METRIC, EPOCHS, "val/loss"]
    # shown by default (TensorBoard shows five, "differs" first): the intervals searched and the outcome
    assert {name for name, info in infos.items() if info.differs} == {"lr", "weight_decay", "outcome"}


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


# ----- what a sweep shows: the status line, the final test, the report ------------------------------------------

def test_terminal_shows_a_compact_status_line_not_rays_tables(sweep):
    experiment, proc = sweep
    status = [line for line in proc.stdout.splitlines()
              if re.fullmatch(rf"\[\d+:\d\d:\d\d\] \d+/{NUM_SAMPLES} trials: .*", line)]
    assert status, proc.stdout[-3000:]
    assert "Trial status:" not in proc.stdout and "╭" not in proc.stdout  # Ray's tables stay off
    rows = read_trials(experiment)
    last = status[-1]  # the final state: every trial accounted for, the same best as the summary
    for label in ("completed", "stopped early", "collapsed"):
        count = sum(r["status"] == label for r in rows)
        assert (f"{count} {label}" in last) == (count > 0), last  # the line counts what there is
    assert "running" not in last and "pending" not in last
    best = json.loads((experiment / "summary.json").read_text())["best_value"]
    assert f"best {SWEEP_METRIC} {best:.4f}" in last


def test_the_sweep_says_once_where_its_trials_compute_and_where_their_batches_come_from(sweep):
    experiment, proc = sweep
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "device: " in line]
    # 6 trials on one machine of one kind: one line, from the driver (not one per trial, in each worker's name)
    assert len(lines) == 1 and lines[0].startswith("trials on "), lines
    line = lines[0]  # on this CPU machine: full precision, NCHW, the host loader, and why
    assert "device: CPU" in line and "precision=32-true" in line and "channels_last=False" in line, line
    assert "; data: host loader (CPU: a batch is a copy from memory either way)" in line, line
    # and every trial's own line is in its results
    for rows in trial_results(experiment).values():
        assert line.endswith(rows[-1]["device_setup"])


def test_final_test_matches_a_direct_evaluation_of_the_best_checkpoint(sweep):
    import segmentation_models_pytorch as smp
    import torch

    from segcore.data.datamodule import PetsDataModule
    from segcore.model import SegmentationModule

    experiment, proc = sweep
    metrics = json.loads((experiment / "test_metrics.json").read_text())
    summary = json.loads((experiment / "summary.json").read_text())
    assert metrics["checkpoint"] == summary["best_checkpoint"] and summary["final_test"] == metrics
    names = ("test/iou", "test/per_image_iou", "test/dice", "test/per_image_dice")
    assert all(0.0 <= metrics[k] <= 1.0 for k in names)
    assert f"Final test, best checkpoint on {metrics['images']} test images: IoU {metrics['test/iou']:.4f}" \
        in proc.stdout

    # the checkpoint on every test image, with SMP's metric functions directly
    module = SegmentationModule.from_checkpoint(metrics["checkpoint"])
    datamodule = PetsDataModule(module.cfg.replace(data_dir=str(experiment.parent.parent / "data")))
    datamodule.setup("test")
    test = datamodule.test_set
    assert metrics["images"] == len(test)
    batch = test.__getitems__(list(range(len(test))))
    with torch.inference_mode():
        pred = (module(batch["image"]).sigmoid() > 0.5).long()
    stats = smp.metrics.get_stats(pred, batch["mask"].long(), mode="binary")
    expected = {"test/iou": smp.metrics.iou_score(*stats, reduction="micro"),
                "test/per_image_iou": smp.metrics.iou_score(*stats, reduction="micro-imagewise"),
                "test/dice": smp.metrics.f1_score(*stats, reduction="micro"),
                "test/per_image_dice": smp.metrics.f1_score(*stats, reduction="micro-imagewise")}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(float(value), abs=1e-5), name


def table(report: str, header: str) -> list[list[str]]:
    """The rows of the markdown table under ``## header``."""
    section = report.split(f"## {header}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row] for row in rows[2:]]


def assert_real_plot(path: Path) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.width >= 600 and image.height >= 250, image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, path  # drawn on, not a blank canvas


def trial_folders(experiment: Path) -> list[Path]:
    """The trial folders: named NNN-<arch>-<encoder>, by number."""
    folders = sorted((p for p in experiment.iterdir() if p.is_dir() and re.fullmatch(r"\d{3}-[a-z]+-.+", p.name)),
                     key=lambda p: p.name)
    assert folders, sorted(p.name for p in experiment.iterdir())
    return folders


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """run name -> its result rows"""
    return {folder.name: [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
            for folder in trial_folders(experiment)}


def test_report_plots_every_trial_and_its_numbers_are_the_trials(sweep):
    experiment, proc = sweep
    report = (experiment / "report.md").read_text()
    assert f"report: {experiment / 'report.md'}" in proc.stdout
    for png in ("report_val_iou.png", "report_best_so_far.png", "report_importances.png",
                "report_predictions.png"):
        assert f"]({png})" in report
        assert_real_plot(experiment / png)
    results = trial_results(experiment)
    rows = table(report, f"{SWEEP_METRIC} per epoch")
    assert sorted(r[1] for r in rows) == sorted(results)  # every trial, once
    statuses = {r["name"]: r["status"] for r in read_trials(experiment)}
    kept = {r["name"]: "kept" if r["weights"] else "" for r in read_trials(experiment)}
    for _number, name, status, epochs, best, last, weights in rows:
        values = [r[SWEEP_METRIC] for r in results[name]]
        assert status == statuses[name] and int(epochs) == len(values) and weights == kept[name]
        assert float(best) == pytest.approx(max(values), abs=5e-5)
        assert float(last) == pytest.approx(values[-1], abs=5e-5)
    # best so far is the running maximum of the trials' bests
    by_number = {int(r[0]): float(r[4]) for r in rows}
    running = 0.0
    for number, best, so_far in table(report, "Best so far"):
        running = max(running, by_number[int(number)])
        assert float(best) == pytest.approx(by_number[int(number)]) and float(so_far) == pytest.approx(running)
    importances = {name: float(value) for name, value in table(report, "Parameter importances")}
    searched = {k.removeprefix("param.") for k in read_trials(experiment)[0] if k.startswith("param.")}
    assert importances and set(importances) <= searched and sum(importances.values()) == pytest.approx(1, abs=1e-3)


def test_report_shows_the_best_checkpoints_predictions_without_importing_torch(sweep, tmp_path):
    """The best trial saved its validation predictions beside its checkpoint; the report shows them as they are, so
    the driver imports neither torch, Lightning nor SMP. They are what the checkpoint predicts."""
    import shutil
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from segtune.report import run_best_model
    from segtune.storage import PREDICTIONS_FILE

    experiment, _ = sweep
    checkpoint = Path(json.loads((experiment / "summary.json").read_text())["best_checkpoint"])
    saved = np.load(checkpoint.parent / PREDICTIONS_FILE)
    pixels, n, size = run_best_model(checkpoint, str(experiment.parent.parent / "data"))
    assert (n, size) == (5, 64) and pixels.shape == saved.shape == (n * (size + 2) + 2, 3 * (size + 2) + 2, 3)
    assert (pixels != saved).any(axis=2).mean() < 0.005  # a few pixels at the threshold at most (batch of 16 or 5)
    copy = tmp_path / "e2e"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("report*"))
    code = ("import sys; from pathlib import Path; from segtune.report import build_report; "
            "build_report(Path(sys.argv[1])); print(sorted(m for m in ('torch', 'pytorch_lightning', "
            "'segmentation_models_pytorch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(copy)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-3000:]
    shown = np.asarray(Image.open(copy / "report_predictions.png").convert("RGB"))
    scale = shown.shape[1] // saved.shape[1]
    assert scale >= 2 and (shown[::scale, ::scale] == saved).all()  # the saved grid, enlarged pixel for pixel
    assert f"{n} validation images at {size}px" in (copy / "report.md").read_text()
    # cut short (a kill while it was copied): the checkpoint is run instead, and shows what it predicts
    from segtune.report import build_report

    saved_copy = copy / checkpoint.relative_to(experiment).parent / PREDICTIONS_FILE
    saved_copy.write_bytes(saved_copy.read_bytes()[:100])
    build_report(copy)
    shown = np.asarray(Image.open(copy / "report_predictions.png").convert("RGB"))
    assert (shown[::scale, ::scale] == pixels).all()


def test_report_rebuilds_from_an_interrupted_experiment(sweep, tmp_path):
    """--report reads only the folder: a copy whose driver died (no trials.csv, a trial cut short) still reports."""
    import shutil

    experiment, _ = sweep
    copy = tmp_path / "e2e"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("checkpoint_*", "events.out.*", "report*",
                                                                    "trials.csv", "summary.json", "test_metrics.json"))
    cut = max((f / "result.json" for f in trial_folders(copy)), key=lambda p: len(p.read_text().splitlines()))
    lines = cut.read_text().splitlines()
    cut.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # epoch 1, then a line the kill cut short
    proc = run_cli("tune_main.py", "--report", str(copy), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (copy / "report.md").read_text()
    rows = {r[1]: r for r in table(report, f"{SWEEP_METRIC} per epoch")}
    assert rows[cut.parent.name][2:4] == ["unfinished", "1"]
    assert "Final test" not in report and "no checkpoint of the best trial is left" in report
    assert_real_plot(copy / "report_val_iou.png")


def test_report_shows_what_is_readable_when_files_are_cut_short(sweep, tmp_path):
    """A killed driver or a lost machine can leave test_metrics.json or a trial's params.json cut short: --report
    still writes the report, says what it could not read, and shows no traceback."""
    import shutil

    experiment, _ = sweep
    copy = tmp_path / "e2e"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("checkpoint_*", "events.out.*", "report*"))
    (copy / "test_metrics.json").write_text('{"images": 48, "test/iou": 0.5')
    damaged = trial_folders(copy)[0] / "params.json"
    damaged.write_text('{"lr": 0.00')
    proc = run_cli("tune_main.py", "--report", str(copy), timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = (copy / "report.md").read_text()
    assert "## Final test\n\nNot shown: test_metrics.json is not readable" in report
    rows = {r[1] for r in table(report, f"{SWEEP_METRIC} per epoch")}
    assert damaged.parent.name in rows and len(rows) == NUM_SAMPLES  # still every trial
