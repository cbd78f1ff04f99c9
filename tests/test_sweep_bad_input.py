"""Bad input to the sweep (data, spaces, flags, storage), one table: each case ends in seconds, before Ray or any
trial starts, with exit code 2 and one clear message naming the file, key or flag, no traceback, and the
experiments already in the storage folder untouched (no new one created either)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import run_cli
from test_bad_input import missing_image, missing_split_file, split_line, trimap_value_7, truncated_jpeg

OTHER = "earlier"  # an experiment already in the storage folder, which no failed invocation may touch
NEW = "sweep"


def tune_main(*argv: str) -> int:
    """``tune_main.main`` in this process (torch, SMP imported once for the whole table)."""
    import tune_main as cli

    try:
        return cli.main(list(argv))
    except SystemExit as exc:  # argparse's own exits
        return exc.code


@pytest.fixture
def storage(tmp_path) -> Path:
    """A storage folder holding an earlier experiment (files of each kind a sweep leaves)."""
    root = tmp_path / "results"
    earlier = root / OTHER
    (earlier / "trial_0001").mkdir(parents=True)
    (earlier / "sweep.yaml").write_text(yaml.safe_dump({"space": "smoke", "num_samples": 4, "max_epochs": 2}))
    (earlier / "trials.csv").write_text("trial_id,status\n0001,completed\n")
    (earlier / "optuna.db").write_bytes(b"SQLite format 3\0 pretend")
    (earlier / "trial_0001" / "result.json").write_text('{"epoch": 1, "val/iou": 0.5}\n')
    return root


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def space_file(body: dict) -> Callable:
    def make(ctx):
        path = ctx["tmp"] / "space.yaml"
        path.write_text("# a test space\n" + yaml.safe_dump(body))
        return ["--space", str(path)], [str(path)]
    return make


def damaged(damage: Callable) -> Callable:
    def make(ctx):
        _, expected = damage(ctx["data"])
        return [], expected
    return make


def flag(*argv: str, expect: list[str]) -> Callable:
    return lambda ctx: (list(argv), expect)


def under_a_file(ctx):
    (ctx["tmp"] / "a-file").write_text("not a folder")
    return ["--storage-path", str(ctx["tmp"] / "a-file" / "results")], ["--storage-path", "a-file", "is a file"]


def name_is_a_file(ctx):
    path = ctx["storage"] / "notes.txt"
    path.write_text("not an experiment")
    return ["--name", "notes.txt", "--resume", "auto"], ["--name", f"{path} is a file", "nothing is overwritten"]


def existing_name(ctx):
    return ["--name", OTHER], [f"--name {OTHER}", "already holds an experiment", "--resume"]


def resume_unknown(ctx):
    return ["--resume", "--name", "never-started"], ["--resume", "never-started", "no sweep.yaml"]


def resume_other_flags(ctx):
    return ["--resume", "--name", OTHER, "--num-samples", "9"], ["--num-samples 9", "the sweep started with 4"]


def resume_legacy_other_flags(ctx):
    """A sweep from before sweep.yaml: its sweep.json is still read."""
    older = ctx["tmp"] / "results" / "older"
    older.mkdir()
    (older / "sweep.json").write_text(json.dumps({"space": "smoke", "num_samples": 4, "max_epochs": 2}))
    return ["--resume", "--name", "older", "--max-epochs", "5"], ["--max-epochs 5", "the sweep started with 2"]


def resume_damaged_settings(ctx):
    damaged = ctx["tmp"] / "results" / "damaged"
    damaged.mkdir()
    (damaged / "sweep.yaml").write_text("space: smoke\nnum_samples: [4\n")  # cut off mid-write
    return ["--resume", "--name", "damaged"], ["--resume", str(damaged / "sweep.yaml"), "not valid YAML"]


def resume_saved_by(saved_by: dict, expect: list[str]) -> Callable:
    """A sweep whose sweep.yaml says it was saved by other versions."""
    def make(ctx):
        other = ctx["tmp"] / "results" / "other-version"
        other.mkdir()
        (other / "sweep.yaml").write_text(yaml.safe_dump({"space": "smoke", "num_samples": 4, "max_epochs": 2,
                                                          "saved_by": saved_by}))
        return ["--resume", "--name", "other-version"], expect
    return make


def resume_damaged_commit(ctx):
    """Its only committed state has a file whose content is not what was committed (a disk or a hand changed it)."""
    from segtune.settings import saved_by

    damaged = ctx["tmp"] / "results" / "damaged-state"
    commit = damaged / "resume_state" / "00000003"
    commit.mkdir(parents=True)
    (damaged / "sweep.yaml").write_text(yaml.safe_dump({"space": "smoke", "set": ["image_size=64"], "max_epochs": 2,
                                                        "data_dir": str(ctx["data"]), "saved_by": saved_by()}))
    (commit / "experiment_state-x.json").write_text('{"trial_data": [')
    (commit / "tuner.pkl").write_bytes(b"pickle")
    (commit / "COMMITTED").write_text(json.dumps({"files": {"experiment_state-x.json": "0" * 64,
                                                            "tuner.pkl": hashlib.sha256(b"pickle").hexdigest()}}))
    return ["--resume", "--name", "damaged-state"], [
        "--resume", "saved state", "cannot be read", "experiment_state-x.json is damaged", "another --name"]


def not_a_dataset(ctx):
    empty = ctx["tmp"] / "empty"
    empty.mkdir()
    return ["--data-dir", str(empty)], [str(empty), "Oxford-IIIT Pet layout"]


CASES = {
    # data: every listed file present and decodable, trimap values, names
    "data-not-a-pet-folder": not_a_dataset,
    "data-missing-split-file": damaged(missing_split_file),
    "data-listed-image-missing": damaged(missing_image),
    "data-truncated-jpeg": damaged(truncated_jpeg),
    "data-trimap-value-7": damaged(trimap_value_7),
    "data-split-line-parent-path": damaged(split_line("../etc/passwd")),
    # spaces
    "space-unknown-key": space_file({"learning_rate": {"loguniform": [1e-4, 1e-2]}}),
    "space-bounds-reversed": space_file({"lr": {"loguniform": [1e-2, 1e-4]}}),
    "space-unknown-arch": space_file({"arch": {"choice": ["fpn", "transformer9000"]}}),
    "space-grid-with-optuna": space_file({"loss": {"grid": ["dice", "bce"]}}),
    "space-epochs-key": space_file({"epochs": 5}),  # the budget is --max-epochs
    "space-unknown-name": flag("--space", "tiny-and-fast", expect=["--space tiny-and-fast", "no such space"]),
    # flags
    "flag-num-samples-0": flag("--num-samples", "0", expect=["--num-samples must be >= 1"]),
    "flag-grace-beyond-budget": flag("--grace-period", "5", "--max-epochs", "3",
                                     expect=["--grace-period must be between 1 and --max-epochs (3)"]),
    "flag-keep-no-weights": flag("--keep-best", "0", expect=["--keep-best must be >= 1", "got 0"]),
    "flag-set-unknown-key": flag("--set", "colour=blue", expect=["--set colour", "not a config field"]),
    "flag-set-bad-value": flag("--set", "image_size=100", expect=["'image_size'", "multiple of 32"]),
    "flag-name-with-path": flag("--name", "../elsewhere", expect=["--name '../elsewhere'", "no path separators"]),
    "flag-gpus-on-a-cpu-machine": flag("--gpus-per-trial", "1", expect=["--gpus-per-trial 1", "0 GPU(s)"]),
    "flag-more-cpus-than-a-node": flag("--cpus-per-trial", "64", expect=["--cpus-per-trial 64",
                                                                          "no node has that many CPUs"]),
    # storage and experiments
    "storage-under-a-file": under_a_file,
    "storage-name-is-a-file": name_is_a_file,
    "storage-uri-with-credentials": flag("--storage-path", "s3://AKIAEXAMPLE:s3cr3t@bucket/sweeps",
                                         expect=["--storage-path s3://***@bucket/sweeps", "credentials"]),
    "storage-under-proc": flag("--storage-path", "/proc/nope",
                               expect=["--storage-path", "in /proc", f"/proc/nope/{NEW} cannot be written"]),
    "storage-under-sys": flag("--storage-path", "/sys/sweeps", expect=["--storage-path", "in /sys"]),
    "existing-experiment-without-resume": existing_name,
    "resume-of-nothing": resume_unknown,
    "resume-with-other-flags": resume_other_flags,
    "resume-legacy-with-other-flags": resume_legacy_other_flags,
    "resume-damaged-settings": resume_damaged_settings,
    "resume-damaged-saved-state": resume_damaged_commit,
    "resume-saved-by-other-ray": resume_saved_by({"state": 1, "ray": "2.59.0"}, [
        "--resume", "saved by Ray 2.59.0", "cannot read another version's saved state", "ray[default,tune]==2.59.0"]),
    "resume-saved-by-newer-project": resume_saved_by({"state": 99}, ["--resume", "state format 99", "update it"]),
    "report-of-no-experiment": lambda ctx: (["--report", str(ctx["tmp"])], ["--report", "no sweep.yaml"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_sweep_input_exits_2_naming_it_and_touches_nothing(case, pets_copy, storage, tmp_path, capsys):
    argv, expected = CASES[case]({"tmp": tmp_path, "data": pets_copy, "storage": storage})
    before = fingerprint(storage)
    base = ["--data-dir", str(pets_copy), "--space", "smoke", "--set", "image_size=64", "--storage-path",
            str(storage), "--name", NEW]
    code = tune_main(*base, *argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    assert "s3cr3t" not in err and "AKIAEXAMPLE" not in err
    assert fingerprint(storage) == before  # the earlier experiment, byte for byte and untouched
    assert not (storage / NEW).exists()
    import ray

    assert not ray.is_initialized()  # Ray, started beside the decoding, is shut down again when it finds a problem


@pytest.fixture
def read_only_storage(tmp_path):
    """A read-only mount (root writes anywhere else, whatever the permission bits say)."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_storage_on_a_read_only_mount_exits_2_before_any_work(pets_copy, read_only_storage, capsys):
    code = tune_main("--data-dir", str(pets_copy), "--space", "smoke", "--storage-path", str(read_only_storage))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"--storage-path: cannot create folders and files in {read_only_storage} (Read-only file system)" in err
    assert os.listdir(read_only_storage) == []


