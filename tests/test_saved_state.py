"""The sweep's own record of its state (segtune.saved_state): what a commit holds, what --resume puts back, and the
Tune behaviour it relies on, checked against the Ray version it was written for."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from segtune import saved_state
from segtune.saved_state import COMMITTED, ROWS_FILE, STATE_DIR, newest_readable, parse_rows, restore


def row(epoch: int, trial: str = "a") -> str:
    return json.dumps({"epoch": epoch, "val/iou": epoch / 10, "trial_id": trial})


def commit(experiment: Path, number: int, files: dict[str, bytes], rows: dict, damage: str = "") -> Path:
    """A committed folder as CommittedState writes it; ``damage`` names a file whose content then changes."""
    folder = experiment / STATE_DIR / f"{number:08d}"
    folder.mkdir(parents=True)
    files = {**files, ROWS_FILE: json.dumps(rows).encode()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (folder / COMMITTED).write_text(json.dumps({"files": digests}))
    if damage:
        (folder / damage).write_bytes(files[damage][: len(files[damage]) // 2])  # cut short, as a lost disk write
    return folder


def test_parse_rows_skips_a_last_line_cut_short_by_a_kill():
    data = f"{row(1)}\n{row(2)}\n{row(3)[:15]}".encode()
    assert parse_rows(data) == [row(1), row(2)]
    assert parse_rows(None) == [] and parse_rows(b"") == []


def test_resume_puts_back_the_newest_readable_commit_and_only_committed_rows(tmp_path):
    exp = tmp_path / "sweep"
    exp.mkdir()
    good = {"experiment_state-2026-01-01_10-00-00.json": b'{"trial_data": []}', "tuner.pkl": b"tuner",
            "searcher-state-2026-01-01_10-00-00.pkl": b"searcher"}
    # commit 4: trial_a had 2 rows (the 2nd new in it), trial_b none yet
    commit(exp, 4, good, {"trial_a": {"count": 2, "new": [row(2)]}})
    # commit 5: committed, but a file no longer matches its digest; 6: cut short before its COMMITTED marker
    commit(exp, 5, {**good, "experiment_state-2026-01-01_10-00-00.json": b'{"trial_data": [1, 2]}'},
           {"trial_a": {"count": 3, "new": [row(3)]}, "trial_b": {"count": 1, "new": [row(1, "b")]}},
           damage="experiment_state-2026-01-01_10-00-00.json")
    (exp / STATE_DIR / "00000006").mkdir()
    # what a kill mid-upload leaves at the top: truncated files, and an older session's state beside them
    (exp / "experiment_state-2026-01-01_10-00-00.json").write_bytes(b'{"trial_da')
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / "experiment_state-2025-12-31_09-00-00.json").write_bytes(b"{}")
    (exp / "sweep.yaml").write_text("space: smoke\n")  # the driver's own files are not Tune's: left alone
    (exp / "trial_a").mkdir()
    (exp / "trial_a" / "result.json").write_text(f"{row(1)}\n{row(2)}\n{row(3)}\n{row(4)[:9]}")
    (exp / "trial_b").mkdir()
    (exp / "trial_b" / "result.json").write_text(f"{row(1, 'b')}\n")

    assert newest_readable(str(exp)) == 4
    restore(str(exp), 4)

    top = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    assert top == {**good, "sweep.yaml": b"space: smoke\n"}
    assert (exp / "trial_a" / "result.json").read_text() == f"{row(1)}\n{row(2)}\n"
    assert not (exp / "trial_b").exists()  # nothing of it was committed
    assert sorted(p.name for p in (exp / STATE_DIR).iterdir()) == ["00000004"]


def test_resume_with_no_readable_commit_is_a_clear_error(tmp_path):
    exp = tmp_path / "sweep"
    commit(exp, 1, {"experiment_state-x.json": b"{}", "tuner.pkl": b"t"}, {}, damage="tuner.pkl")
    with pytest.raises(saved_state.UserError, match=r"saved state of .* cannot be read \(.*tuner.pkl is damaged"):
        newest_readable(str(exp))
    assert newest_readable(str(tmp_path / "never-committed")) is None


def test_resume_without_its_saved_state_but_with_results_is_refused_not_started_anew(tmp_path):
    """Rows are written only after a commit: rows and no commit means the state was removed, and starting anew
    would throw those results away."""
    exp = tmp_path / "sweep"
    (exp / "trial_a").mkdir(parents=True)
    (exp / "trial_a" / "result.json").write_text(f"{row(1)}\n")
    with pytest.raises(saved_state.UserError, match=r"resume_state is missing, yet trials have reported results"):
        newest_readable(str(exp))
    assert (exp / "trial_a" / "result.json").read_text() == f"{row(1)}\n"


def test_resume_refuses_a_result_file_shorter_than_what_was_committed(tmp_path):
    exp = tmp_path / "sweep"
    commit(exp, 2, {"experiment_state-x.json": b"{}", "tuner.pkl": b"t"},
           {"trial_a": {"count": 3, "new": [row(3)]}})
    (exp / "trial_a").mkdir()
    (exp / "trial_a" / "result.json").write_text(f"{row(1)}\n")  # rows 1 and 2 were appended after commit 1
    with pytest.raises(saved_state.UserError, match=r"holds 1 results, fewer than the 2 committed"):
        restore(str(exp), 2)


@pytest.mark.slow  # a real Tune run on Ray
def test_with_tune_every_commit_holds_tunes_state_and_exactly_the_visible_rows(tmp_path, monkeypatch):
    """Against the Ray this was written for: Tune calls Callback.get_state after writing its state files to the
    staging folder, names them as saved_state expects, and a trial's rows appear once committed."""
    import ray
    from ray import tune

    assert ray.__version__.startswith("2.60."), "re-check segtune/saved_state.py against this Ray, then pin it"
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # Tune saves at every step: many commits
    monkeypatch.setattr(saved_state, "EXPERIMENT", str(tmp_path / "exp"))
    checked = []
    commit_now = saved_state.CommittedState._commit

    def commit_and_check(self):  # each commit as it is made (only the newest KEEP are left at the end)
        commit_now(self)
        checked.append(rows_go_with_their_checkpoints(Path(self._folder(self._number))))

    monkeypatch.setattr(saved_state.CommittedState, "_commit", commit_and_check)

    def trainable(config):
        import tempfile

        from segtune import checkpoint_policy as policies

        full_epoch = None
        for epoch, kind in enumerate(EPOCH_KINDS, start=1):  # what segtune.trial writes under a checkpoint policy
            result = {"epoch": epoch, "val/iou": config["x"] * epoch}
            if kind is None:
                tune.report(result)
                continue
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "weights").write_text(str(epoch))
                full_epoch = epoch if kind == policies.FULL else full_epoch
                policies.write_meta(folder, kind, epoch, full_epoch, float(epoch))
                tune.report({**result, policies.KIND_KEY: kind}, checkpoint=tune.Checkpoint.from_directory(folder))

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([1, -1])},
                           tune_config=tune.TuneConfig(trial_dirname_creator=saved_state.trial_dirname),
                           run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0,
                                                     callbacks=[saved_state.CommittedState()]))
        grid = tuner.fit()
        assert len(checked) > 2 and sum(checked) == 2 * len(EPOCH_KINDS)  # every commit checked, every row committed
        check_commits(tmp_path / "exp", grid)
        refuses_tunes_silent_restart(tmp_path / "exp", trainable)
    finally:
        ray.shutdown()


