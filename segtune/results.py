"""What a sweep leaves behind: ``trials.csv``, ``best_config.yaml``, ``summary.json`` and the terminal summary."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from segcore.metrics_names import DIVERGED as DIVERGED_KEY
from segcore.metrics_names import EPOCH, SWEEP_METRIC, SWEEP_MODE, class_metric, stage_metric
from segtune import naming
from segtune.spaces import to_config_values
from segtune.storage import (
    BEST_CONFIG_FILE,
    CHECKPOINT_FILE,
    PARAMS_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    TEST_METRICS_FILE,
    TRIALS_CSV,
    write_text_atomic,
)

COMPLETED, STOPPED, DIVERGED, COLLAPSED = "completed", "stopped early", "diverged", "collapsed"
ERRORED, UNFINISHED = "errored", "unfinished"
STATUSES = (COMPLETED, STOPPED, DIVERGED, COLLAPSED, ERRORED, UNFINISHED)
FAILED = (DIVERGED, COLLAPSED, ERRORED)  # outcomes that are no result: Optuna is told FAIL
# outcomes whose figures mean nothing, however high: never the sweep's best (an errored trial's epochs before its
# error stand, as its checkpoint does)
MEANINGLESS = (DIVERGED, COLLAPSED)

# The rule for a trial whose numbers are finite but mean nothing, read from its last epoch:
# - diverged: its val/loss exceeds EXPLODED_LOSS. Every loss here starts near 1 for an untrained model (Dice at most
#   1, BCE 0.69 at chance, focal and Lovasz below); a hundred times that is logits gone to extremes, not learning.
# - collapsed: it ran its whole budget and predicts one class nearly everywhere, the foreground on fewer than
#   COLLAPSED_FRACTION of the validation pixels or on more than 1 - COLLAPSED_FRACTION (a pet covers 10-60% of an
#   Oxford-IIIT Pet image), where the truth is not that lopsided: a class the truth gives ten times that share at
#   least (a folder's defects on 0.5% of the pixels, predicted on 0.5%, are no collapse). Its val/iou is then the
#   foreground share of the split (all foreground) or 0 (all background), whatever the hyperparameters: no result,
#   though it would otherwise count as completed. A trial ASHA stopped stays
#   "stopped early" (PRUNED, its values kept for TPE): models from scratch often predict one class after their
#   first epochs and recover, and a slow start is not a failure.
EXPLODED_LOSS = 100.0
COLLAPSED_FRACTION = 0.01
VAL_LOSS, PET_FRACTION = stage_metric("val", "loss"), stage_metric("val", "pet_fraction")
TRUE_FRACTION = stage_metric("val", "true_fraction")  # the truth's foreground share (results from before: absent)
VAL_ACC, VAL_CLASS_PREFIX = stage_metric("val", "acc"), stage_metric("val", class_metric(""))


def exploded(last: dict[str, Any]) -> bool:
    loss = finite(last.get(VAL_LOSS))
    return loss is not None and loss > EXPLODED_LOSS


def collapsed(last: dict[str, Any]) -> bool:
    share = finite(last.get(PET_FRACTION))
    if share is None:
        return False
    truth = finite(last.get(TRUE_FRACTION))
    # the least share of either class that is no collapse: COLLAPSED_FRACTION, or a tenth of the truth's own share
    low = COLLAPSED_FRACTION if truth is None else min(COLLAPSED_FRACTION, truth / 10)
    high = COLLAPSED_FRACTION if truth is None else min(COLLAPSED_FRACTION, (1 - truth) / 10)
    return share < low or share > 1 - high


@dataclass
class TrialRow:
    number: Optional[int]  # the trial's number (segtune.naming); None in sweeps from before trials had one
    name: str  # its run name: its folder, TensorBoard's run
    trial_id: str
    status: str
    params: dict[str, Any]
    last: Optional[float]
    best: Optional[float]
    epochs: int
    wall_time_s: float
    hostname: str
    node_ip: str
    node_id: str
    device: str
    gpu: str  # the ids of the GPUs Ray assigned (its node's numbering): trials sharing a GPU show the same id
    world_size: int
    path: str
    error: str
    # where its best weights are, when they were kept (--keep-best: the best trials' only); "" when deleted or none
    weights: str = ""
    # the pixel accuracy and each class's IoU of its best epoch (data of three classes or more), by metric name
    at_best: dict[str, Optional[float]] = field(default_factory=dict)

    def as_csv(self, param_keys: list[str], extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        row = {"trial": "" if self.number is None else self.number, "name": self.name, "trial_id": self.trial_id,
               "status": self.status}
        row.update({f"param.{k}": self.params.get(k, "") for k in param_keys})
        row.update({f"last_{SWEEP_METRIC}": _fmt(self.last), f"best_{SWEEP_METRIC}": _fmt(self.best),
                    "epochs": self.epochs, "wall_time_s": round(self.wall_time_s, 2), "hostname": self.hostname,
                    "node_ip": self.node_ip, "node_id": self.node_id, "device": self.device,
                    "gpu": self.gpu, "world_size": self.world_size, "path": self.path, "weights": self.weights,
                    "error": self.error})
        row.update({key: _fmt(self.at_best.get(key)) for key in extra_keys})
        return row


def _fmt(value: Optional[float]) -> Any:
    return "" if value is None else round(value, 6)


def finite(value: Any) -> Optional[float]:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def trial_status(last: dict[str, Any], max_epochs: int, errored: bool, ended: bool) -> str:
    """A trial's outcome from its last result: the one rule behind trials.csv, report.md, TensorBoard, Optuna and the
    live status line. ``errored``: it raised (and is not being retried); ``ended``: it ended without error (a
    scheduler's stop).

    Reaching ``max_epochs`` counts as completed even with an error: every epoch's result is there (and a retried
    trial that went on to finish keeps its first attempt's error.txt). Diverged (a non-finite loss, or an exploded
    one) and collapsed (one class predicted everywhere at the end of its budget) are judged on the last epoch."""
    if last.get(DIVERGED_KEY) or exploded(last):
        return DIVERGED
    if int(last.get(EPOCH) or 0) >= max_epochs:
        return COLLAPSED if collapsed(last) else COMPLETED
    if ended:
        return STOPPED
    if errored:
        return ERRORED
    return UNFINISHED  # still running, or never started, when the sweep was interrupted


def status_from_last(last: dict[str, Any], max_epochs: int, errored: bool) -> str:
    """``trial_status`` of a trial that is not running, from its last result: stopped early only when Tune marked that
    result "done" (a scheduler stopped the trial); one that a stop signal ended mid-run is unfinished, to go on."""
    return trial_status(last, max_epochs, errored=errored, ended=bool(last.get("done")))


def trial_rows(result_grid, searched_keys: list[str], max_epochs: int) -> list[TrialRow]:
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        epochs = int(metrics.get(EPOCH) or 0)
        status = status_from_last(metrics, max_epochs, errored=result.error is not None)
        error = "" if result.error is None else (str(result.error).strip().splitlines() or [""])[-1][:300]
        name = Path(result.path).name
        rows.append(TrialRow(
            number=naming.number_of(name), name=name, trial_id=metrics.get("trial_id") or name, status=status,
            params={k: config_of(result).get(k) for k in searched_keys},
            last=finite(metrics.get(SWEEP_METRIC)), best=best_value(result), epochs=epochs,
            wall_time_s=float(metrics.get("time_total_s") or 0.0), hostname=str(metrics.get("hostname", "")),
            node_ip=str(metrics.get("node_ip", "")), node_id=str(metrics.get("node_id", "")),
            device=str(metrics.get("device", "")), gpu=str(metrics.get("gpu", "")),
            world_size=int(metrics.get("world_size") or 0),
            path=str(result.path), error=error, weights=kept_weights(result), at_best=metrics_at_best(result)))
    return sorted(rows, key=lambda r: (r.number is None, r.number or 0, r.trial_id))


def config_of(result) -> dict[str, Any]:
    """A trial's parameters. Tune's ``Result.config`` comes from the trial's last result: None for a trial that
    reported nothing (launched just before a stop signal), whose params.json, written when it started, has them."""
    if result.config is not None:
        return result.config
    try:
        with result.filesystem.open_input_stream(f"{result.path}/{PARAMS_FILE}") as f:
            return json.loads(f.readall())
    except (OSError, ValueError):
        return {}


def write_trials_csv(rows: list[TrialRow], searched_keys: list[str], path: Path) -> None:
    extra = tuple(dict.fromkeys(k for row in rows for k in row.at_best))  # first seen first: acc, then class order
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].as_csv(searched_keys, extra)) if rows else ["trial_id"])
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_csv(searched_keys, extra))


def metrics_at_best(result) -> dict[str, Optional[float]]:
    """``val/acc`` and ``val/iou/<class>`` of the trial's epoch with the best ``val/iou`` (none for two classes,
    which log neither); a class's IoU is None where the class was absent from truth and prediction."""
    df = result.metrics_dataframe
    keys = [] if df is None else [k for k in df.columns if k == VAL_ACC or k.startswith(VAL_CLASS_PREFIX)]
    if not keys or SWEEP_METRIC not in df or not df[SWEEP_METRIC].notna().any():
        return {}
    row = df.loc[df[SWEEP_METRIC].idxmax() if SWEEP_MODE == "max" else df[SWEEP_METRIC].idxmin()]
    return {k: finite(row[k]) for k in keys}


