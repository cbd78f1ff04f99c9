"""What makes ``--resume`` exact after a kill at any moment: Tune's state and the trials' result rows, committed
together, in ``resume_state/`` of the experiment folder.

Why Tune's own saving is not enough (Ray 2.60): Tune writes its state files (trials, searcher, ...) to a local
staging folder and a background thread uploads that folder to the storage path, rewriting each file in place. A
kill during an upload leaves old, new and truncated files side by side; Tune then fails to read them, logs
"Failed to restore the run state" and silently starts the experiment anew (seen as "no search space has been
defined" from the searcher). Its JSON logger has the same flaw with each trial's ``result.json``: a row reaches
storage before the state that holds its checkpoint, so the resumed trial runs that epoch again and the restored
logger replaces the row.

So this module keeps the record itself:
- ``CommittedState`` (a Tune callback) is asked for its state right after Tune has written every other state file
  to the staging folder (every TUNE_GLOBAL_CHECKPOINT_S, 2 s by default). It then copies those files, with the
  result rows reported since the last commit, into a new numbered folder and writes a COMMITTED marker last. Only
  then are the rows appended to the trials' ``result.json``: a row anyone can see is committed, together with the
  checkpoint it was reported with. (Tune registers a reported checkpoint one event after the row, and may save its
  state in between: a row waits for its checkpoint, or else a resumed trial would run that epoch again.)
  Checkpoints are deleted by it too, once no commit needs them.
- ``restore`` (before ``Tuner.restore``) installs the newest committed folder's files in the experiment folder and
  cuts each ``result.json`` back to the rows committed with it. Epochs in progress at the kill (their rows not yet
  committed) run again; nothing committed is lost or reported twice.

Everything here that depends on Tune's internals (its state file names, when ``get_state`` is called,
``Trial.local_experiment_path``) is in this module, checked against ray 2.60 by tests/test_saved_state.py.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import time
from pathlib import PurePosixPath
from typing import Any, Callable, Optional

from ray import tune

from segcore.errors import UserError
from segcore.metrics_names import EPOCH, SWEEP_METRIC
from segtune import naming
from segtune.checkpoint_policy import FULL, KIND_KEY
from segtune.results import MEANINGLESS, better, finite, trial_status
from segtune.storage import DRIVER_FILES, PARAMS_FILE, RESULT_FILE

STATE_DIR = "resume_state"
COMMITTED = "COMMITTED"  # written last: its list of files and their digests is the commit
ROWS_FILE = "rows.json"  # per trial: rows committed in all, and the rows new in this commit
TUNER_FILE = "tuner.pkl"  # Tuner.restore reads it; written once by Tuner(), then re-uploaded on every resume
REFRESH_S = 60.0  # a commit at least this often while Tune saves, even when no trial changed
KEEP = 2  # committed folders kept: the newest, and one to fall back on should the newest be unreadable
# Tune's state files in its staging folder (Ray 2.60): experiment_state-*.json, searcher-state-*.pkl,
# search_gen_state-*.json, basic-variant-state-*.json, callback-states-*.pkl; our own files there are skipped.
TUNE_STATE_PATTERNS = ("*.json", "*.pkl")

log = logging.getLogger(__name__)


def _is_tune_state(name: str) -> bool:
    return name not in DRIVER_FILES and any(fnmatch.fnmatch(name, p) for p in TUNE_STATE_PATTERNS)


def filesystem(root: str):
    """(pyarrow filesystem, path) of ``root``: a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs

    if "://" not in root:
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(root)
    return pyarrow.fs.FileSystem.from_uri(root)


def _join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def _read(fs, path: str) -> Optional[bytes]:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.readall()


