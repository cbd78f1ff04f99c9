"""Pretrained encoder weights without hanging on the network.

SMP 0.6 fetches encoder weights from the Hugging Face hub inside ``create_model``; offline, every call retries for
about 24 s before failing. Here we look in the local HF cache first and, when the weights are there, build the model
with the hub switched to offline mode so nothing is contacted. When they are not cached, one short connection probe
decides within seconds whether a download can work at all.

Pre-fetch on a machine with internet:  ``python -m segcore.weights resnet34 tu-resnet18`` (fills the HF cache, which
you can copy to ``$HF_HOME`` elsewhere), or pass a state-dict file as ``encoder_weights``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

import torch

from segcore.errors import UserError, cli_entry

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 4.0
HOW_TO_FIX = (
    "pre-fetch them on a machine with internet (`python -m segcore.weights {encoder}`) and copy the Hugging Face "
    "cache ($HF_HOME, default ~/.cache/huggingface) here, pass a state-dict file as encoder_weights, "
    "or use encoder_weights=none"
)


def _hub_files(encoder: str, weights: str) -> list[tuple[str, str, Optional[str]]]:
    """(repo_id, filename, revision) candidates holding the weights; empty when they are not on the hub."""
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return []
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
        return [(repo, n, None) for n in names + ["model.safetensors", "pytorch_model.bin"]]
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[encoder]["pretrained_settings"][weights]
    return [(settings["repo_id"], "model.safetensors", settings["revision"])]


def is_cached(encoder: str, weights: str = "imagenet") -> bool:
    from huggingface_hub import try_to_load_from_cache

    for repo, filename, revision in _hub_files(encoder, weights):
        hit = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(hit, str) and os.path.exists(hit):
            return True
    return False


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its cache only (it reads this flag on every request)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_model(arch: str, encoder: str, encoder_weights: str, classes: int = 1) -> torch.nn.Module:
    """``smp.create_model`` with ``encoder_weights`` = 'imagenet' / another SMP weight name / 'none' / a file."""
    import segmentation_models_pytorch as smp

    if encoder_weights == "none":
        return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=classes)
    if Path(encoder_weights).is_file():
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=classes)
        load_encoder_file(model, Path(encoder_weights))
        return model
    hub_name = True if encoder.startswith("tu-") else encoder_weights  # timm takes a bool, SMP a weights name
    if is_cached(encoder, encoder_weights):
        log.info("encoder weights %s/%s: loading from the local Hugging Face cache", encoder, encoder_weights)
        with hub_offline():
            return smp.create_model(arch, encoder_name=encoder, encoder_weights=hub_name, classes=classes)
    if not hub_reachable():
        raise UserError(
            f"encoder_weights '{encoder_weights}' for encoder '{encoder}': not in the local cache and the "
            f"Hugging Face hub cannot be reached (offline, or HF_HUB_OFFLINE=1). "
            + HOW_TO_FIX.format(encoder=encoder)
        )
    log.info("encoder weights %s/%s: downloading from the Hugging Face hub", encoder, encoder_weights)
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=hub_name, classes=classes)


def load_encoder_file(model: torch.nn.Module, path: Path) -> None:
    """Load an encoder state dict (keys of ``model.encoder``, optionally prefixed 'encoder.'; .pth or .safetensors)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"encoder_weights file {path}: cannot be read as a state dict ({err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        model.encoder.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"encoder_weights file {path}: does not match encoder ({first})") from None


def encoder_state(encoder: str, weights: str) -> Optional[dict[str, torch.Tensor]]:
    """The encoder's pretrained state dict (fetched or read from the cache once), or None for 'none'."""
    if weights == "none":
        return None
    return create_model("fpn", encoder, weights).encoder.state_dict()


def prefetch(encoder: str, weights: str = "imagenet") -> bool:
    """Download an encoder's weights into the HF cache; True if they were already there."""
    if weights == "none" or Path(weights).is_file():
        return True
    if is_cached(encoder, weights):
        return True
    create_model("fpn", encoder, weights)
    return False


@cli_entry
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-fetch pretrained encoder weights into the Hugging Face cache.")
    parser.add_argument("encoders", nargs="+", help="encoder names, e.g. resnet34 tu-convnext_tiny")
    parser.add_argument("--weights", default="imagenet", help="SMP weights name (default imagenet)")
    args = parser.parse_args(argv)
    for enc in args.encoders:
        was_cached = prefetch(enc, args.weights)
        print(f"{enc}: {'already cached' if was_cached else 'downloaded'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
