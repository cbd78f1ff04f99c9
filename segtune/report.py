"""The sweep report: ``report.md`` and its PNGs in the experiment folder, built from the files a sweep leaves.

It reads only what is on disk (each trial's ``result.json`` and ``params.json``, ``sweep.yaml``, ``space.yaml``,
``test_metrics.json``), so it can be rebuilt at any time, also from an interrupted or killed sweep:
``python tune_main.py --report DIR``. What it shows:

- ``val/iou`` per epoch for every trial (a trial ASHA stopped ends early, marked x);
- the best ``val/iou`` so far against trial number (segtune.naming: the number the sweep proposed it with);
- Optuna's parameter importances for the best ``val/iou`` each trial reached (stopped trials included);
- the best checkpoint's predictions on validation images (image | truth | prediction).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from segcore.errors import UserError
from segcore.metrics_names import (
    EPOCH,
    SWEEP_METRIC,
    VAL_PREDICTIONS_IMAGES,
    VAL_PREDICTIONS_PADDING,
)
from segtune import naming
from segtune.results import MEANINGLESS, STATUSES, STOPPED, VAL_CLASS_PREFIX, finite, status_from_last
from segtune.settings import read_settings
from segtune.storage import (
    BEST_CONFIG_FILE,
    CHECKPOINT_FILE,
    PARAMS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    RESULT_FILE,
    SPACE_FILE,
    TEST_METRICS_FILE,
)

# Past this many trials the report's tables list the best ones (every trial is in trials.csv) and its curves draw
# the others faintly: a sweep of hundreds of trials stays readable
TABLE_TRIALS, COLOURED_CURVES = 30, 10

# all match storage.REPORT_PLOTS, so a sweep stored at a URI uploads them with report.md
CURVES_PNG, BEST_SO_FAR_PNG = "report_val_iou.png", "report_best_so_far.png"
IMPORTANCES_PNG, PREDICTIONS_PNG = "report_importances.png", "report_predictions.png"


@dataclass
class TrialRecord:
    trial_id: str  # Tune's
    path: Path  # its folder, named by its run name (segtune.naming)
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # reported results, in order
    status: str = ""
    number: Optional[int] = None  # segtune.naming's; for sweeps from before trials had numbers, by start from 1

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def values(self) -> list[Optional[float]]:
        return [finite(r.get(SWEEP_METRIC)) for r in self.rows]

    @property
    def epochs(self) -> list[int]:
        return [int(r.get(EPOCH) or r.get("training_iteration") or i + 1) for i, r in enumerate(self.rows)]

    @property
    def best(self) -> Optional[float]:
        values = [v for v in self.values if v is not None]
        return max(values) if values else None

    @property
    def weights_kept(self) -> bool:
        """Whether a checkpoint of the trial is still on disk (--keep-best keeps the best trials' once they end)."""
        return any(self.path.glob(f"*/{CHECKPOINT_FILE}"))

    @property
    def start(self) -> float:
        if not self.rows:
            return math.inf
        return float(self.rows[0].get("timestamp", 0)) - float(self.rows[0].get("time_this_iter_s", 0))


@dataclass
class Experiment:
    path: Path
    settings: dict[str, Any]
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def max_epochs(self) -> int:
        return int(self.settings.get("max_epochs") or max((max(t.epochs, default=0) for t in self.trials),
                                                          default=0))

    def best(self) -> Optional[tuple[TrialRecord, dict[str, Any]]]:
        """The trial and result row with the highest val/iou of any epoch, of a trial that neither diverged nor
        collapsed (segtune.results.best_trial's rule)."""
        found = [(v, t, row) for t in self.trials if t.status not in MEANINGLESS
                 for v, row in zip(t.values, t.rows) if v is not None]
        if not found:
            return None
        _, trial, row = max(found, key=lambda x: x[0])
        return trial, row


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON object file, or None when it is missing or damaged (a killed driver or a lost machine cuts files
    short; the report shows what is there)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_experiment(path: Path) -> Experiment:
    if not path.is_dir():
        raise UserError(f"--report {path}: not found (give the experiment folder, <storage-path>/<name>)")
    experiment = Experiment(path, read_settings(path, f"--report {path}")[1])
    for trial_dir in naming.trial_folders(path):
        result_file, params_file = trial_dir / RESULT_FILE, trial_dir / PARAMS_FILE
        rows = []
        if result_file.is_file():
            for line in result_file.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a killed driver
                    continue
        config = read_json(params_file) or {}  # missing or cut short: the trial is shown, without its config
        trial_id = next((r["trial_id"] for r in rows if r.get("trial_id")), trial_dir.name)
        experiment.trials.append(TrialRecord(trial_id, trial_dir, config, rows,
                                             number=naming.number_of(trial_dir.name)))
    unnumbered = sorted((t for t in experiment.trials if t.number is None), key=lambda t: (t.start, t.trial_id))
    for number, trial in enumerate(unnumbered, start=1):
        trial.number = number
    for trial in experiment.trials:
        last = trial.rows[-1] if trial.rows else {}
        # error.txt: the trial raised at some point (Ray keeps it after a retry that went on to finish)
        trial.status = status_from_last(last, experiment.max_epochs, errored=(trial.path / "error.txt").is_file())
    experiment.trials.sort(key=lambda t: t.number)
    return experiment


# ----- plots ------------------------------------------------------------------------------------------------------

def _figure(width: float = 8.0, height: float = 4.8):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=100)


