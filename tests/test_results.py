"""The end-of-sweep summary: counts of every outcome, how to continue an interrupted sweep (only then), and the
one rule that names each trial's outcome."""
from __future__ import annotations

import pytest

from segtune.results import COLLAPSED, COMPLETED, DIVERGED, ERRORED, STOPPED, UNFINISHED, format_summary, trial_status

RESUME = "python tune_main.py --resume --storage-path /runs/results --name pets"


def summary(unfinished: int, interrupted: bool = False) -> dict:
    return {"trials": 5 + unfinished, "experiment": "/runs/results/pets", "interrupted": interrupted,
            "resume_command": RESUME,
            "counts": {COMPLETED: 2, STOPPED: 1, DIVERGED: 1, ERRORED: 1, UNFINISHED: unfinished}}


def test_interrupted_sweep_summary_prints_the_resume_command():
    text = format_summary(summary(unfinished=2, interrupted=True))
    assert text.startswith("Sweep interrupted: 7 trials")
    assert "2 unfinished" in text and RESUME in text


def test_finished_sweep_summary_counts_every_outcome_and_has_no_resume_hint():
    text = format_summary({**summary(unfinished=0), "trials": 6, "counts": {**summary(0)["counts"], COLLAPSED: 1}})
    assert text.startswith("Sweep finished: 6 trials: 2 completed, 1 stopped early, 1 diverged, 1 collapsed, "
                           "1 errored")
    assert "--resume" not in text and "unfinished" not in text
    assert "tensorboard --logdir /runs/results/pets" in text


@pytest.mark.parametrize("last, errored, ended, expected", [
    ({"epoch": 3}, False, False, COMPLETED),
    ({"epoch": 3}, True, False, COMPLETED),  # every epoch reported (a retried trial keeps its error.txt)
    ({"epoch": 1, "done": True}, False, True, STOPPED),
    ({"epoch": 1, "diverged": 1}, False, False, DIVERGED),
    ({"epoch": 1}, True, False, ERRORED),
    ({"epoch": 1}, False, False, UNFINISHED),
    ({}, False, False, UNFINISHED),  # never reported: interrupted before its first epoch
    # collapsed: one class everywhere at its last epoch (1% of the pixels or fewer predicted pet, or 99% or more)
    ({"epoch": 3, "val/pet_fraction": 1.0, "val/iou": 0.2195}, False, False, COLLAPSED),
    ({"epoch": 1, "done": True, "val/pet_fraction": 0.004}, False, True, STOPPED),  # stopped: may have recovered
    ({"epoch": 3, "val/pet_fraction": 0.011}, False, False, COMPLETED),  # a small pet share, but not none
    ({"epoch": 1, "val/pet_fraction": 0.0}, False, False, UNFINISHED),  # still running: it may recover
    ({"epoch": 1, "val/pet_fraction": 0.0}, True, False, ERRORED),
    # diverged without a NaN: the validation loss exploded (over 100; every loss here starts near 1)
    ({"epoch": 4, "val/loss": 2.5e5, "val/pet_fraction": 1.0}, False, False, DIVERGED),
    ({"epoch": 2, "done": True, "val/loss": 195.0}, False, True, DIVERGED),
    ({"epoch": 3, "val/loss": 99.0, "val/pet_fraction": 0.3}, False, False, COMPLETED),
    # against the truth's share: a folder's defects on 0.5% of the pixels, predicted on 0.4%, are no collapse; on
    # 0.01% they are; a truth of 30% keeps the 1% rule
    ({"epoch": 3, "val/pet_fraction": 0.004, "val/true_fraction": 0.005}, False, False, COMPLETED),
    ({"epoch": 3, "val/pet_fraction": 0.0001, "val/true_fraction": 0.005}, False, False, COLLAPSED),
    ({"epoch": 3, "val/pet_fraction": 0.995, "val/true_fraction": 0.996}, False, False, COMPLETED),
    ({"epoch": 3, "val/pet_fraction": 0.009, "val/true_fraction": 0.3}, False, False, COLLAPSED),
    ({"epoch": 3, "val/pet_fraction": 0.011, "val/true_fraction": 0.3}, False, False, COMPLETED),
])
def test_one_rule_names_each_trials_outcome(last, errored, ended, expected):
    assert trial_status(last, max_epochs=3, errored=errored, ended=ended) == expected


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_final_test_evaluates_at_the_precision_the_trials_trained_at(precision, tiny_config, tmp_path, monkeypatch):
    """The final test rebuilds the trial's Trainer settings from the checkpoint's config: a sweep that trained in
    bf16-mixed is tested in bf16-mixed, not in Lightning's default fp32."""
    import segcore.build
    from segcore.data.datamodule import PetsDataModule
    from segcore.model import SegmentationModule
    from segtune.final_test import evaluate

    cfg = tiny_config.replace(precision=precision)
    trainer = segcore.build.make_trainer(cfg, tmp_path, logger=False, checkpoint=False, limit_train_batches=1,
                                         limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SegmentationModule(cfg), datamodule=PetsDataModule(cfg))
    trainer.save_checkpoint(tmp_path / "trial.ckpt")
    datamodule = PetsDataModule(cfg)
    datamodule.check(("test",))  # decoded as a sweep's driver decodes it
    test = datamodule.decoded["test"]
    used = []
    real = segcore.build.test_trainer
    monkeypatch.setattr(segcore.build, "test_trainer", lambda c: used.append(real(c)) or used[-1])
    metrics = evaluate(str(tmp_path / "trial.ckpt"), test)
    assert [t.precision for t in used] == [precision]
    assert metrics["images"] == len(test) and 0.0 <= metrics["test/iou"] <= 1.0