better = max if SWEEP_MODE == "max" else min  # of several val/iou, the best


def best_value(result) -> Optional[float]:
    """The best finite ``val/iou`` of a trial's result rows (its result.json), or None."""
    df = result.metrics_dataframe
    values = [] if df is None or SWEEP_METRIC not in df else [finite(v) for v in df[SWEEP_METRIC]]
    return better((v for v in values if v is not None), default=None)


def best_trial(result_grid, max_epochs: Optional[int] = None):
    """The trial whose best epoch has the best ``val/iou`` over all epochs of all trials, or None. Read from the
    trials' result rows, as trials.csv is: not ``ResultGrid.get_best_result``, which reads Tune's analysis of each
    trial, and after a kill and a resume that still holds the results of epochs that were lost and run again. With
    ``max_epochs``, a diverged or collapsed trial is never the best (a loss gone to 1e7 can leave a finite val/iou)."""
    def counts(result) -> bool:
        if max_epochs is None:
            return True
        status = status_from_last(result.metrics or {}, max_epochs, errored=result.error is not None)
        return status not in MEANINGLESS

    scored = [(value, result) for result in result_grid
              if counts(result) and (value := best_value(result)) is not None]
    return better(scored, key=lambda pair: pair[0], default=(None, None))[1]


def best_checkpoint(best):
    """The best epoch's checkpoint of the trial ``best`` (a ray.tune.Checkpoint), or None."""
    from ray.tune import Checkpoint

    if best.best_checkpoints:
        return best.get_best_checkpoint(SWEEP_METRIC, SWEEP_MODE)
    if best.checkpoint is not None:
        return best.checkpoint
    df = best.metrics_dataframe
    if df is not None and "checkpoint_path" in df and SWEEP_METRIC in df:  # DDP trials: Ray Train keeps them
        path = df.loc[df[SWEEP_METRIC].idxmax(), "checkpoint_path"]
        if isinstance(path, str) and path:
            return Checkpoint(path, filesystem=best.filesystem)
    return None