def plot_curves(experiment: Experiment, out: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    plt, fig, ax = _figure()
    many = len(experiment.trials) > 20
    # with many trials, the best few in colour (and the legend), the others faint grey behind them
    coloured = {t.name for t in best_trials(experiment, COLOURED_CURVES)} if many else None
    for trial in sorted(experiment.trials, key=lambda t: coloured is not None and t.name in coloured):
        points = [(e, v) for e, v in zip(trial.epochs, trial.values) if v is not None]
        if not points:
            continue
        epochs, values = zip(*points)
        faint = coloured is not None and trial.name not in coloured
        line, = ax.plot(epochs, values, marker="o", markersize=1.5 if faint else 3, linewidth=0.6 if faint else 1.2,
                        label=None if faint else trial.name, **({"color": "0.75", "alpha": 0.5} if faint else {}))
        if trial.status == STOPPED and not faint:  # where ASHA stopped it
            ax.plot(epochs[-1], values[-1], marker="x", markersize=9, color=line.get_color())
    title = f"{SWEEP_METRIC} per epoch (x: stopped early by ASHA)"
    ax.set(xlabel="epoch", ylabel=SWEEP_METRIC,
           title=title if not many else f"{title}\nthe {len(coloured)} best of {len(experiment.trials)} in colour")
    ax.set_xlim(0.5, max(experiment.max_epochs, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def best_trials(experiment: Experiment, n: int) -> list[TrialRecord]:
    """The ``n`` trials with the best val/iou (of those that neither diverged nor collapsed first), best first."""
    ranked = sorted((t for t in experiment.trials if t.best is not None),
                    key=lambda t: (t.status not in MEANINGLESS, t.best), reverse=True)
    return ranked[:n]


def best_so_far(experiment: Experiment) -> list[tuple[int, Optional[float], Optional[float]]]:
    """(trial number, the trial's best, the best of the trials numbered up to it) for every trial."""
    out, running = [], None
    for trial in experiment.trials:
        best = trial.best
        if best is not None:
            running = best if running is None else max(running, best)
        out.append((trial.number, best, running))
    return out


def plot_best_so_far(points: list[tuple[int, Optional[float], Optional[float]]], out: Path) -> None:
    from matplotlib.ticker import MaxNLocator
    plt, fig, ax = _figure()
    scattered = [(n, b) for n, b, _ in points if b is not None]
    if scattered:
        ax.scatter(*zip(*scattered), s=18, alpha=0.6, label="best of the trial")
    running = [(n, r) for n, _, r in points if r is not None]
    if running:
        ax.step(*zip(*running), where="post", linewidth=2, color="black", label="best so far")
    ax.set(xlabel="trial number", ylabel=SWEEP_METRIC, title=f"best {SWEEP_METRIC} so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def importances(experiment: Experiment) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances (its default evaluator) for each trial's best val/iou, over the searched
    parameters; or an empty dict and why not."""
    import optuna

    searched, distributions = searched_distributions(experiment)
    trials = [t for t in experiment.trials if t.best is not None and all(k in t.config for k in searched)]
    varied = [k for k in searched if len({json.dumps(t.config[k], sort_keys=True) for t in trials}) > 1]
    if len(trials) < 3 or not varied:
        return {}, f"too few trials with a {SWEEP_METRIC} ({len(trials)}) or no parameter varied"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for t in trials:
        params = {k: t.config[k] for k in varied}
        study.add_trial(optuna.trial.create_trial(params=params, value=t.best,
                                                  distributions={k: distributions[k] for k in varied}))
    # Optuna's default evaluator (PED-ANOVA): deterministic, and needs no scikit-learn (fANOVA does)
    return optuna.importance.get_param_importances(study), ""


def searched_distributions(experiment: Experiment) -> tuple[list[str], dict[str, Any]]:
    """The searched keys and their Optuna distributions, from the space the sweep started with (space.yaml), or,
    for an experiment without one, from the values its trials took."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space_file = experiment.path / SPACE_FILE
    if space_file.is_file():
        from ray.tune.search.optuna import OptunaSearch

        from segtune.spaces import load_space

        space = load_space(str(space_file), search="random")
        searched = list(space.searched)
        grid = {k: CategoricalDistribution(args) for k, (kind, args) in space.searched.items() if kind == "grid"}
        tune_space = {k: v for k, v in space.to_tune().items() if k in searched and k not in grid}
        return searched, {**OptunaSearch.convert_search_space(tune_space), **grid}
    keys = sorted({k for t in experiment.trials for k in t.config})
    searched, distributions = [], {}
    for key in keys:
        values = [t.config[key] for t in experiment.trials if key in t.config]
        distinct = sorted({json.dumps(v, sort_keys=True) for v in values})
        if len(distinct) < 2:
            continue
        searched.append(key)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            distributions[key] = FloatDistribution(float(min(values)), float(max(values)))
        else:
            distributions[key] = CategoricalDistribution([json.loads(v) for v in distinct])
    return searched, distributions


def plot_importances(values: dict[str, float], out: Path) -> None:
    plt, fig, ax = _figure(8.0, max(2.5, 0.5 * len(values) + 1.2))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for y, name in enumerate(names):
        ax.text(values[name], y, f" {values[name]:.3f}", va="center", fontsize=8)
    ax.set(xlabel="importance (Optuna, PED-ANOVA)", title=f"parameter importance for the best {SWEEP_METRIC}")
    ax.set_xlim(0, max(values.values()) * 1.2 or 1)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# ----- the best model on validation images ----------------------------------------------------------------------

def checkpoint_of(trial: TrialRecord, row: dict[str, Any]) -> Optional[Path]:
    """The checkpoint saved with ``row``; if Tune has since removed it (it keeps the best), the trial's kept
    checkpoint with the highest val/iou."""
    candidates = [(finite(r.get(SWEEP_METRIC)) or -1.0, r) for r in trial.rows]
    for _, r in [(None, row)] + sorted(candidates, key=lambda x: -x[0]):
        for folder in (r.get("checkpoint_dir_name"), r.get("checkpoint_path")):
            if folder:
                path = Path(folder) if Path(folder).is_absolute() else trial.path / folder
                if (path / CHECKPOINT_FILE).is_file():
                    return path / CHECKPOINT_FILE
    return None


def read_classes(path: Path) -> list[str]:
    """The classes the sweep trained on: best_config.yaml's (a generic layout's names them), else none known."""
    import yaml

    try:
        classes = (yaml.safe_load((path / BEST_CONFIG_FILE).read_text()) or {}).get("classes")
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    return [str(c) for c in classes] if isinstance(classes, list) else []


def with_legend(grid, classes: list[str]):
    """``grid`` (a PIL image) with rows under it naming each class beside its colour (segcore.palette), and the
    white of ignored pixels."""
    from PIL import Image, ImageDraw

    from segcore.palette import class_colours

    entries = [*zip(classes, class_colours(len(classes)), strict=True), ("ignored (255)", (255, 255, 255))]
    swatch, gap = 14, 8
    draw = ImageDraw.Draw(grid)
    widths = [swatch + 4 + int(draw.textlength(name)) + gap for name, _ in entries]
    rows, x = 1, 0
    for w in widths:  # as many rows as the grid's width needs
        if x and x + w > grid.width:
            rows, x = rows + 1, 0
        x += w
    out = Image.new("RGB", (grid.width, grid.height + rows * (swatch + 6) + 4), (255, 255, 255))
    out.paste(grid, (0, 0))
    draw = ImageDraw.Draw(out)
    x, y = 4, grid.height + 4
    for (name, colour), w in zip(entries, widths, strict=True):
        if x > 4 and x + w > grid.width:
            x, y = 4, y + swatch + 6
        draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y + 1), name, fill=(0, 0, 0))
        x += w
    return out


def predictions_grid(checkpoint: Path, data_dir: str, out: Path, classes: list[str] = ()) -> str:
    """Image | truth | prediction rows for the first validation images of the best trial's split. Returns what
    was shown, or raises UserError when the data is not there.

    The trial saved these rows beside the checkpoint as it wrote it (``PREDICTIONS_FILE``): shown as they are, so
    the driver never imports torch, Lightning or SMP (4-5 s of a core, taken from the trials on a small machine).
    A checkpoint without them (written before that file existed), or with them unreadable, is run here on the data."""
    import numpy as np
    from PIL import Image

    try:
        pixels = np.load(checkpoint.parent / PREDICTIONS_FILE)
    except (OSError, ValueError, EOFError):  # not there, or not a whole array
        pixels, n, size = run_best_model(checkpoint, data_dir)
    else:  # comparison_grid's layout: 3 columns of square images, VAL_PREDICTIONS_PADDING apart
        size = (pixels.shape[1] - VAL_PREDICTIONS_PADDING) // 3 - VAL_PREDICTIONS_PADDING
        n = (pixels.shape[0] - VAL_PREDICTIONS_PADDING) // (size + VAL_PREDICTIONS_PADDING)
    grid = Image.fromarray(pixels)
    scale = max(1, 600 // grid.width)  # small training sizes: enlarged (nearest, pixels kept) to be seen
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    if len(classes) > 2:
        grid = with_legend(grid, list(classes))
    grid.save(out)
    return f"{n} validation images at {size}px"


def run_best_model(checkpoint: Path, data_dir: str):
    """(grid pixels, images, image size): the checkpoint's predictions on the first validation images."""
    import torch

    from segcore.callbacks import comparison_grid
    from segcore.data.datamodule import PetsDataModule
    from segcore.model import SegmentationModule

    module = SegmentationModule.from_checkpoint(str(checkpoint))
    cfg = module.cfg.replace(data_dir=data_dir, num_workers=0)
    datamodule = PetsDataModule(cfg)
    datamodule.setup("validate")
    n = min(VAL_PREDICTIONS_IMAGES, len(datamodule.val_set))
    batch = datamodule.val_set.__getitems__(list(range(n)))
    with torch.inference_mode():
        pred = module.predicted_classes(module(batch["image"]))
    grid = comparison_grid(batch["image"], batch["mask"], pred, num_classes=cfg.num_classes)
    return grid.permute(1, 2, 0).numpy(), n, cfg.image_size


# ----- the report -----------------------------------------------------------------------------------------------

def per_class_table(best_row: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """The best trial's IoU of each class at its best epoch and on the test split (three classes or more; none
    for two, whose val/iou is the foreground's)."""
    val = {k[len(VAL_CLASS_PREFIX):]: finite(v) for k, v in best_row.items() if k.startswith(VAL_CLASS_PREFIX)}
    tested = test.get("per_class_iou") or {}
    names = list(dict.fromkeys([*val, *tested]))
    if not names:
        return []
    lines = ["## IoU by class", "",
             "The best trial's IoU of each class, at its best epoch (validation) and on the test split; '-': the "
             "class is in neither truth nor prediction, and left out of the mean.", "",
             "| class | validation IoU | test IoU |", "| --- | --- | --- |"]
    lines += [f"| {name} | {_fmt(val.get(name)) or '-'} | {_fmt(finite(tested.get(name))) or '-'} |"
              for name in names]
    return lines + [""]


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def build_report(path: Path) -> Path:
    """Write report.md and its PNGs into the experiment folder ``path``; returns the report's path."""
    experiment = read_experiment(path)
    s = experiment.settings
    lines = [f"# Sweep report: {path.name}", "",
             f"Space `{s.get('space')}`, search {s.get('search')} (seed {s.get('seed')}), scheduler "
             f"{s.get('scheduler')}, up to {experiment.max_epochs} epochs per trial; metric `{SWEEP_METRIC}`.", ""]
    counts = {status: sum(t.status == status for t in experiment.trials) for status in STATUSES}
    lines += [f"{len(experiment.trials)} trials: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n),
              ""]
    best = experiment.best()
    if best is not None:
        trial, row = best
        lines += ["## Best trial", "",
                  f"Trial {trial.number}, `{trial.name}` (Tune's `{trial.trial_id}`), epoch {row.get(EPOCH)}: "
                  f"{SWEEP_METRIC} **{_fmt(finite(row.get(SWEEP_METRIC)))}**", ""]
        lines += [f"- {k}: `{v}`" for k, v in sorted(trial.config.items())] + [""]
    test_file = path / TEST_METRICS_FILE
    test = read_json(test_file)
    if test_file.is_file() and test is None:
        lines += ["## Final test", "", f"Not shown: {TEST_METRICS_FILE} is not readable (cut short?).", ""]
    elif test is not None:
        lines += ["## Final test", "", f"The best checkpoint on the test split ({test.get('images')} images):", "",
                  "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(finite(v))} |" for k, v in test.items() if k.startswith("test/")] + [""]
    lines += per_class_table(best[1] if best is not None else {}, test or {})

    plot_curves(experiment, path / CURVES_PNG)
    lines += [f"## {SWEEP_METRIC} per epoch", "", f"![{SWEEP_METRIC} per epoch]({CURVES_PNG})", ""]
    listed = experiment.trials
    if len(listed) > TABLE_TRIALS:
        listed = best_trials(experiment, TABLE_TRIALS)
        lines += [f"The {len(listed)} best of {len(experiment.trials)} trials, best first (every trial: `trials.csv`).",
                  ""]
    kept = {t.name for t in experiment.trials if t.weights_kept}  # a folder listing per trial, once
    lines += [f"Weights kept on disk: {len(kept)} trial(s) (`--keep-best {s.get('keep_best', 'all')}`: the best "
              "trials' once they end, running ones' until then); the column `weights` of `trials.csv` says where.",
              "", "| trial | run | status | epochs | best | last | weights |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in listed:
        values = [v for v in t.values if v is not None]
        lines.append(f"| {t.number} | `{t.name}` | {t.status} | {len(t.rows)} | {_fmt(t.best)} | "
                     f"{_fmt(values[-1] if values else None)} | {'kept' if t.name in kept else ''} |")
    lines.append("")

    points = best_so_far(experiment)
    plot_best_so_far(points, path / BEST_SO_FAR_PNG)
    lines += ["## Best so far", "", f"![best so far]({BEST_SO_FAR_PNG})", ""]
    if len(points) > TABLE_TRIALS:  # the trials that raised the best so far
        lines += ["The trials that raised the best so far (every trial: the plot above, and `trials.csv`).", ""]
        points = [p for i, p in enumerate(points) if p[1] is not None and p[1] == p[2]
                  and (i == 0 or points[i - 1][2] != p[2])]
    lines += ["| trial | best of the trial | best so far |", "| --- | --- | --- |"]
    lines += [f"| {n} | {_fmt(b)} | {_fmt(r)} |" for n, b, r in points] + [""]

    values, why_not = importances(experiment)
    lines += ["## Parameter importances", ""]
    if values:
        plot_importances(values, path / IMPORTANCES_PNG)
        lines += [f"Optuna's importances (PED-ANOVA) for the best {SWEEP_METRIC} each trial reached (trials stopped "
                  "early included, at the epochs they ran).", "", f"![parameter importances]({IMPORTANCES_PNG})", "",
                  "| parameter | importance |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in values.items()] + [""]
    else:
        lines += [f"Not computed: {why_not}.", ""]

    lines += ["## Best model on validation images", ""]
    checkpoint = checkpoint_of(*best) if best is not None else None
    if checkpoint is None:
        lines += ["Not shown: no checkpoint of the best trial is left.", ""]
    else:
        try:
            classes = read_classes(path)
            shown = predictions_grid(checkpoint, s.get("data_dir", ""), path / PREDICTIONS_PNG, classes)
            row = ("image | truth | prediction, each class in its colour (the legend under the picture), ignored "
                   "pixels white" if len(classes) > 2 else "image | truth (green) | prediction (red)")
            lines += [f"Each row: {row}; {shown}, checkpoint `{checkpoint}`.",
                      "", f"![predictions]({PREDICTIONS_PNG})", ""]
        except UserError as err:
            lines += [f"Not shown: the data is not readable here ({str(err).splitlines()[0]}).", ""]
    report = path / REPORT_FILE
    report.write_text("\n".join(lines))
    return report