def test_the_best_trial_is_the_one_whose_kept_rows_hold_the_best_val_iou():
    """Read from each trial's result rows (what trials.csv shows), NaN and missing values skipped: after a kill and a
    resume, Tune's own analysis of a trial can still hold an epoch that was lost and run again."""
    import pandas as pd
    from ray.tune import Result

    from segtune.results import best_trial, best_value

    def result(name: str, values: list) -> Result:
        rows = pd.DataFrame({"epoch": range(1, len(values) + 1), "val/iou": values})
        return Result(metrics=rows.iloc[-1].to_dict() if values else {}, checkpoint=None, error=None,
                      path=f"/runs/pets/{name}", metrics_dataframe=rows)

    grid = [result("000", [0.20, 0.41, 0.39]), result("001", [0.30, float("nan")]), result("002", [0.42, 0.1]),
            result("003", [])]
    assert best_trial(grid).path.endswith("002")
    assert [best_value(r) for r in grid] == [0.41, 0.30, 0.42, None]
    assert best_trial([result("004", [float("nan")])]) is None
    # a trial whose loss exploded (diverged) or that predicts one class everywhere (collapsed) is never the best,
    # however high its val/iou: with the epoch budget known, its status is read from its last row
    exploded = result("005", [0.9, 0.95])
    exploded.metrics_dataframe["val/loss"] = [0.5, 1.2e7]
    exploded.metrics.update({"val/loss": 1.2e7})
    collapsed = result("006", [0.5, 0.93])
    collapsed.metrics.update({"val/pet_fraction": 1.0})
    assert best_trial([*grid, exploded, collapsed]).path.endswith("005")  # without the budget: any finite value
    assert best_trial([*grid, exploded, collapsed], max_epochs=2).path.endswith("002")


def test_a_trial_stopped_before_its_first_report_is_listed_unfinished_with_its_parameters(tmp_path):
    """A stop signal can come after a trial started, before it reported: Tune's Result then has no config (it comes
    from the last result); trials.csv takes the parameters from the params.json the trial wrote when it started."""
    import json

    from ray.tune import Result

    from segtune.results import trial_rows

    folder = tmp_path / "001-fpn-resnet18"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"lr": 0.01, "arch": "fpn"}))
    unreported = Result(metrics={}, checkpoint=None, error=None, path=str(folder))
    assert unreported.config is None  # what Tune gives: the parameters must come from the trial's folder
    [row] = trial_rows([unreported], ["lr", "arch"], max_epochs=3)
    assert (row.status, row.params, row.epochs, row.number) == (UNFINISHED, {"lr": 0.01, "arch": "fpn"}, 0, 1)
