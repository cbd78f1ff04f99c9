"""One typed config for a training run: flags, YAML/JSON files and sweep trials all become a ``TrainConfig``.

Every value is checked in ``TrainConfig.from_dict`` and every problem found is reported at once, with the valid
choices listed, as a single ``UserError``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from segcore.cache import FACTS
from segcore.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "onecycle", "cyclic", "plateau")
LOSSES = ("bce", "dice", "focal", "jaccard", "dice+bce")
# what Oxford-IIIT Pet's trimap border band (value 3) becomes: "class" trains the trimap's three classes
BORDER_MODES = ("pet", "background", "ignore", "class")
PETS_CLASSES = ("background", "pet")
# the mask value of pixels neither trained on nor scored: a folder's 255, Pets' border band with border=ignore
# (MMSegmentation's and torchvision's VOC convention)
IGNORE_INDEX = 255
PETS_TRIMAP_CLASSES = ("background", "pet", "border")  # border=class
# "auto": bf16-mixed on GPUs that support bf16, 16-mixed on older GPUs, 32-true on the CPU (segcore.train)
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
DATA_PATHS = ("auto", "device", "loader")
WEIGHTS_KEYWORDS = ("imagenet", "none")  # anything else must be a path to a state-dict file


# What SMP (and timm) accept is asked of the libraries once per installed version and kept (segcore.cache): a
# config is then validated without importing them, which is 1.5-2 s of a sweep driver's start.
def architectures() -> list[str]:
    def ask() -> list[str]:
        import segmentation_models_pytorch as smp

        return sorted(smp.MODEL_ARCHITECTURES_MAPPING)

    return FACTS.get("architectures", ask)


def smp_encoders() -> list[str]:
    def ask() -> list[str]:
        import segmentation_models_pytorch as smp

        return list(smp.encoders.get_encoder_names())

    return FACTS.get("encoders", ask)


def is_known_encoder(name: str) -> bool:
    """SMP's own encoders, plus any timm model as ``tu-<timm name>`` (SMP's timm-universal encoder)."""
    if name.startswith("tu-"):
        def ask() -> bool:
            import timm

            return bool(timm.is_model(name[3:]))

        return FACTS.get(f"timm model {name[3:]}", ask)
    return name in smp_encoders()


def encoder_weight_names(encoder: str) -> list[str]:
    """The pretrained weights SMP has for one of its own encoders."""
    def ask() -> list[str]:
        import segmentation_models_pytorch as smp

        return list(smp.encoders.encoders[encoder]["pretrained_settings"])

    return FACTS.get(f"weights of {encoder}", ask)


@dataclass
class TrainConfig:
    # model
    arch: str = "fpn"
    encoder: str = "resnet34"
    encoder_weights: str = "imagenet"  # "imagenet", "none", another SMP weight name, or a state-dict file
    freeze_encoder: bool = False
    freeze_decoder: bool = False
    freeze_head: bool = False
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd and rmsprop only
    scheduler: str = "cosine"
    step_size: int = 3  # "step": epochs between decays
    gamma: float = 0.1  # LR decay: per "step", over the whole run for "exponential", per "plateau" reduction
    plateau_patience: int = 2
    loss: str = "dice"
    batch_size: int = 32
    epochs: int = 10
    # data
    data_dir: str = "data"
    image_size: int = 256
    val_fraction: float = 0.1  # Pets: of trainval; a generic layout without split files or folders: of all pairs
    test_fraction: float = 0.2  # a generic layout without split files or folders: the test split's share
    border: str = "pet"
    # the classes' names, class i first-to-last; None: Oxford-IIIT Pet's (by ``border``). A generic layout's come from
    # its data (segcore.data.generic), set by whoever checked it, so a checkpoint's config knows its classes
    classes: Optional[list[str]] = None
    num_workers: int = 0  # loader processes: batches are copies from the decoded cache, workers only add IPC
    # run
    seed: int = 42
    precision: str = "auto"  # mixed precision where the GPU has it; full precision on the CPU
    accelerator: str = "auto"
    devices: str = "auto"  # Lightning's devices: "auto", a count ("2") or a list ("0,1")
    channels_last: Optional[bool] = None  # NHWC memory format (tensor-core GPUs); None: on a GPU only
    data_path: str = "auto"  # batches from the host loader, or cut on the device (segcore.data.device_batches);
    #                          auto: on a GPU when the split fits in a quarter of its memory
    compile: bool = False  # torch.compile the network (GPU runs; adds start-up time)

    # ----- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build and validate; unknown keys, wrong types and bad values are all reported together."""
        return build_checked(cls, values, source)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "TrainConfig":
        return cls.from_dict(read_mapping(path), source=str(path))

    def replace(self, source: str = "config", **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Union[str, os.PathLike]) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ----- validation ---------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        p: list[str] = []

        def choice(key: str, valid) -> None:
            value = getattr(self, key)
            if value not in valid:
                p.append(f"key '{key}': '{value}' is not one of: {', '.join(valid)}")

        if self.arch not in architectures():
            p.append(f"key 'arch': '{self.arch}' is not one of: {', '.join(architectures())}")
        if not is_known_encoder(self.encoder):
            p.append(
                f"key 'encoder': '{self.encoder}' is not an SMP encoder ({', '.join(smp_encoders())}) "
                "nor 'tu-<timm model name>'"
            )
        else:
            p += self._weights_problems()
        choice("optimizer", OPTIMIZERS)
        choice("scheduler", SCHEDULERS)
        choice("loss", LOSSES)
        choice("border", BORDER_MODES)
        choice("precision", PRECISIONS)
        choice("accelerator", ACCELERATORS)
        choice("data_path", DATA_PATHS)
        if self.freeze_encoder and self.freeze_decoder and self.freeze_head:
            p.append("keys 'freeze_encoder', 'freeze_decoder', 'freeze_head': all three frozen leaves nothing to train")
        if not (math.isfinite(self.lr) and self.lr > 0):
            p.append(f"key 'lr': must be a positive number, got {self.lr}")
        if not 0 < self.gamma < 1:
            p.append(f"key 'gamma': must be between 0 and 1 (exclusive), got {self.gamma}")
        for key in ("weight_decay", "momentum"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                p.append(f"key '{key}': must be >= 0, got {getattr(self, key)}")
        for key in ("batch_size", "epochs", "step_size"):
            if getattr(self, key) < 1:
                p.append(f"key '{key}': must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0 or self.plateau_patience < 0:
            p.append("keys 'num_workers' and 'plateau_patience' must be >= 0")
        if self.image_size < 32 or self.image_size % 32:
            p.append(f"key 'image_size': must be a multiple of 32 and >= 32 (SMP encoders downsample 32x), "
                     f"got {self.image_size}")
        if not 0 < self.val_fraction < 1:
            p.append(f"key 'val_fraction': must be between 0 and 1 (exclusive), got {self.val_fraction}")
        elif not (0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            p.append(f"key 'test_fraction': must be >= 0 and leave images to train on beside val_fraction "
                     f"{self.val_fraction}, got {self.test_fraction}")
        if self.classes is not None:
            p += classes_problems(self.classes)
        if not _valid_devices(self.devices):
            p.append(f"key 'devices': '{self.devices}' is not 'auto', a count like '2' or a list like '0,1'")
        if not any(k in m for m in p for k in ("'arch'", "'encoder'", "'image_size'")):
            problem = model_problem(self.arch, self.encoder, self.image_size)
            if problem:
                p.append(problem)
        return p

    def _weights_problems(self) -> list[str]:
        w = self.encoder_weights
        if w in WEIGHTS_KEYWORDS:
            return []
        if self.encoder.startswith("tu-"):
            # timm picks its pretrained variant from the name ("tu-resnet18.a1_in1k"), not from a weights name
            if not Path(w).is_file():
                return [f"key 'encoder_weights': '{w}' is neither 'imagenet', 'none' nor an existing file"]
            return []
        named = encoder_weight_names(self.encoder)
        if w in named or Path(w).is_file():
            return []
        return [f"key 'encoder_weights': '{w}' is not a file nor one of {', '.join(['none', *named])} "
                f"for encoder '{self.encoder}'"]

    @property
    def class_names(self) -> list[str]:
        if self.classes is not None:
            return list(self.classes)
        return list(PETS_TRIMAP_CLASSES if self.border == "class" else PETS_CLASSES)

    @property
    def num_classes(self) -> int:
        """2: one logit, sigmoid (binary); more: one logit per class, softmax."""
        return len(self.class_names)

    @property
    def frozen_parts(self) -> list[str]:
        return [part for part in ("encoder", "decoder", "head") if getattr(self, f"freeze_{part}")]


def model_problem(arch: str, encoder: str, image_size: int) -> Optional[str]:
    """Build the network on PyTorch's meta device (no memory, no weights) and run one forward at ``image_size``:
    catches encoders an architecture does not support and sizes too small for its pooling, in ~0.1 s (once per
    installed version: segcore.cache)."""
    def ask() -> Optional[str]:
        import segmentation_models_pytorch as smp
        import torch

        try:
            with torch.device("meta"):
                model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None).eval()
                model(torch.empty(1, 3, image_size, image_size))
        except (ValueError, RuntimeError, AssertionError, KeyError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            return (f"keys 'arch', 'encoder', 'image_size': {arch} with encoder {encoder} at {image_size}px "
                    f"does not build or run: {first}")
        return None

    return FACTS.get(f"builds {arch} {encoder} {image_size}", ask)


def classes_problems(classes: list[str]) -> list[str]:
    if not 2 <= len(classes) <= 255:
        return [f"key 'classes': {len(classes)} names; a segmentation has 2 to 255 classes (255 is ignore)"]
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        return [f"key 'classes': name(s) given twice: {', '.join(repeated)}"]
    return []


def _valid_devices(devices: str) -> bool:
    if devices == "auto":
        return True
    parts = [s.strip() for s in devices.strip("[]").split(",") if s.strip()]
    return bool(parts) and all(s.lstrip("-").isdigit() for s in parts)


def build_checked(cls, values: Mapping[str, Any], source: str, label=lambda key: f"key '{key}'",
                  ignored: frozenset = frozenset()):
    """An instance of the dataclass ``cls`` (with a ``problems()`` method) from ``values``: unknown keys (but
    ``ignored`` ones), values of the wrong type and bad values are all reported together, as one UserError titled
    with ``source``; ``label`` names a key in a message."""
    known = {f.name for f in fields(cls)}
    problems = [f"unknown key '{k}' (valid keys: {', '.join(sorted(known))})" for k in values
                if k not in known and k not in ignored]
    kwargs, hints = {}, get_type_hints(cls)
    for key, value in values.items():
        if key in known:
            try:
                kwargs[key] = coerce(value, hints[key])
            except (TypeError, ValueError) as err:
                problems.append(f"{label(key)}: {err}")
    built = cls(**kwargs)  # the keys that converted, over the defaults: their values can still be checked
    problems += built.problems()
    if problems:
        raise UserError(f"invalid {source}:", problems)
    return built


def coerce(value: Any, hint: Any) -> Any:
    """Convert YAML / flag values to the field's type; reject what does not convert exactly."""
    if get_origin(hint) is Union:  # Optional[...]
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = args[0]
    if get_origin(hint) is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
            return list(value)
        raise TypeError(f"expected a list of names, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            try:
                return int(value)
            except ValueError:
                pass
        raise TypeError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if value is None:
            return "none"
        raise TypeError(f"expected a string, got {value!r}")
    return value


def read_mapping(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read a YAML or JSON file of config keys. YAML is loaded safely: no Python objects are constructed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path}: not found")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise UserError(f"config file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of config keys, got {type(data).__name__}")
    return data