# Each epoch's checkpoint under a checkpoint policy: the weights alone (val/iou improved), the full state, none
EPOCH_KINDS = ("weights", None, "full", "weights", None)


def rows_go_with_their_checkpoints(folder: Path) -> int:
    """In a commit, each trial's committed rows are exactly the epochs up to the full state it would continue from
    (named by the checkpoint the committed Tune state holds, itself or through its meta), or all of them once Tune's
    state has the trial ended: a trial restored from it continues after its last committed row, neither running a
    committed epoch again nor skipping one. Returns the rows new in this commit."""
    import pyarrow.fs
    from ray.tune.experiment.trial import Trial

    from segtune.checkpoint_policy import full_state_for

    rows = json.loads((folder / ROWS_FILE).read_text())
    state = json.loads(next(folder.glob("experiment_state-*.json")).read_text())
    for trial_state, run_metadata in state["trial_data"]:  # read back as Tune.restore reads them
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        count = rows.get(f"trial_{trial.trial_id}", {}).get("count", 0)
        if trial.status == Trial.TERMINATED:
            expected = len(EPOCH_KINDS)
        else:
            full = None if trial.checkpoint is None else \
                full_state_for(pyarrow.fs.LocalFileSystem(), trial.checkpoint.path)[1]
            expected = (full or {}).get("epoch", 0)
        assert count == expected, f"{folder.name}: trial {trial.trial_id} ({trial.status}) has {count} rows " \
                                  f"committed, its state continues after epoch {expected}"
    return sum(len(entry["new"]) for entry in rows.values())


def refuses_tunes_silent_restart(exp: Path, trainable) -> None:
    """Tune, unable to read a saved experiment, logs "Failed to restore the run state" and starts anew over it:
    with saved_state's filter on its logger that failure is raised instead, as a UserError naming the cause."""
    import logging

    from ray import tune

    for state in exp.glob("experiment_state-*.json"):
        state.write_text('{"trial_data": 5}')  # whole, but not what this Tune can read
    controller_log = logging.getLogger("ray.tune.execution.tune_controller")
    refuse = saved_state.RefuseSilentRestart()
    controller_log.addFilter(refuse)
    try:
        with pytest.raises(saved_state.UserError,
                           match=r"Tune could not read the saved experiment \(KeyError: 'runner_data'\)"):
            tune.Tuner.restore(str(exp), trainable=trainable).fit()
    finally:
        controller_log.removeFilter(refuse)