def kept_weights(result) -> str:
    """Where the trial's best weights are, if they are still there (--keep-best deletes those of the trials
    that are not among the best once they end), else "". (Of equally good checkpoints, the one kept.)"""
    import pyarrow.fs

    scored = sorted(((finite(metrics.get(SWEEP_METRIC)), checkpoint) for checkpoint, metrics in
                     result.best_checkpoints or []), key=lambda pair: -math.inf if pair[0] is None else pair[0],
                    reverse=SWEEP_MODE == "max")
    candidates = [checkpoint for _, checkpoint in scored] or [best_checkpoint(result)]
    for checkpoint in candidates:
        if checkpoint is None:
            continue
        info = checkpoint.filesystem.get_file_info(f"{checkpoint.path}/{CHECKPOINT_FILE}")
        if info.type == pyarrow.fs.FileType.File:
            return checkpoint_location(checkpoint, CHECKPOINT_FILE)
    return ""


def checkpoint_location(checkpoint, filename: str) -> str:
    """Where a checkpoint's file is, as a path or a URI (pyarrow paths of remote filesystems have no scheme)."""
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    location = f"{checkpoint.path}/{filename}"
    return location if kind == "local" else f"{'gs' if kind == 'gcs' else kind}://{location}"


def write_best(best, base: dict[str, Any], experiment_dir: Path) -> dict[str, Any]:
    """``best_config.yaml`` (for ``python -m segcore.train --config``) and the best checkpoint's path."""
    from segtune.spaces import trial_config

    cfg = trial_config(best.config, base)
    cfg.save(experiment_dir / BEST_CONFIG_FILE)
    checkpoint = best_checkpoint(best)
    return {"best_value": best_value(best), "best_params": best.config, "best_config": cfg.to_dict(),
            "best_checkpoint": checkpoint_location(checkpoint, CHECKPOINT_FILE) if checkpoint else None,
            "best_trial_path": str(best.path), "best_trial_id": (best.metrics or {}).get("trial_id"),
            "best_trial": Path(best.path).name}


