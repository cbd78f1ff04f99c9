"""Bad user input through the real training CLI: exit code 2, one clear message naming the problem, nothing written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_ENCODER, run_cli

ARGS = ["--encoder", SMALL_ENCODER, "--encoder_weights", "none", "--image_size", "64", "--epochs", "1",
        "--num_workers", "0", "--accelerator", "cpu"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCORE_CACHE_DIR", str(tmp_path / "decode-cache"))


def train_main(*argv: str) -> int:
    """``segcore.train.main`` in-process; argparse's own exits are returned as their code."""
    from segcore.train import main

    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code


def listed(root: Path, split: str) -> list[str]:
    return [line.split()[0] for line in (root / "annotations" / f"{split}.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def image(root: Path, name: str) -> Path:
    return root / "images" / f"{name}.jpg"


def trimap(root: Path, name: str) -> Path:
    return root / "annotations" / "trimaps" / f"{name}.png"


# ----- damage: each takes the private dataset copy, returns (--data_dir to pass, strings stderr must contain) -----

def missing_data_dir(root: Path):
    return root.parent / "no-such-data", ["no-such-data", "not found"]


def missing_split_file(root: Path):
    (root / "annotations" / "test.txt").unlink()
    return root, ["test.txt", "split file not found"]


def missing_image(root: Path):
    name = listed(root, "trainval")[3]
    image(root, name).unlink()
    return root, [f"{name}.jpg", "listed in a split file but missing"]


def truncated_jpeg(root: Path):
    name = listed(root, "test")[2]
    data = image(root, name).read_bytes()
    image(root, name).write_bytes(data[: len(data) // 2])
    return root, [f"{name}.jpg", "cannot be decoded", "truncated"]


def missing_trimap(root: Path):
    name = listed(root, "trainval")[1]
    trimap(root, name).unlink()
    return root, [f"{name}.png", "trimap missing"]


def trimap_value_7(root: Path):
    name = listed(root, "trainval")[2]
    values = np.asarray(Image.open(trimap(root, name))).copy()
    values[: values.shape[0] // 4] = 7
    Image.fromarray(values).save(trimap(root, name))
    return root, [f"{name}.png", "[7]", "outside {1, 2, 3}"]


def trimap_of_other_size(root: Path):
    name = listed(root, "test")[0]
    values = np.asarray(Image.open(trimap(root, name)))
    Image.fromarray(values[:-5, :-3]).save(trimap(root, name))
    return root, [f"{name}.png", "differs from its image"]


def split_line(bad_name: str) -> Callable[[Path], tuple]:
    def damage(root: Path):
        with open(root / "annotations" / "trainval.txt", "a") as f:
            f.write(f"{bad_name} 1 1 1\n")
        return root, ["trainval.txt", f"'{bad_name}'", "path separator or '..'"]

    return damage


def split_file_utf16(root: Path):
    """A split file re-saved as UTF-16 (what Windows Notepad writes): still bad user input, not a crash."""
    path = root / "annotations" / "trainval.txt"
    path.write_bytes(path.read_text().encode("utf-16"))
    return root, ["trainval.txt"]


CASES = [
    pytest.param(missing_data_dir, id="missing-data-dir"),
    pytest.param(missing_split_file, id="missing-split-file"),
    pytest.param(missing_image, id="listed-image-missing"),
    pytest.param(truncated_jpeg, id="truncated-jpeg"),
    pytest.param(missing_trimap, id="missing-trimap"),
    pytest.param(trimap_value_7, id="trimap-value-7"),
    pytest.param(trimap_of_other_size, id="trimap-size-differs"),
    pytest.param(split_line("../etc/passwd"), id="split-line-parent-path"),
    pytest.param(split_line("sub/dir_1"), id="split-line-subdir"),
    pytest.param(split_line("sub\\dir_1"), id="split-line-backslash"),
    pytest.param(split_line(".."), id="split-line-dotdot"),
    pytest.param(split_file_utf16, id="split-file-not-utf8"),
]


@pytest.mark.parametrize("damage", CASES)
def test_bad_data_exits_2_naming_the_problem(damage, pets_copy, tmp_path, capsys):
    data_dir, expected = damage(pets_copy)
    out = tmp_path / "out"
    code = train_main("--data_dir", str(data_dir), "--output_dir", str(out), *ARGS)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err
    assert not out.exists()  # nothing created before the data was found bad


# ----- several problems in one run -------------------------------------------------------------------------------

def _both_in_trainval(root: Path):
    _, a = missing_image(root)
    _, b = trimap_value_7(root)
    return a + b


def _split_line_and_missing_trimap(root: Path):
    _, a = split_line("../etc/passwd")(root)
    _, b = missing_trimap(root)
    return a + [b[0], "missing"]


def _bad_trimap_in_trainval_and_truncated_jpeg_in_test(root: Path):
    _, a = trimap_value_7(root)
    _, b = truncated_jpeg(root)  # a test-split image
    return a + b


def _split_line_and_truncated_jpeg(root: Path):
    _, a = split_line("sub/dir_1")(root)
    _, b = truncated_jpeg(root)
    return a + b


@pytest.mark.parametrize("damage", [
    pytest.param(_both_in_trainval, id="missing-image+trimap-value"),
    pytest.param(_split_line_and_missing_trimap, id="split-line+missing-trimap"),
    pytest.param(_bad_trimap_in_trainval_and_truncated_jpeg_in_test, id="trimap-value+truncated-jpeg-in-test"),
    pytest.param(_split_line_and_truncated_jpeg, id="split-line+truncated-jpeg"),
])
def test_two_problems_both_reported_in_one_run(damage, pets_copy, tmp_path, capsys):
    expected = damage(pets_copy)
    out = tmp_path / "out"
    code = train_main("--data_dir", str(pets_copy), "--output_dir", str(out), *ARGS)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "2 problem(s) found" in err
    assert err.count("\n  - ") == 2
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err and not out.exists()


def test_problems_beyond_50_are_counted_not_all_listed(pets_copy, tmp_path, capsys):
    with open(pets_copy / "annotations" / "trainval.txt", "a") as f:
        f.writelines(f"dir/bad_{i} 1 1 1\n" for i in range(60))
    code = train_main("--data_dir", str(pets_copy), "--output_dir", str(tmp_path / "out"), *ARGS)
    err = capsys.readouterr().err
    assert code == 2
    assert "60 problem(s) found (first 50 listed)" in err
    assert err.count("\n  - ") == 50 and "dir/bad_49" in err and "dir/bad_50" not in err


# ----- output dir and flags --------------------------------------------------------------------------------------

def test_non_empty_output_dir_refused_and_untouched(pets_root, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    keep = {out / "metrics.json": b'{"precious": true}', out / "checkpoints" / "best.ckpt": b"weights"}
    for path, data in keep.items():
        path.write_bytes(data)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    code = train_main("--data_dir", str(pets_root), "--output_dir", str(out), *ARGS)
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(out) in err and "already holds files" in err and "Traceback" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    for path, data in keep.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == 1_000_000_000


def test_output_dir_that_is_a_file_refused(pets_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    code = train_main("--data_dir", str(pets_root), "--output_dir", str(out), *ARGS)
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err and "Traceback" not in err
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("flag, value, expected", [
    pytest.param("--optimizer", "nadam", ["'optimizer'", "'nadam'", "sgd, adam, adamw, adagrad, rmsprop"],
                 id="optimizer-nadam"),
    pytest.param("--lr", "-1", ["'lr'", "must be a positive number", "-1"], id="lr-negative"),
    pytest.param("--border", "edge", ["'border'", "'edge'", "pet, background, ignore"], id="border-edge"),
    pytest.param("--loss", "mse", ["'loss'", "'mse'", "bce, dice, focal, jaccard, dice+bce"], id="loss-mse"),
    pytest.param("--image_size", "100", ["'image_size'", "multiple of 32", "100"], id="image-size-100"),
    pytest.param("--epochs", "two", ["--epochs", "invalid int value", "'two'"], id="epochs-not-int"),
])
def test_bad_flag_value_exits_2_naming_key(flag, value, expected, pets_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = train_main("--data_dir", str(pets_root), "--output_dir", str(out), *ARGS, flag, value)
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err and not out.exists()


# ----- the real process ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_process_exits_2_without_traceback_on_bad_data(pets_copy, tmp_path):
    _, expected = trimap_value_7(pets_copy)
    out = tmp_path / "out"
    proc = run_cli("-m", "segcore.train", "--data_dir", str(pets_copy), "--output_dir", str(out), *ARGS,
                   timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: dataset" in proc.stderr
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr)
    assert not out.exists()