def _write(fs, path: str, data: bytes) -> None:
    """Whole or not at all: a temporary name renamed into place (an object store's put is whole anyway)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def _listdir(fs, path: str) -> list:
    import pyarrow.fs

    return fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))


def committed_folders(fs, root: str) -> list[int]:
    """Numbers of the committed folders under ``root``/resume_state, newest first."""
    import pyarrow.fs

    numbers = []
    for info in _listdir(fs, _join(root, STATE_DIR)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.isdigit():
            if fs.get_file_info(_join(info.path, COMMITTED)).type == pyarrow.fs.FileType.File:
                numbers.append(int(info.base_name))
    return sorted(numbers, reverse=True)


def parse_rows(data: Optional[bytes]) -> list[str]:
    """The complete rows of a result.json (a kill mid-append can leave a last line cut short: not a row)."""
    if not data:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            continue
        rows.append(line)
    return rows


_after_commit: Optional[Callable[[dict[str, int]], None]] = None


def trial_dirname(trial) -> str:
    """The trial_dirname_creator of sweeps started before trials had numbers (segtune.naming), still named by the
    Tuner they pickled."""
    return f"{naming.LEGACY_PREFIX}{trial.trial_id}"


_committed_counts: Optional[dict[str, int]] = None  # the last commit's (or the resumed one's) counts, as announced


def after_commit(listener: Callable[[dict[str, int]], None]) -> None:
    """Call ``listener`` (one per sweep: its searcher) after each commit with every trial's committed rows (Tune
    trial id -> count): the searcher tells Optuna what is committed, no more. A commit already made in this process
    (the one a resumed sweep starts from) is announced to it at once: a kill can come between a commit and its
    announcement, and a resumed run may end without committing anything new."""
    global _after_commit
    _after_commit = listener
    if _committed_counts is not None:
        listener(_committed_counts)


def _announce(counts: dict[str, int], ids: Optional[dict[str, str]] = None) -> None:
    """``counts``: trial folder -> committed rows; ``ids``: trial folder -> Tune trial id."""
    global _committed_counts
    _committed_counts = {(ids or {}).get(t) or t.removeprefix(naming.LEGACY_PREFIX): n for t, n in counts.items()}
    if _after_commit is not None:
        _after_commit(_committed_counts)


_counting: Optional["CommittedState"] = None  # this process's, once Tune has set it up: what best_counted reads


def best_counted(trial) -> Optional[float]:
    """The best ``val/iou`` of ``trial``'s rows that count: committed, or reported in this run and not lost since,
    as the summary and trials.csv will read them. Not Tune's ``trial.metric_analysis``: a trial restarted from its
    last full state (--max-failures in this run, or --resume after a kill) reports the epochs after that state again,
    and Tune's analysis keeps the values of the first, lost, run of them too. None before a finite value."""
    if _counting is None:
        return None
    folder = PurePosixPath(trial.path).name
    values = [v for v in (_counting._best.get(folder), _counting._best_awaiting.get(folder)) if v is not None]
    return better(values, default=None)


def replayed(trial, result: dict) -> bool:
    """Whether ``result`` repeats an epoch whose row ``trial`` already has (CommittedState.repeats): the TensorBoard
    board skips it too."""
    return _counting is not None and _counting.repeats(trial, result)


def _best_of(rows: list[str], best: Optional[float] = None) -> Optional[float]:
    """The best finite ``val/iou`` of result rows (JSON strings) and ``best``."""
    values = [finite(json.loads(r).get(SWEEP_METRIC)) for r in rows] + [best]
    return better((v for v in values if v is not None), default=None)


EXPERIMENT: Optional[str] = None  # this run's experiment folder or URI, set by tune_main (Tune pickles callbacks
# with the experiment, and a resumed experiment may have moved since)
# --keep-best and --max-epochs of this run, set by tune_main (None: every ended trial keeps its best checkpoint)
KEEP_BEST: Optional[int] = None
MAX_EPOCHS: Optional[int] = None


