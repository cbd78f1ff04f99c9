"""SweepSettings: the sweep's flags as one typed value, checked together, saved as sweep.yaml and read back."""
from __future__ import annotations

import pytest
import yaml

from segcore.errors import UserError
from segtune.settings import SweepSettings, read_settings, save_settings, settings_for


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as err:
        SweepSettings.from_dict({"num_samples": 0, "grace_period": 5, "max_epochs": 2, "name": "a/b",
                                 "search": "grid", "cpus_per_trial": "two", "colour": "blue"})
    problems = "\n".join(err.value.problems)
    for expected in ("--num-samples must be >= 1", "--grace-period must be between 1 and --max-epochs (2)",
                     "--name 'a/b'", "--search 'grid'", "--cpus-per-trial", "unknown key 'colour'"):
        assert expected in problems, problems
    assert len(err.value.problems) == 6


def test_saved_settings_read_back_equal_and_resume_keeps_them(tmp_path):
    started = SweepSettings(space="smoke", num_samples=4, max_epochs=2, set=["image_size=64"], seed=3)
    save_settings(started, tmp_path)
    path, saved = read_settings(tmp_path, "--resume")
    assert path.name == "sweep.yaml" and saved["saved_by"]["state"] == started.state_format
    assert "state_format" not in saved  # not a flag: where it comes from is saved_by
    resumed = settings_for(SweepSettings(resume=True, verbose=True), {"resume", "verbose"}, tmp_path)
    assert resumed.replace(resume=False, verbose=False) == started


def test_resume_refuses_a_changed_flag_and_ignores_keys_of_older_versions(tmp_path):
    save_settings(SweepSettings(num_samples=4), tmp_path)
    with pytest.raises(UserError, match="these flags differ") as err:
        settings_for(SweepSettings(resume=True, num_samples=8), {"resume", "num_samples"}, tmp_path)
    assert err.value.problems == ["--num-samples 8 (the sweep started with 4)"]
    older = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**older, "list_spaces": False, "report": None}))
    assert settings_for(SweepSettings(resume=True), {"resume"}, tmp_path).num_samples == 4


def test_resume_keeps_the_keep_best_the_sweep_started_with(tmp_path):
    """Not this run's default: a sweep started with --keep-best 3 and resumed without the flag keeps 3."""
    save_settings(SweepSettings(keep_best=3), tmp_path)
    assert settings_for(SweepSettings(resume=True), {"resume"}, tmp_path).keep_best == 3
    with pytest.raises(UserError, match="these flags differ") as err:
        settings_for(SweepSettings(resume=True, keep_best=5), {"resume", "keep_best"}, tmp_path)
    assert err.value.problems == ["--keep-best 5 (the sweep started with 3)"]
