"""TensorBoard for comparing trials: each trial's metrics under the names a Lightning user knows, and an HParams
session per trial with the space's domains, its outcome and its best / last ``val/iou``.

Replaces Ray's TBXLoggerCallback, which logs every number of a result under ``ray/tune/`` (Ray's bookkeeping first),
declares no domains, and records a trial ASHA stopped after one epoch as a successful session.

Written by the driver from the results Tune hands it: scalars as each epoch reports, at step = the epoch (the
training loss of every step too, ``train/loss_step``, at step = the trial's step, reported once per epoch, and the
first validation images with their truth and prediction, ``val/predictions``, sent as a small JPEG); a trial's
session when it ends (a trial resumed after a kill ends once more and rewrites its session: one per run). The
experiment's HParams configuration (every hparam with its domain, the metrics) is written once, at its root.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune.logger import LoggerCallback

from segcore.metrics_names import (
    EPOCH,
    EVAL_METRICS,
    LEARNING_RATE,
    MULTICLASS_EVAL_METRICS,
    SWEEP_METRIC,
    TRAIN_LOSS,
    TRAIN_LOSS_STEP,
    VAL_PREDICTIONS,
    class_metric,
    stage_metric,
)
from segtune import saved_state
from segtune.results import (
    COLLAPSED,
    COMPLETED,
    DIVERGED,
    ERRORED,
    STATUSES,
    STOPPED,
    UNFINISHED,
    VAL_CLASS_PREFIX,
    finite,
    trial_status,
)

SCALARS = (TRAIN_LOSS, *(stage_metric("val", m) for m in EVAL_METRICS), LEARNING_RATE)
# three classes or more: the pixel accuracy and each class's IoU (val/iou/<class>) too
MULTICLASS_SCALARS = tuple(stage_metric("val", m) for m in MULTICLASS_EVAL_METRICS if m not in EVAL_METRICS)
BEST, EPOCHS = f"{SWEEP_METRIC}_best", "trial/epochs"  # for HParams: the best so far, the epochs run
OUTCOME = "outcome"  # an hparam of every session: trials.csv's status, to filter by
CONFIG_SUFFIX = ".hparams-config"  # the experiment root's events file holding the HParams configuration


def domains(searched: dict[str, tuple[str, list]], fixed: dict[str, Any]) -> dict[str, tuple[str, list]]:
    """name -> ("real" | "int" | "discrete", bounds or values): the searched keys first (shown first), then the
    fixed ones (one value each), then the outcome."""
    out: dict[str, tuple[str, list]] = {}
    for key, (kind, args) in searched.items():
        if kind in ("loguniform", "uniform"):
            out[key] = ("real", [float(args[0]), float(args[1])])
        elif kind == "int":
            out[key] = ("int", [int(args[0]), int(args[1])])
        else:
            out[key] = ("discrete", [_value(v) for v in args])
    for key, value in fixed.items():
        out.setdefault(key, ("discrete", [_value(value)]))
    out[OUTCOME] = ("discrete", list(STATUSES))
    return out


def _value(value: Any) -> Any:
    """HParams take bool, number or string values."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TrialBoard(LoggerCallback):
    def __init__(self, searched: dict[str, tuple[str, list]], fixed: dict[str, Any], max_epochs: int,
                 classes: Optional[list[str]] = None):
        """``classes``: the data's, where it names three or more (their IoUs are HParams metrics too)."""
        self.domains = domains(searched, fixed)
        self.max_epochs = max_epochs
        self.classes = list(classes) if classes and len(classes) > 2 else []
        self._writers: dict[str, EventWriter] = {}  # trial id -> its writer (not pickled with Tune's state)
        self._started: dict[str, float] = {}
        self._written: dict[str, int] = {}  # trial id -> the last epoch written
        self._best: dict[str, float] = {}  # trial id -> the best val/iou of the epochs written or kept
        self._config_written = False  # the experiment's configuration, looked for once per driver process

    def __getstate__(self) -> dict:
        return {"domains": self.domains, "max_epochs": self.max_epochs, "classes": self.classes}

    def __setstate__(self, state: dict) -> None:
        self.domains, self.max_epochs = state["domains"], state["max_epochs"]
        self.classes = state.get("classes", [])  # a board pickled before it had classes: two
        self._writers, self._started, self._written, self._best = {}, {}, {}, {}
        self._config_written = False

    # ----- Tune's LoggerCallback hooks ------------------------------------------------------------------------
    def log_trial_start(self, trial) -> None:
        self._write_config(Path(logdir(trial)).parent)
        self._started.setdefault(trial.trial_id, time.time())

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        step = result.get(EPOCH)
        if step is None or int(step) <= self._written.get(trial.trial_id, 0) or saved_state.replayed(trial, result):
            # a retried trial (or an errored one resumed) runs again the epochs after its last full state: their
            # first points stand, as their rows do
            return
        self._written[trial.trial_id] = int(step)
        steps = result.get(TRAIN_LOSS_STEP)
        first_step = (int(step) - 1) * len(steps) + 1 if isinstance(steps, list) and steps else None
        writer = self._writer(trial, int(step), first_step)
        for tag in (*SCALARS, *MULTICLASS_SCALARS, *(k for k in result if k.startswith(VAL_CLASS_PREFIX))):
            value = result.get(tag)
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(tag, value, global_step=int(step))
        # the best so far over the epochs this board shows (also those kept from before a resume), not Tune's
        # analysis of the trial: after a kill, that still holds the results of epochs that were lost and run again
        best = max((v for v in (self._best.get(trial.trial_id), finite(result.get(SWEEP_METRIC))) if v is not None),
                   default=None)
        if best is not None:
            self._best[trial.trial_id] = best
            writer.add_scalar(BEST, best, global_step=int(step))
        writer.add_scalar(EPOCHS, int(step), global_step=int(step))
        if isinstance(result.get(VAL_PREDICTIONS), str):
            writer.add_summary(jpeg_summary(VAL_PREDICTIONS, result[VAL_PREDICTIONS]), int(step))
        if first_step is not None:  # this epoch's steps, numbered from the trial's first step
            for i, loss in enumerate(steps):
                if isinstance(loss, (int, float)) and math.isfinite(loss):
                    writer.add_scalar(TRAIN_LOSS_STEP, loss, global_step=first_step + i)
        writer.flush()  # an epoch takes seconds: TensorBoard shows it now, not in 30 s

    def log_trial_end(self, trial, failed: bool = False) -> None:
        last = trial.last_result or {}
        status = trial_status(last, self.max_epochs, errored=failed, ended=not failed)
        writer = self._writer(trial)
        for summary in session_summaries(self.domains, trial.config, status, str(trial),
                                         self._started.get(trial.trial_id)):
            writer.add_summary(summary)
        writer.close()
        self._writers.pop(trial.trial_id, None)

    # ----- writing --------------------------------------------------------------------------------------------
    def _writer(self, trial, epoch: Optional[int] = None, first_step: Optional[int] = None):
        """The trial's writer in this process. Opened for a trial that ran before (a resumed sweep), it first takes
        out of the trial's earlier events what this run writes again: the epochs from ``epoch`` on (the steps from
        ``first_step`` on) and the session (the trial ends again)."""
        if trial.trial_id not in self._writers:
            folder = logdir(trial)
            kept_best = forget(Path(folder), epoch if epoch is not None else math.inf,
                               first_step if first_step is not None else math.inf)
            if kept_best is not None:
                self._best[trial.trial_id] = kept_best
            self._writers[trial.trial_id] = EventWriter(folder)
        return self._writers[trial.trial_id]

    def _write_config(self, experiment: Path) -> None:
        if self._config_written:
            return
        self._config_written = True
        if any(experiment.glob(f"events.out.tfevents.*{CONFIG_SUFFIX}")):
            return  # written by this sweep before (a resume): one configuration per experiment
        writer = EventWriter(str(experiment), filename_suffix=CONFIG_SUFFIX)
        writer.add_summary(config_summary(self.domains, self.classes))
        writer.close()


