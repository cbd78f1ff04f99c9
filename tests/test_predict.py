"""The prediction CLI and ``predict_paths`` with a really trained (1-epoch) checkpoint: outputs, skips, exit codes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_ENCODER, run_cli

pytestmark = pytest.mark.xdist_group("test_predict")  # a module-scoped fixture: one worker

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, experiment folder, generated dataset root) from one real 1-epoch training run."""
    from segcore.synthetic import generate
    from segcore.train import main as train_main

    base = tmp_path_factory.mktemp("predict")
    root = generate(base / "pets", num=12, seed=0, min_size=64, max_size=96)
    out = base / "train"
    code = train_main(["--data_dir", str(root), "--output_dir", str(out), "--encoder", SMALL_ENCODER,
                       "--encoder_weights", "none", "--image_size", str(IMAGE_SIZE), "--batch_size", "4",
                       "--epochs", "1", "--num_workers", "0", "--accelerator", "cpu"])
    assert code == 0
    checkpoint = Path(json.loads((out / "metrics.json").read_text())["best_checkpoint"])
    assert checkpoint.is_file()
    experiment = base / "experiment"
    experiment.mkdir()
    (experiment / "summary.json").write_text(json.dumps({"best_checkpoint": str(checkpoint)}))
    return checkpoint, experiment, root


@pytest.fixture(scope="module")
def module(trained):
    from segcore.model import SegmentationModule

    return SegmentationModule.from_checkpoint(str(trained[0]))


def predict(*argv: str) -> int:
    """``segcore.predict.main`` in-process; argparse's own exits are returned as their code."""
    from segcore.predict import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def generated(root: Path, n: int) -> list[Path]:
    return sorted((root / "images").glob("*.jpg"))[:n]


@pytest.fixture
def inputs(trained, tmp_path) -> dict[str, Path]:
    """Two single files, a folder with a grayscale PNG, an RGBA PNG and one JPEG whose stem clashes with a file."""
    _, _, root = trained
    a, b, c, d = generated(root, 4)
    files = tmp_path / "files"
    folder = tmp_path / "folder"
    files.mkdir()
    folder.mkdir()
    shutil.copy(a, files / "pet.jpg")
    shutil.copy(b, files / "other.jpg")
    Image.open(c).convert("L").save(folder / "gray.png")
    Image.open(d).convert("RGBA").save(folder / "alpha.png")
    shutil.copy(b, folder / "pet.jpg")  # same stem as files/pet.jpg
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    return {"pet": files / "pet.jpg", "other": files / "other.jpg", "folder": folder}


def assert_outputs(out: Path, stem: str, source: Path) -> None:
    with Image.open(source) as img:
        size = img.size
    with Image.open(out / f"{stem}_mask.png") as mask:
        assert mask.mode == "L" and mask.size == size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    with Image.open(out / f"{stem}_overlay.png") as over:
        assert over.mode == "RGB" and over.size == size


def test_masks_and_overlays_match_each_inputs_size_and_mode(trained, inputs, tmp_path, capsys):
    checkpoint, _, _ = trained
    out = tmp_path / "out"
    code = predict("--checkpoint", checkpoint, inputs["pet"], inputs["other"], inputs["folder"], "--out", out,
                   "--batch-size", "2", "--device", "cpu")
    assert code == 0
    folder = inputs["folder"]
    sizes = set()
    for stem, source in [("pet", inputs["pet"]), ("other", inputs["other"]), ("gray", folder / "gray.png"),
                         ("alpha", folder / "alpha.png"), ("pet-2", folder / "pet.jpg")]:
        assert_outputs(out, stem, source)
        sizes.add(Image.open(source).size)
    assert len(sizes) > 1, "the generated inputs should come in different sizes"
    assert len(list(out.iterdir())) == 10  # 5 images x (mask, overlay); notes.txt is not an image
    captured = capsys.readouterr()
    assert "cpu" in captured.out and str(checkpoint) in captured.out


def test_overlay_tints_the_mask_and_keeps_the_background(trained, inputs, tmp_path):
    checkpoint, _, _ = trained
    out = tmp_path / "out"
    assert predict("--checkpoint", checkpoint, inputs["pet"], "--out", out, "--threshold", "0.3") == 0
    mask = np.asarray(Image.open(out / "pet_mask.png")) == 255
    original = np.asarray(Image.open(inputs["pet"]).convert("RGB"))
    tinted = np.asarray(Image.open(out / "pet_overlay.png"))
    assert np.array_equal(tinted[~mask], original[~mask])
    assert np.all(tinted[mask][:, 0].astype(int) >= original[mask][:, 0] // 2)  # red channel kept >= half


def test_unreadable_images_are_skipped_listed_and_exit_1(trained, inputs, tmp_path, capsys):
    checkpoint, _, root = trained
    folder = inputs["folder"]
    jpeg = generated(root, 1)[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "text.jpg").write_text("hello, I am not a JPEG\n")
    out = tmp_path / "out"
    code = predict("--checkpoint", checkpoint, folder, "--out", out)
    assert code == 1
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s):" in err
    assert "truncated.jpg" in err and "text.jpg" in err
    assert "predict: 100%" in err  # the progress bar, on stderr
    for stem, name in [("gray", "gray.png"), ("alpha", "alpha.png"), ("pet", "pet.jpg")]:
        assert_outputs(out, stem, folder / name)
    assert not (out / "truncated_mask.png").exists() and not (out / "text_mask.png").exists()


