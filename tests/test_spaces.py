"""Search spaces: the shipped ones load, and every kind of mistake is reported with the file, key and reason."""
from __future__ import annotations

import pytest
import yaml

from conftest import run_cli
from segcore.errors import UserError
from segtune.spaces import FREEZE_COMBOS, expand_freeze, list_spaces, load_space


def write_space(tmp_path, body: dict, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text("# a test space\n" + yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_shipped_spaces_load_and_convert(name):
    space = load_space(name)
    assert space.description and not space.description.startswith("(no description")
    tune_space = space.to_tune()
    assert set(tune_space) == set(space.fixed) | set(space.searched)


def test_default_space_searches_the_original_knobs():
    space = load_space("default")
    for key in ("lr", "weight_decay", "batch_size", "freeze", "encoder", "arch", "optimizer", "scheduler", "loss"):
        assert key in space.searched, key
    assert space.searched["lr"][0] == "loguniform" and space.searched["weight_decay"][0] == "loguniform"
    assert sorted(space.searched["freeze"][1]) == sorted(FREEZE_COMBOS)


def test_list_spaces_reads_descriptions():
    names = dict(list_spaces())
    assert {"default", "smoke"} <= set(names)


def test_freeze_combinations_never_freeze_everything():
    assert len(FREEZE_COMBOS) == 7
    for combo in FREEZE_COMBOS:
        assert not all(expand_freeze(combo).values())
    assert expand_freeze("encoder+head") == {"freeze_encoder": True, "freeze_decoder": False, "freeze_head": True}


BAD_SPACES = [
    ("unknown-key", {"learning_rate": {"loguniform": [1e-4, 1e-2]}}, "learning_rate", "not a config field"),
    ("low-not-below-high", {"lr": {"loguniform": [1e-2, 1e-4]}}, "'lr'", "low < high"),
    ("loguniform-nonpositive", {"weight_decay": {"loguniform": [0.0, 1e-2]}}, "'weight_decay'", "> 0"),
    ("empty-choice", {"arch": {"choice": []}}, "'arch'", "at least one value"),
    ("grid-with-optuna", {"loss": {"grid": ["dice", "bce"]}}, "'loss'", "--search random"),
    ("bad-choice-value", {"arch": {"choice": ["fpn", "transformer9000"]}}, "'arch'", "transformer9000"),
    ("bad-fixed-value", {"optimizer": "nadam"}, "'optimizer'", "nadam"),
    ("non-integer-int", {"batch_size": {"int": [4.5, 16]}}, "'batch_size'", "integers"),
    ("unknown-distribution", {"lr": {"normal": [0.0, 1.0]}}, "'lr'", "loguniform"),
    ("bad-freeze", {"freeze": {"choice": ["none", "encoder+decoder+head"]}}, "'freeze'", "encoder+decoder+head"),
    ("bound-invalid-for-config", {"lr": {"uniform": [-1.0, 1e-3]}}, "'lr'", "positive"),
]


@pytest.mark.parametrize("body,key,reason", [b[1:] for b in BAD_SPACES], ids=[b[0] for b in BAD_SPACES])
def test_bad_space_names_file_key_and_reason(tmp_path, body, key, reason):
    path = write_space(tmp_path, body)
    with pytest.raises(UserError) as err:
        load_space(str(path))
    message = str(err.value)
    assert str(path) in message and key in message and reason in message, message


def test_grid_is_fine_with_random_search(tmp_path):
    path = write_space(tmp_path, {"loss": {"grid": ["dice", "bce"]}})
    space = load_space(str(path), search="random")
    assert space.searched["loss"] == ("grid", ["dice", "bce"])


def test_set_overrides_fix_a_key_for_all_trials():
    space = load_space("smoke", overrides={"image_size": 64, "encoder": "resnet18"})
    assert space.fixed["image_size"] == 64 and "image_size" not in space.searched
    with pytest.raises(UserError, match="--set colour"):
        load_space("smoke", overrides={"colour": "blue"})
    with pytest.raises(UserError, match="image_size"):
        load_space("smoke", overrides={"image_size": 100})  # not a multiple of 32


def test_unknown_space_name_lists_the_named_spaces():
    with pytest.raises(UserError, match="default, demo, own_data, smoke"):
        load_space("nonexistent")


@pytest.mark.slow
def test_cli_bad_space_exits_2_before_ray_starts(tmp_path, pets_root):
    path = write_space(tmp_path, {"lr": {"loguniform": [1e-2, 1e-4]}, "arch": {"choice": []}})
    proc = run_cli("tune_main.py", "--space", str(path), "--data-dir", str(pets_root),
                   "--storage-path", str(tmp_path / "results"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "'lr'" in proc.stderr and "'arch'" in proc.stderr  # both reported
    assert not (tmp_path / "results").exists()