class EventWriter:
    """An events file, written through TensorBoard's own writer: the one ``torch.utils.tensorboard.SummaryWriter``
    wraps, with the same file names and records. Importing that wrapper imports torch, 1.5 s of the driver's one
    thread as Tune starts the first trials (the board opens its files then), and each trial's ``train()`` waited
    for it."""

    def __init__(self, folder: str, filename_suffix: str = ""):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._file = EventFileWriter(folder, filename_suffix=filename_suffix)

    def add_summary(self, summary, step: Optional[int] = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        event = Event(summary=summary, wall_time=time.time())
        if step is not None:
            event.step = int(step)
        self._file.add_event(event)

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.add_summary(Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]), global_step)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def logdir(trial) -> str:
    """Where a trial's events go: its folder in the sweep's storage when that is a file system path (written there
    at once, as its result rows are: Tune's copy of its local staging folder lags behind, and a kill in between
    would lose epochs that the rows keep); Tune's staging folder, which it uploads, for a URI."""
    if trial.storage.storage_filesystem.type_name == "local":
        return trial.path
    trial.init_local_path()
    return trial.local_path


def forget(folder: Path, epoch: float, first_step: float) -> Optional[float]:
    """Take out of the events files in ``folder`` the points at epochs >= ``epoch`` (of ``train/loss_step``: at
    steps >= ``first_step``) and the HParams session. Written by a run that was killed, these epochs were not
    committed: the resumed trial runs them again. (TensorBoard's loader drops points only when a step goes
    backwards, so the epoch in progress at the kill would show twice.) Each changed file is replaced whole.
    Returns the best ``val/iou`` of the points kept (None without any), where the resumed best so far goes on."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import metadata
    from tensorboard.summary.writer.record_writer import RecordWriter

    sessions = {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    best = None
    for path in sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []:
        kept, changed = [], False
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            values = [v for v in event.summary.value
                      if v.tag not in sessions
                      and event.step < (first_step if v.tag == TRAIN_LOSS_STEP else epoch)]
            for v in values:
                value = finite(v.simple_value) if v.tag == SWEEP_METRIC and v.HasField("simple_value") else None
                if value is not None and (best is None or value > best):
                    best = value
            if len(values) < len(event.summary.value):
                changed = True
                if not values:
                    continue
                del event.summary.value[:]
                event.summary.value.extend(values)
                record = event.SerializeToString()
            kept.append(record)
        if changed:
            part = folder / ".rewritten.part"  # not "tfevents": TensorBoard never reads it, even if left by a kill
            with open(part, "wb") as f:
                writer = RecordWriter(f)
                for record in kept:
                    writer.write(record)
            part.replace(path)
    return best


def jpeg_summary(tag: str, encoded: str):
    """An image summary of a base64 JPEG (segcore.callbacks.encoded_grid), written as it is: no decoding."""
    import base64
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    data = base64.b64decode(encoded)
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=3,
                                                                      encoded_image_string=data))])


def _hparam(name: str, kind: str, values: list):
    from tensorboard.plugins.hparams import summary_v2 as hp

    if kind == "real":
        return hp.HParam(name, hp.RealInterval(*values))
    if kind == "int":
        return hp.HParam(name, hp.IntInterval(*values))
    kinds = {type(v) for v in values}
    if len(kinds) > 1:  # Discrete takes one type: mixed choices are shown as strings
        values = [str(v) for v in values]
    return hp.HParam(name, hp.Discrete(values))


def shown_first(doms: dict[str, tuple[str, list]]) -> set[str]:
    """The hparams TensorBoard's table shows by default. It shows five: those marked ``differs`` first, by name. The
    intervals searched (lr, weight decay: what matters most) and the outcome are marked; the choices fill the rest."""
    return {name for name, (kind, values) in doms.items() if kind in ("real", "int")} | {OUTCOME}


def config_summary(doms: dict[str, tuple[str, list]], classes: list[str] = ()):
    """The experiment's HParams configuration: every hparam with its domain, and the metrics to compare (with
    ``classes``, three or more: the pixel accuracy and each class's IoU too)."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    metrics = [hp.Metric(BEST, display_name=f"best {SWEEP_METRIC}"),
               hp.Metric(SWEEP_METRIC, display_name=f"last {SWEEP_METRIC}"),
               hp.Metric(EPOCHS, display_name="epochs run"),
               hp.Metric(stage_metric("val", "loss"), display_name="last val/loss")]
    if classes:
        metrics += [hp.Metric(tag, display_name=f"last {tag}") for tag in MULTICLASS_SCALARS]
        metrics += [hp.Metric(stage_metric("val", class_metric(name)), display_name=f"last val IoU of {name}")
                    for name in classes]
    summary = hp.hparams_config_pb([_hparam(name, kind, values) for name, (kind, values) in doms.items()], metrics)
    # hparams_config_pb has no argument for HParamInfo.differs: set on its proto
    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    first = shown_first(doms)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in first
    return _plugin_summary(value.tag, data)