class CommittedState(tune.Callback):
    """Commits Tune's state and the rows reported since the last commit each time Tune saves its state (when
    anything changed); writes each trial's ``result.json`` (instead of Tune's JSON logger) and ``params.json`` in
    the folder ``EXPERIMENT``; and deletes a trial's checkpoints once a commit no longer needs them (its latest and
    its best are kept; once it has ended, its best only, and only if it is one of the KEEP_BEST best: a sweep of a
    thousand trials keeps that many models, not a thousand). Tune's own deletion cannot be used: it deletes the
    previous checkpoint as soon as a new one arrives, before any saved state names the new one, so a kill in
    between leaves a state whose checkpoint is gone."""

    def __getstate__(self) -> dict:  # nothing of a run's own is pickled with the experiment
        return {}

    def __setstate__(self, state: dict) -> None:
        pass

    def setup(self, **info) -> None:
        self._fs, self._path = filesystem(EXPERIMENT)
        self._staging: Optional[str] = None
        self._pending: dict[str, list[str]] = {}  # trial folder -> rows reported, not yet committed
        self._awaiting: dict[str, list[str]] = {}  # trial folder -> rows whose checkpoint Tune has not registered
        self._new_checkpoints: dict[str, list[list]] = {}  # trial folder -> [path, score] not yet committed
        self._changed, self._committed_at = False, time.monotonic()
        numbers = committed_folders(self._fs, self._path)
        self._number = max(numbers, default=0)
        committed = json.loads(_read(self._fs, _join(self._folder(self._number), ROWS_FILE)) or b"{}") \
            if numbers else {}  # resumed: restore() has cut every result.json back to these counts
        self._counts = {trial: entry["count"] for trial, entry in committed.items()}  # trial folder -> rows
        # trial folder -> Tune trial id (commits of sweeps from before trials had numbers: in the folder's name)
        self._ids = {trial: entry["trial_id"] for trial, entry in committed.items() if "trial_id" in entry}
        self._checkpoints = {trial: entry.get("checkpoints", []) for trial, entry in committed.items()}
        # trial folder -> how it ended (segtune.results.trial_status), for trials that will not run again
        self._ended = {trial: entry["ended"] for trial, entry in committed.items() if "ended" in entry}
        # trial folder -> best val/iou of its rows committed or released to the next commit (resumed: of the rows
        # restore() kept), and of its rows still waiting for a full state, lost if the trial restarts before it
        self._best = {trial: best for trial in committed
                      if (best := _best_of(parse_rows(_read(self._fs, _join(self._path, trial, RESULT_FILE)))))
                      is not None}
        self._best_awaiting: dict[str, float] = {}
        global _committed_counts, _counting
        _committed_counts = None  # nothing of another experiment run in this process
        _counting = self
        if numbers:
            _announce(self._counts, self._ids)

    def _folder(self, number: int) -> str:
        return _join(self._path, STATE_DIR, f"{number:08d}")

    def _trial_folder(self, trial) -> str:
        return PurePosixPath(trial.path).name

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._staging is None and trials:
            self._staging = trials[0].local_experiment_path

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        from ray.tune.utils.util import SafeFallbackEncoder

        folder = _join(self._path, self._trial_folder(trial))
        self._ids[self._trial_folder(trial)] = trial.trial_id
        self._fs.create_dir(folder)
        params = json.dumps(trial.config, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        _write(self._fs, _join(folder, PARAMS_FILE), params.encode())
        self._changed = True

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._release(trial)  # a trial that ends runs no epoch again: its rows need no checkpoint
        # nor its full state: its best weights stay if it is one of the best (an errored trial is not ended: a
        # --resume continues it from its full state)
        self._ended[self._trial_folder(trial)] = trial_status(trial.last_result or {}, MAX_EPOCHS or 0,
                                                              errored=False, ended=True)
        self._changed = True

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._release(trial)
        self._changed = True

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        # restarted (--max-failures) from its last registered checkpoint: the epochs after it run and report again
        self._awaiting.pop(self._trial_folder(trial), None)
        self._best_awaiting.pop(self._trial_folder(trial), None)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        from ray.tune.utils.util import SafeFallbackEncoder

        # A row waits for a full state at or after its epoch (or its trial's end): committed before, a kill would
        # make the resumed trial run that epoch again. (Tune also registers a reported checkpoint in a later event,
        # and may save its state in between.)
        if self.repeats(trial, result):
            return
        folder = self._trial_folder(trial)
        self._awaiting.setdefault(folder, []).append(json.dumps(result, cls=SafeFallbackEncoder))
        value = finite(result.get(SWEEP_METRIC))
        if value is not None:
            self._best_awaiting[folder] = better(value, self._best_awaiting.get(folder, value))

    def repeats(self, trial, result: dict) -> bool:
        """Whether ``result`` repeats an epoch whose row the trial already has, committed or released to the next
        commit: an errored trial resumed by --resume continues from its last full state and runs again the epochs
        after it, whose rows were released when it failed. The first row stands. (A trial restarted within a run, or
        resumed after a kill, repeats only rows that were still awaiting their full state, and those were dropped.)"""
        epoch, folder = result.get(EPOCH), self._trial_folder(trial)
        return isinstance(epoch, int) and epoch <= self._counts.get(folder, 0) + len(self._pending.get(folder, []))

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        result = trial.last_result or {}
        score = finite(result.get(SWEEP_METRIC))
        full = result.get(KIND_KEY, FULL) == FULL  # checkpoints written before the policy were all full
        self._new_checkpoints.setdefault(self._trial_folder(trial), []).append(
            [checkpoint.path, -math.inf if score is None else score, full])
        if full:  # Tune's state, saved from now on, names the full state these rows' trial continues from
            self._release(trial)

    def _release(self, trial) -> None:
        folder = self._trial_folder(trial)
        rows = self._awaiting.pop(folder, [])
        if rows:
            self._pending.setdefault(folder, []).extend(rows)
        awaiting = self._best_awaiting.pop(folder, None)
        if awaiting is not None:
            self._best[folder] = better(awaiting, self._best.get(folder, awaiting))

    def get_state(self) -> None:
        """Tune calls this after writing its other state files to the staging folder: commit them now, if anything
        changed (and at least every REFRESH_S: Tune's state holds more than this class follows)."""
        if getattr(self, "_staging", None) is not None and (
                self._changed or self._pending or self._new_checkpoints
                or time.monotonic() - self._committed_at > REFRESH_S):
            self._commit()
        return None  # nothing for Tune to save: the commit is the state

    def _commit(self) -> None:
        number = self._number + 1
        folder = self._folder(number)
        self._fs.create_dir(folder)
        digests = {}
        for name in _newest_session_files(self._staging):
            with open(os.path.join(self._staging, name), "rb") as f:
                digests[name] = self._put(folder, name, f.read())
        if TUNER_FILE not in digests:  # a first run: Tune wrote it straight to storage and never rewrites it
            data = _read(self._fs, _join(self._path, TUNER_FILE))
            if data is not None:
                digests[TUNER_FILE] = self._put(folder, TUNER_FILE, data)
        pending, self._pending = self._pending, {}
        new_checkpoints, self._new_checkpoints = self._new_checkpoints, {}
        counts = {t: self._counts.get(t, 0) + len(pending.get(t, [])) for t in {*self._counts, *pending}}
        checkpoints = {t: self._checkpoints.get(t, []) + new_checkpoints.get(t, [])
                       for t in {*self._checkpoints, *new_checkpoints}}
        kept = {t: needed(c) for t, c in checkpoints.items()}
        if KEEP_BEST is not None:
            kept = keep_best(kept, self._ended, KEEP_BEST)
        rows = {t: {"count": counts.get(t, 0), "new": pending.get(t, []), "checkpoints": kept.get(t, []),
                    **({"trial_id": self._ids[t]} if t in self._ids else {}),
                    **({"ended": self._ended[t]} if t in self._ended else {})}
                for t in sorted({*counts, *kept})}
        digests[ROWS_FILE] = self._put(folder, ROWS_FILE, json.dumps(rows).encode())
        self._put(folder, COMMITTED, json.dumps({"files": digests}, indent=1).encode())
        self._number, self._counts, self._checkpoints = number, counts, kept
        self._changed, self._committed_at = False, time.monotonic()
        for trial, new in pending.items():  # visible only now that they are committed
            _append_rows(self._fs, _join(self._path, trial, RESULT_FILE), new)
        _announce(counts, self._ids)
        for trial, listed in checkpoints.items():  # no commit from this one on needs the others
            for entry in listed:
                if entry not in kept[trial]:
                    _delete_dir(self._fs, entry[0])
        for old in committed_folders(self._fs, self._path)[KEEP:]:
            self._fs.delete_dir(self._folder(old))

    def _put(self, folder: str, name: str, data: bytes) -> str:
        with self._fs.open_output_stream(_join(folder, name)) as f:
            f.write(data)
        return hashlib.sha256(data).hexdigest()


def best_of(checkpoints: list[list]) -> list:
    """The best of a trial's checkpoints ([path, score, full], oldest first): the latest of equally good ones."""
    return max(reversed(checkpoints), key=lambda c: c[1])


def needed(checkpoints: list[list]) -> list[list]:
    """Of a trial's checkpoints ([path, score, full], oldest first; without ``full``: written before the checkpoint
    policy, each full): the latest (Tune's state names it), the latest full state (what the trial continues from)
    and the best (what the sweep's best trial is tested and predicted with), oldest first."""
    if not checkpoints:
        return []
    latest = checkpoints[-1]
    best = best_of(checkpoints)
    full = next((c for c in reversed(checkpoints) if len(c) < 3 or c[2]), None)
    keep = {id(c) for c in (latest, best, full) if c is not None}
    return [c for c in checkpoints if id(c) in keep]


def keep_best(kept: dict[str, list[list]], ended: dict[str, str], k: int) -> dict[str, list[list]]:
    """``kept`` (trial folder -> the checkpoints ``needed`` keeps) with each ended trial down to its best checkpoint,
    and that only for the ``k`` ended trials whose best checkpoint scores highest; a diverged or collapsed trial
    keeps none (it is never the sweep's best, however high its val/iou). Unended trials keep what they need."""
    ranked = sorted((t for t, c in kept.items() if t in ended and c and ended[t] not in MEANINGLESS),
                    key=lambda t: best_of(kept[t])[1], reverse=True)
    top = set(ranked[:k])
    return {t: c if t not in ended else [best_of(c)] if t in top else [] for t, c in kept.items()}


def _delete_dir(fs, path: str) -> None:
    try:
        fs.delete_dir(path)
    except FileNotFoundError:  # deleted by an earlier run that was killed before its next commit
        pass


def _newest_session_files(staging: str) -> list[str]:
    """Tune's state files of the session that just saved. Each resumed session writes its own set, named by its
    start time, next to the older sets it downloaded; Tune reads only the newest, so only that one is committed."""
    names = sorted(n for n in os.listdir(staging) if _is_tune_state(n) and os.path.isfile(os.path.join(staging, n)))
    states = [n for n in names if n.startswith("experiment_state-")]
    if not states:
        return names
    session = max(states)[len("experiment_state-"):-len(".json")]
    return [n for n in names if n == TUNER_FILE or PurePosixPath(n).stem.endswith(session)]


def _append_rows(fs, path: str, rows: list[str]) -> None:
    data = "".join(f"{row}\n" for row in rows).encode()
    try:
        with fs.open_append_stream(path) as f:
            f.write(data)
    except NotImplementedError:  # object stores cannot append: write the whole object again
        _write(fs, path, (_read(fs, path) or b"") + data)


def _check_folder(fs, folder: str) -> Optional[str]:
    """None if every file the commit lists is there with its digest; else what is wrong."""
    try:
        listed = json.loads(_read(fs, _join(folder, COMMITTED)) or b"")["files"]
    except (ValueError, KeyError, TypeError):
        return f"{_join(folder, COMMITTED)} is damaged"
    if not any(name.startswith("experiment_state") for name in listed) or TUNER_FILE not in listed:
        return f"{folder} lacks Tune's experiment state"
    for name, digest in listed.items():
        data = _read(fs, _join(folder, name))
        if data is None:
            return f"{_join(folder, name)} is missing"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{_join(folder, name)} is damaged (its content is not what was committed)"
    return None


def prepare(root: str, commit: Optional[int], resume: bool, state_format: int) -> bool:
    """Ready the experiment at ``root`` for this run (``commit``: from ``newest_readable``); True when Tune is to
    restore it, False when Tune starts it (anew)."""
    global EXPERIMENT
    EXPERIMENT = root
    # Each trial's result.json is written by CommittedState (rows visible once committed), not by Tune's JSON and
    # CSV loggers (the sweep adds TensorBoard's back); sweeps started before commits existed keep Tune's loggers.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1" if state_format >= 1 else "0"
    if commit is not None:
        restore(root, commit)
        return True
    if resume and state_format >= 1:  # killed before its first commit: nothing of it was kept
        start_anew(root)
        return False
    return resume  # a new sweep; or one from before commits existed, resumed from Tune's own files


def newest_readable(root: str) -> Optional[int]:
    """The number of the newest commit of the experiment at ``root`` whose files are all there, whole; None if it
    has no commit (killed before its first one). Raises UserError when there are commits and none is readable."""
    fs, path = filesystem(root)
    problems = []
    for number in committed_folders(fs, path):
        problem = _check_folder(fs, _join(path, STATE_DIR, f"{number:08d}"))
        if problem is None:
            return number
        problems.append(problem)
        log.warning("resume: %s; trying the commit before it", problem)
    if not problems and _has_rows(fs, path):  # rows are only ever written after a commit
        problems.append(f"{_join(path, STATE_DIR)} is missing, yet trials have reported results")
    if problems:
        raise UserError(f"--resume: the saved state of {root} cannot be read ({'; '.join(problems)}). Its results "
                        "so far stay where they are (trials.csv and report.md can be rebuilt with --report); to "
                        "go on searching, start a new sweep with another --name")
    return None


def _has_rows(fs, path: str) -> bool:
    import pyarrow.fs

    return any(info.type == pyarrow.fs.FileType.Directory and naming.is_trial_folder(info.base_name)
               and parse_rows(_read(fs, _join(info.path, RESULT_FILE))) for info in _listdir(fs, path))


def restore(root: str, number: int) -> None:
    """Put the experiment at ``root`` back to commit ``number`` before Tune reads it: Tune's state files as
    committed, and every trial's result.json cut back to its committed rows."""
    import pyarrow.fs

    fs, path = filesystem(root)
    folder = _join(path, STATE_DIR, f"{number:08d}")
    listed = json.loads(_read(fs, _join(folder, COMMITTED)))["files"]
    for info in _listdir(fs, path):  # Tune's state files as committed, no other (e.g. a later session's)
        if info.type == pyarrow.fs.FileType.File and (_is_tune_state(info.base_name) or info.base_name == TUNER_FILE):
            fs.delete_file(info.path)
    for name in listed:
        if name != ROWS_FILE:
            _write(fs, _join(path, name), _read(fs, _join(folder, name)))
    committed = json.loads(_read(fs, _join(folder, ROWS_FILE)))
    for info in _listdir(fs, path):
        if info.type != pyarrow.fs.FileType.Directory or not naming.is_trial_folder(info.base_name):
            continue
        if info.base_name in committed:
            _restore_rows(fs, _join(info.path, RESULT_FILE), committed[info.base_name])
        else:  # nothing of it committed (a trial launched after the commit, or not yet reporting): Tune makes
            fs.delete_dir(info.path)  # it again if its saved state holds it, else the search proposes anew
    for other in _listdir(fs, _join(path, STATE_DIR)):  # later folders: unreadable, or a commit cut short
        if other.base_name.isdigit() and int(other.base_name) > number:
            fs.delete_dir(other.path)


def _restore_rows(fs, path: str, committed: dict[str, Any]) -> None:
    data = _read(fs, path)
    rows = parse_rows(data)
    before = committed["count"] - len(committed["new"])  # appended after earlier commits, before this one
    if len(rows) < before:
        raise UserError(f"--resume: {path} holds {len(rows)} results, fewer than the {before} committed before "
                        "(it was changed or truncated outside the sweep); start a new sweep with another --name")
    wanted = rows[:before] + committed["new"]
    if rows != wanted or data != "".join(f"{r}\n" for r in wanted).encode():
        _write(fs, path, "".join(f"{r}\n" for r in wanted).encode())


def start_anew(root: str) -> None:
    """A sweep killed before its first commit starts again: what Tune had written is uncommitted (no result row is
    visible before a commit), so its state files and trial folders go."""
    import pyarrow.fs

    fs, path = filesystem(root)
    for info in _listdir(fs, path):
        if info.type == pyarrow.fs.FileType.File and (_is_tune_state(info.base_name) or info.base_name == TUNER_FILE):
            fs.delete_file(info.path)
        elif info.type == pyarrow.fs.FileType.Directory and (naming.is_trial_folder(info.base_name)
                                                              or info.base_name == STATE_DIR):
            fs.delete_dir(info.path)


class RefuseSilentRestart(logging.Filter):
    """Tune, failing to read a saved experiment, logs "Failed to restore the run state." and starts it anew over
    the old one. A resume must never do that: the failure is raised instead (out of ``Tuner.fit``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to restore the run state"):
            cause = record.exc_info[1] if record.exc_info else None
            raise UserError(f"--resume: Tune could not read the saved experiment ({type(cause).__name__}: {cause}); "
                            "was it saved by another version of Ray? Start a new sweep with another --name, or "
                            "resume it with the versions it was started with")
        return True
