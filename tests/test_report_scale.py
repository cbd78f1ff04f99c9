"""The report of a sweep of many trials stays readable: its tables list the best trials (trials.csv has every one),
its best-so-far table the trials that raised the best, and it says whose weights were kept."""
from __future__ import annotations

import json
import random

import yaml
from PIL import Image

from segtune.report import COLOURED_CURVES, TABLE_TRIALS, build_report

TRIALS, MAX_EPOCHS, KEEP = 45, 3, 4


def write_experiment(path) -> dict[str, float]:
    """An experiment folder as a finished sweep leaves it (sweep.yaml, each trial's params.json and result.json; the
    KEEP best trials with a checkpoint). Returns each trial's best val/iou by its folder name."""
    rng = random.Random(0)
    (path / "sweep.yaml").write_text(yaml.safe_dump({"space": "smoke", "search": "optuna", "seed": 0,
                                                     "scheduler": "asha", "max_epochs": MAX_EPOCHS,
                                                     "keep_best": KEEP}))
    bests = {}
    for number in range(TRIALS):
        name = f"{number:03d}-unet-resnet18"
        folder = path / name
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({"lr": 10 ** rng.uniform(-4, -2), "arch": "unet"}))
        epochs = MAX_EPOCHS if rng.random() < 0.3 else 1
        values = sorted(round(rng.uniform(0.1, 0.9), 4) for _ in range(epochs))
        rows = [{"val/iou": v, "epoch": e + 1, "trial_id": f"t{number}", "done": e + 1 == epochs,
                 "val/pet_fraction": 0.3, "val/true_fraction": 0.3} for e, v in enumerate(values)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        bests[name] = values[-1]
    for name in sorted(bests, key=bests.get, reverse=True)[:KEEP]:
        (path / name / "checkpoint_000000").mkdir()
        (path / name / "checkpoint_000000" / "checkpoint.ckpt").write_bytes(b"weights")
    return bests


def table(report: str, header: str) -> list[list[str]]:
    section = report.split(f"## {header}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row] for row in rows[2:]]


def test_a_report_of_many_trials_lists_the_best_and_says_whose_weights_were_kept(tmp_path):
    bests = write_experiment(tmp_path)
    report = build_report(tmp_path).read_text()
    ranked = sorted(bests, key=bests.get, reverse=True)

    rows = table(report, "val/iou per epoch")
    assert [r[1] for r in rows] == ranked[:TABLE_TRIALS]  # the best, best first
    assert f"The {TABLE_TRIALS} best of {TRIALS} trials, best first (every trial: `trials.csv`)." in report
    assert [r[1] for r in rows if r[6] == "kept"] == ranked[:KEEP]
    assert f"Weights kept on disk: {KEEP} trial(s) (`--keep-best {KEEP}`" in report

    # best so far: only the trials that raised it, in trial order, each above the one before
    records = table(report, "Best so far")
    running, expected = None, []
    for number, name in enumerate(sorted(bests)):
        if running is None or bests[name] > running:
            running = bests[name]
            expected.append((number, bests[name]))
    assert [(int(r[0]), float(r[2])) for r in records] == expected

    with Image.open(tmp_path / "report_val_iou.png") as image:  # the best in colour, the others grey
        assert image.width >= 600
        colours = {px for px in image.convert("RGB").getdata() if max(px) - min(px) > 60}
    assert len(colours) > COLOURED_CURVES