def session_summaries(doms: dict[str, tuple[str, list]], config: dict[str, Any], status: str, run: str,
                      started: Optional[float]) -> list:
    """A trial's HParams session: its values of every hparam (and its outcome), then how it ended."""
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    values = {}
    for name, (kind, choices) in doms.items():
        if name == OUTCOME:
            values[name] = status
        elif name in config:
            value = _value(config[name])
            values[name] = str(value) if kind == "discrete" and any(isinstance(c, str) for c in choices) \
                and not isinstance(value, str) else value
    start = hp.hparams_pb(values, trial_id=run, start_time_secs=started)  # the session's name: the run's
    # TensorBoard's statuses are success, failure, running and unknown: a trial the scheduler stopped is no
    # success (its value is of a fraction of the budget), nor a failure; the outcome hparam names it exactly
    ended = {COMPLETED: api_pb2.STATUS_SUCCESS, STOPPED: api_pb2.STATUS_UNKNOWN, DIVERGED: api_pb2.STATUS_FAILURE,
             COLLAPSED: api_pb2.STATUS_FAILURE, ERRORED: api_pb2.STATUS_FAILURE,
             UNFINISHED: api_pb2.STATUS_RUNNING}[status]
    return [start, _session_end(ended)]


def _session_end(status: int):
    """The session's end as TensorBoard's HParams plugin reads it (its own summary helper for this needs
    TensorFlow; this is the same proto, as torch.utils.tensorboard builds it)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(
        version=metadata.PLUGIN_DATA_VERSION,
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=int(time.time())))
    return _plugin_summary(metadata.SESSION_END_INFO_TAG, content)


def _plugin_summary(tag: str, data):
    """A summary holding HParams plugin data ``data`` under ``tag``."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata

    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])
