"""What SMP accepts, kept per installed version (segcore.cache), and a sweep driver that imports neither torch nor
Lightning before its Ray starts (issue #14: the start-up of a sweep).

Each check runs in a fresh interpreter: whether a module was imported is a property of a whole process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segcore.data.pets import read_split

pytestmark = pytest.mark.xdist_group("test_library_facts")  # a module-scoped fixture: one worker

REPO = Path(__file__).resolve().parents[1]

# a space of every kind of value the validation asks SMP about: architectures, encoders (SMP's and timm's), weight
# names, and one arch x encoder x size that does not build
CHECK_CONFIGS = """
import json, sys
from segcore.config import TrainConfig
from segcore.errors import UserError
answers = []
for values in [dict(arch="unet", encoder="resnet18", encoder_weights="none", image_size=64),
               dict(arch="fpn", encoder="tu-resnet18", encoder_weights="none", image_size=64),
               dict(arch="unet", encoder="resnet18", encoder_weights="imagenet", image_size=64),
               dict(arch="unet", encoder="resnet18", encoder_weights="instagram", image_size=64),
               dict(arch="unet", encoder="resnet1000", encoder_weights="none"),
               dict(arch="unetttt", encoder="resnet18", encoder_weights="none"),
               dict(arch="fpn", encoder="tu-not_a_timm_model", encoder_weights="none"),
               dict(arch="pan", encoder="resnet18", encoder_weights="none", image_size=32)]:
    try:
        TrainConfig.from_dict(values)
        answers.append(None)
    except UserError as err:
        answers.append(err.problems)
print(json.dumps({"answers": answers, "smp_imported": "segmentation_models_pytorch" in sys.modules,
                  "torch_imported": "torch" in sys.modules}))
"""


def run_python(code: str, cache: Path) -> dict:
    env = {**os.environ, "SEGCORE_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def asked(tmp_path_factory) -> tuple[dict, Path]:
    """One interpreter that found nothing known and asked SMP: its answers, and the cache folder it kept them in
    (read-only for tests: ``cache_copy`` gives a test one of its own)."""
    cache = tmp_path_factory.mktemp("asked") / "cache"
    return run_python(CHECK_CONFIGS, cache), cache


@pytest.fixture
def cache_copy(asked, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(asked[1], tmp_path / "cache"))


def test_validation_asks_smp_once_per_version_then_reads_the_same_answers(asked, cache_copy):
    first = asked[0]
    assert first["smp_imported"]  # nothing known yet: SMP answers
    facts = list(cache_copy.glob("library-facts-*.json"))
    assert len(facts) == 1
    second = run_python(CHECK_CONFIGS, cache_copy)
    assert not second["smp_imported"] and not second["torch_imported"]
    assert second["answers"] == first["answers"]
    # and the answers are SMP's own: valid configs pass, each bad one is refused for its own reason
    valid, timm_valid, imagenet, bad_weights, bad_encoder, bad_arch, bad_timm, too_small = first["answers"]
    assert valid is None and timm_valid is None and imagenet is None
    assert "'encoder_weights'" in bad_weights[0] and "imagenet" in bad_weights[0]
    assert "'encoder'" in bad_encoder[0] and "resnet1000" in bad_encoder[0]
    assert "'arch'" in bad_arch[0] and "unetttt" in bad_arch[0]
    assert "tu-not_a_timm_model" in bad_timm[0]
    assert "does not build or run" in too_small[0] and "pan with encoder resnet18 at 32px" in too_small[0]


def test_another_installed_version_asks_smp_again(cache_copy):
    """The file is named by the versions of SMP, timm and torch: a version seen for the first time is asked."""
    cache = cache_copy
    code = """
import importlib.metadata as metadata
real = metadata.version
metadata.version = lambda name: "0.0.1" if name == "timm" else real(name)  # as if another timm were installed
""" + CHECK_CONFIGS
    again = run_python(code, cache)
    assert again["smp_imported"]
    assert len(list(cache.glob("library-facts-*.json"))) == 2


def test_an_unwritable_cache_only_costs_time(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        if os.access(cache, os.W_OK):  # root ignores the mode: a file where the folder should be instead
            cache.chmod(0o700)
            cache.rmdir()
            cache.write_text("not a folder")
        first = run_python(CHECK_CONFIGS, cache)
        second = run_python(CHECK_CONFIGS, cache)
    finally:
        if cache.is_dir():
            cache.chmod(0o700)
    assert first["smp_imported"] and second["smp_imported"]  # asked each time: nothing could be kept
    assert second["answers"] == first["answers"] and first["answers"][0] is None


def test_a_damaged_facts_file_is_asked_again_and_replaced(asked, cache_copy):
    cache, good = cache_copy, asked[0]
    facts = next(cache.glob("library-facts-*.json"))
    facts.write_text('{"facts": {"architectures": ')  # a file cut short
    again = run_python(CHECK_CONFIGS, cache)
    assert again["smp_imported"] and again["answers"] == good["answers"]
    assert "architectures" in json.loads(facts.read_text())["facts"]


def test_the_sweep_driver_prepares_a_sweep_without_torch_or_lightning(tmp_path, pets_root, cache_copy):
    """Everything the driver does before Tuner.fit on a space of untrained encoders: validate the space, check and
    decode the data, hand Tune the trainable. None of it may import torch, Lightning or SMP (4-5 s that would come
    before the trials' start): a top-level import of one of them in these modules fails this test."""
    space = tmp_path / "space.yaml"
    space.write_text("# test\narch: unet\nencoder: resnet18\nencoder_weights: none\nimage_size: 64\n"
                     "lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    load = f"from segtune.spaces import load_space\nspace = load_space({str(space)!r}, {{}}, 'optuna')\n"
    cache = cache_copy  # SMP asked once already (this space's arch, encoder and size among its questions)
    code = load.replace("from segtune.spaces", "import segtune.driver, segtune.trainable\nfrom segtune.spaces") + f"""
import json, sys
from pathlib import Path
from segtune import prepare
from segtune.assets import build_assets
configs = prepare.candidate_configs(space, prepare.base_config(space, Path({str(pets_root)!r}), 2))
assets, tests, notes, classes = build_assets(configs)
print(json.dumps({{"heavy": sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "pytorch_lightning",
                  "lightning", "segmentation_models_pytorch", "timm", "torchvision"}}),
                  "decoded": {{str(k): len(v) for k, v in assets.decoded.items()}}, "notes": notes}}))
"""
    out = run_python(code, cache)
    assert out["heavy"] == []
    trainval, _ = read_split(pets_root, "trainval")
    assert out["decoded"] == {"64": len(trainval)}  # the data checked and decoded all the same
    assert any("weights resnet18: none" in n for n in out["notes"])