def check_commits(exp: Path, grid) -> None:
    numbers = sorted(int(p.name) for p in (exp / STATE_DIR).iterdir())
    assert len(numbers) == saved_state.KEEP and numbers[-1] > 2  # one commit per save; older ones pruned
    newest = exp / STATE_DIR / f"{numbers[-1]:08d}"
    listed = json.loads((newest / COMMITTED).read_text())["files"]
    # Tune's state (a grid search: Tune's own variant generator) and the Tuner, all of one session
    sessions = {m.group(1) for n in listed if (m := re.search(r"-(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.", n))}
    kinds = {re.sub(r"-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.", ".", n) for n in listed}
    assert len(sessions) == 1 and kinds == {"experiment_state.json", "basic-variant-state.json", "tuner.pkl",
                                            ROWS_FILE}
    assert "tuner.pkl" in listed and newest_readable(str(exp)) == numbers[-1]
    rows = json.loads((newest / ROWS_FILE).read_text())
    for result in grid:
        folder = Path(result.path)
        lines = parse_rows((folder / "result.json").read_bytes())
        assert [json.loads(r)["epoch"] for r in lines] == [1, 2, 3, 4, 5]
        assert rows[folder.name]["count"] == 5
        # the checkpoints a commit needs, no other: the latest (4), the latest full state (3), and the best (epoch
        # 1 when the score falls)
        kept = sorted(json.loads(p.joinpath("weights").read_text()) for p in folder.glob("checkpoint_*"))
        assert kept == ([3, 4] if result.config["x"] > 0 else [1, 3, 4])
        assert json.loads((folder / "params.json").read_text()) == result.config
        assert not (folder / "progress.csv").exists()  # Tune's own CSV and JSON loggers are off
        assert result.metrics_dataframe["epoch"].tolist() == [1, 2, 3, 4, 5]  # Tune reads our result.json back


@pytest.mark.slow  # a real Tune run on Ray
def test_progress_line_best_counts_only_rows_not_lost_to_a_restart(tmp_path, monkeypatch, capsys):
    """A trial that fails after reporting an epoch with no full state behind it restarts from its last full state
    and runs that epoch again: the first run's value is lost (the summary never sees it), yet Tune's
    metric_analysis keeps it. The Progress line's best is the summary's, in this run and in a resumed one."""
    import ray
    from ray import tune

    from segtune import tune_callbacks
    from segtune.checkpoint_policy import FULL, KIND_KEY, write_meta

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    monkeypatch.setattr(saved_state, "EXPERIMENT", str(tmp_path / "exp"))
    monkeypatch.setattr(tune_callbacks, "SHOW_PROGRESS", True)
    failed_once = tmp_path / "failed-once"

    def trainable(config):
        import tempfile

        restored = tune.get_checkpoint()
        start = 2 if restored is not None else 1
        for epoch in range(start, 4):
            if epoch == 1:  # a full state: the restart continues after it
                with tempfile.TemporaryDirectory() as folder:
                    write_meta(folder, FULL, 1, 1, 1.0)
                    tune.report({"epoch": 1, "val/iou": 0.1, KIND_KEY: FULL},
                                checkpoint=tune.Checkpoint.from_directory(folder))
                continue
            first_run = not failed_once.exists()
            tune.report({"epoch": epoch, "val/iou": 0.9 if first_run else 0.5 + epoch / 100})
            if first_run:  # tune.report returned: Tune has asked for the next result, so it has this row
                failed_once.touch()
                raise RuntimeError("fails once, after epoch 2's row")

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        progress = tune_callbacks.Progress(max_epochs=3)
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(trial_dirname_creator=saved_state.trial_dirname),
                           run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=1),
                                                     callbacks=[saved_state.CommittedState(), progress]))
        result = tuner.fit()[0]
    finally:
        ray.shutdown()
    assert failed_once.exists() and result.error is None
    rows = parse_rows((Path(result.path) / "result.json").read_bytes())
    assert [json.loads(r)["val/iou"] for r in rows] == [0.1, 0.52, 0.53]  # epoch 2's first run is lost
    # the scenario under test: Tune's own analysis still holds the lost value
    state = json.loads(next((tmp_path / "exp").glob("experiment_state-*.json")).read_text())
    assert json.loads(state["trial_data"][0][1])["metric_analysis"]["val/iou"]["max"] == 0.9
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "1/1 trials: 1 completed | best val/iou 0.5300 (" in last_line, last_line

    # a resumed run counts the committed rows (restore() has cut result.json back to them), not Tune's analysis
    saved_state.CommittedState().setup()
    assert saved_state.best_counted(result) == 0.53