def test_nothing_readable_exits_2(trained, tmp_path, capsys):
    checkpoint, _, root = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    jpeg = generated(root, 1)[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[:200])
    (bad / "text.jpg").write_text("plain text")
    assert predict("--checkpoint", checkpoint, bad, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s):" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_experiment_folder_predicts_like_its_checkpoint(trained, inputs, tmp_path):
    checkpoint, experiment, _ = trained
    assert predict("--checkpoint", checkpoint, inputs["pet"], "--out", tmp_path / "a") == 0
    assert predict("--experiment", experiment, inputs["pet"], "--out", tmp_path / "b") == 0
    assert (tmp_path / "a" / "pet_mask.png").read_bytes() == (tmp_path / "b" / "pet_mask.png").read_bytes()


def test_missing_checkpoint_exits_2_naming_it_without_traceback(trained, inputs, tmp_path):
    missing = tmp_path / "nowhere" / "best.ckpt"
    proc = run_cli("-m", "segcore.predict", "--checkpoint", str(missing), str(inputs["pet"]),
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("summary, expected", [
    (None, "summary.json not found"),
    ({"trials": 3}, "no 'best_checkpoint'"),
    ({"best_checkpoint": "/no/such/checkpoint.ckpt"}, "/no/such/checkpoint.ckpt"),
])
def test_broken_experiment_folder_exits_2_naming_the_path(inputs, tmp_path, capsys, summary, expected):
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    if summary is not None:
        (experiment / "summary.json").write_text(json.dumps(summary))
    assert predict("--experiment", experiment, inputs["pet"], "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert expected in err and str(experiment) in err


@pytest.mark.parametrize("flags, expected", [
    (["--threshold", "0"], "--threshold"),
    (["--threshold", "1.5"], "--threshold"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_flags_exit_2(trained, inputs, tmp_path, capsys, flags, expected):
    assert predict("--checkpoint", trained[0], inputs["pet"], "--out", tmp_path / "out", *flags) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_as_a_file_and_no_inputs_exit_2(trained, inputs, tmp_path, capsys):
    checkpoint = trained[0]
    as_file = tmp_path / "out.txt"
    as_file.write_text("x")
    assert predict("--checkpoint", checkpoint, inputs["pet"], "--out", as_file) == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict("--checkpoint", checkpoint, empty, "--out", tmp_path / "out") == 2
    assert "no images found" in capsys.readouterr().err
    assert predict("--checkpoint", checkpoint, tmp_path / "missing.jpg", "--out", tmp_path / "out") == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_prediction_equals_direct_evaluation(module, trained, tmp_path):
    from segcore.predict import predict_paths

    _, _, root = trained
    source = tmp_path / "square.png"  # already at the model's size, lossless: the model sees exactly these pixels
    Image.open(generated(root, 1)[0]).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)).save(source)
    x = torch.from_numpy(np.array(Image.open(source))).permute(2, 0, 1)[None]
    with torch.inference_mode():
        probs = module(x).sigmoid()
    # a threshold that splits this image (so the comparison is not all-0), in the widest gap between the middle
    # half of its probabilities: no pixel lies within rounding error of it
    values = probs.flatten().sort().values
    lo, hi = values.numel() // 4, 3 * values.numel() // 4
    i = lo + int((values[lo + 1:hi] - values[lo:hi - 1]).argmax())
    threshold = float(values[i] + values[i + 1]) / 2
    assert 0.0 < threshold < 1.0
    expected = (probs > threshold)[0, 0].numpy()
    assert 0 < expected.sum() < expected.size
    written, skipped = predict_paths(module, [source], tmp_path / "out", threshold=threshold, batch_size=1,
                                     progress=False)
    assert skipped == []
    assert written == [tmp_path / "out" / "square_mask.png", tmp_path / "out" / "square_overlay.png"]
    assert np.array_equal(np.asarray(Image.open(written[0])) == 255, expected)


def test_existing_outputs_are_never_overwritten(trained, inputs, tmp_path, capsys):
    checkpoint, _, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "other_mask.png"
    existing.write_bytes(b"precious")
    code = predict("--checkpoint", checkpoint, inputs["pet"], inputs["other"], "--out", out)
    assert code == 2
    err = capsys.readouterr().err
    assert str(existing) in err and "Traceback" not in err
    assert existing.read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["other_mask.png"]  # refused before writing anything


def test_name_clashes_get_distinct_stems():
    from segcore.predict import output_stems

    paths = [Path("a/cat.jpg"), Path("b/cat.png"), Path("c/Cat.jpg"), Path("d/cat-2.jpg"), Path("e/dog.jpg")]
    assert output_stems(paths) == ["cat", "cat-3", "Cat-4", "cat-2", "dog"]