def summarise(result_grid, searched_keys: list[str], base: dict[str, Any], max_epochs: int,
              experiment_dir: Path, interrupted: bool = False, resume_command: str = "") -> dict[str, Any]:
    """Write trials.csv, best_config.yaml and summary.json; ``interrupted``: the sweep was stopped by a signal and
    ``resume_command`` continues it."""
    rows = trial_rows(result_grid, searched_keys, max_epochs)
    write_trials_csv(rows, searched_keys, experiment_dir / TRIALS_CSV)
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    summary: dict[str, Any] = {"experiment": str(experiment_dir), "trials": len(rows), "counts": counts,
                               "metric": SWEEP_METRIC, "mode": SWEEP_MODE, "interrupted": interrupted,
                               "resume_command": resume_command}
    best = best_trial(result_grid, max_epochs)
    if best is not None:
        summary.update(write_best(best, base, experiment_dir))
    write_summary(summary, experiment_dir)
    return summary


def finished_sweep(experiment_dir: Path, no_final_test: bool) -> Optional[dict[str, Any]]:
    """The summary of the sweep in ``experiment_dir`` if it ran to its end: not interrupted, no trial unfinished,
    its final test done (unless skipped or no trial had a checkpoint) and its report written; else None."""
    try:
        summary = json.loads((experiment_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None  # not summarised yet, or cut short by a kill
    if not isinstance(summary, dict) or summary.get("interrupted") is not False:
        return None
    if (summary.get("counts") or {}).get(UNFINISHED, 1) != 0:
        return None
    tested = no_final_test or not summary.get("best_checkpoint") or "final_test" in summary
    return summary if tested and (experiment_dir / REPORT_FILE).is_file() else None


def write_summary(summary: dict[str, Any], experiment_dir: Path) -> None:
    write_text_atomic(experiment_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))


def format_test(metrics: dict[str, Any]) -> str:
    head = f"Final test, best checkpoint on {metrics['images']} test images: "
    if "per_class_iou" in metrics:  # three classes or more
        per_class = ", ".join(f"{name} {'-' if iou is None else f'{iou:.4f}'}"
                              for name, iou in metrics["per_class_iou"].items())
        return (head + f"mean IoU {metrics['test/iou']:.4f}, pixel accuracy {metrics['test/acc']:.4f}, "
                f"IoU by class: {per_class}")
    return (head + f"IoU {metrics['test/iou']:.4f}, per-image IoU {metrics['test/per_image_iou']:.4f}, "
            f"Dice {metrics['test/dice']:.4f}, per-image Dice {metrics['test/per_image_dice']:.4f}")


def format_summary(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    head = "Sweep interrupted" if summary.get("interrupted") else "Sweep finished"
    lines = [f"{head}: {summary['trials']} trials: {c[COMPLETED]} completed, {c[STOPPED]} stopped early, "
             f"{c[DIVERGED]} diverged, {c.get(COLLAPSED, 0)} collapsed, {c[ERRORED]} errored"
             + (f", {c[UNFINISHED]} unfinished" if c[UNFINISHED] else "")]
    if summary.get("best_value") is not None:
        lines.append(f"Best {SWEEP_METRIC}: {summary['best_value']:.4f} (trial {summary.get('best_trial', '')})")
        params = to_config_values(summary["best_params"])
        lines.append("Best config: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
        lines.append(f"Best checkpoint: {summary['best_checkpoint']}")
    else:
        lines.append(f"No trial reported a finite {SWEEP_METRIC}.")
    exp = Path(summary["experiment"])
    if summary.get("final_test"):
        lines.append(f"{format_test(summary['final_test'])} -> {exp / TEST_METRICS_FILE}")
    lines.append(f"Trials table: {exp / TRIALS_CSV}")
    if (c[UNFINISHED] or summary.get("interrupted")) and summary.get("resume_command"):
        lines.append(f"Interrupted, state saved: continue with  {summary['resume_command']}")
    # last, what to open next
    lines += ["Open next:", f"  the report:       {exp / REPORT_FILE}",
              f"  compare trials:   tensorboard --logdir {exp}"]
    if summary.get("best_value") is not None:
        lines.append(f"  the best config:  python -m segcore.train --config {exp / BEST_CONFIG_FILE}")
    return "\n".join(lines)