def test_all_data_problems_are_listed_at_once(pets_copy, storage, capsys):
    _, first = missing_image(pets_copy)
    _, second = trimap_value_7(pets_copy)
    _, third = truncated_jpeg(pets_copy)
    code = tune_main("--data-dir", str(pets_copy), "--space", "smoke", "--storage-path", str(storage))
    err = capsys.readouterr().err
    assert code == 2 and "3 problem(s) found" in err
    for text in first + second + third:
        assert text in err, (text, err)


@pytest.mark.slow
def test_the_real_process_exits_2_without_traceback(pets_root, storage, tmp_path):
    """Once through a real process: the exit code and stderr a shell sees."""
    shutil.copytree(pets_root, tmp_path / "pets")
    trimap_value_7(tmp_path / "pets")
    before = fingerprint(storage)
    proc = run_cli("tune_main.py", "--data-dir", str(tmp_path / "pets"), "--space", "smoke", "--storage-path",
                   str(storage), "--name", NEW)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: dataset") and "Traceback" not in proc.stderr
    assert fingerprint(storage) == before and os.listdir(storage) == [OTHER]


def test_a_broken_folder_of_ones_own_lists_every_problem_and_writes_nothing(tmp_path, storage, capsys):
    """Issue #35: images without masks, masks without images, a mask of another size, values that are neither a class
    nor 255, an unreadable image: one line each, exit 2, before Ray starts; the storage folder untouched."""
    import numpy as np
    from PIL import Image
    from test_generic_data import palette_png, write_dataset

    data = tmp_path / "mine"
    write_dataset(data, palette_png, n=8)
    (data / "classes.txt").write_text("background\npet\ntoy\n")
    (data / "masks" / "im0.png").unlink()  # an image without its mask
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "masks" / "stray.png")  # a mask without its image
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(data / "masks" / "im1.png")  # another size
    Image.fromarray(np.full((24, 32), 7, np.uint8), mode="L").save(data / "masks" / "im2.png")  # not a class
    (data / "images" / "im3.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    before = fingerprint(storage)
    code = tune_main("--data-dir", str(data), "--space", "smoke", "--storage-path", str(storage), "--name", NEW)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    for text in ("1 image(s) without a mask", "im0", "1 mask(s) without an image", "stray",
                 "im1.png: mask size 10x10 differs from its image's 32x24", "im2.png: values [7] are neither a class",
                 "im3.jpg: cannot be decoded as an image"):
        assert text in err, (text, err)
    assert fingerprint(storage) == before and sorted(os.listdir(storage)) == [OTHER]
