"""What a sweep started with, and how it continues: ``sweep.json`` (the flags), ``space.yaml`` (the space), and the
rules for ``--resume``."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Optional, Sequence

from segcore.errors import UserError
from segtune.storage import Storage

SETTINGS_FILE = "sweep.json"  # the flags a sweep started with; --resume reads them back
SPACE_FILE = "space.yaml"  # the space as the sweep started with it (--set values fixed in)

# Flags a resumed sweep may change: how to reach Ray and what to print. The rest comes from sweep.json.
RESUME_MAY_CHANGE = {"resume", "address", "verbose", "dry_run", "dashboard", "storage_path", "name", "no_final_test"}


def given_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set[str]:
    """The destinations of the flags given on the command line (not left at their defaults); ``parser`` is
    changed for that, so pass a fresh one."""
    for action in parser._actions:  # argparse's documented trick for telling given flags from defaults
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def settings_for(args: argparse.Namespace, experiment_dir: Path, given: set[str]) -> argparse.Namespace:
    """A resumed sweep keeps the flags it started with; only how to reach Ray and how to print may change. A flag
    given again with another value is refused rather than silently ignored."""
    saved_file = experiment_dir / SETTINGS_FILE
    if not args.resume:
        return args
    if not saved_file.is_file():
        raise UserError(f"--resume: {experiment_dir} holds no sweep started by tune_main.py ({SETTINGS_FILE} "
                        "missing); check --storage-path and --name")
    try:
        saved = json.loads(saved_file.read_text())
    except ValueError as err:
        raise UserError(f"--resume: {saved_file} is not valid JSON ({err})") from None
    changed = [f"--{key.replace('_', '-')} {getattr(args, key)!r} (the sweep started with {saved.get(key)!r})"
               for key in sorted(given - RESUME_MAY_CHANGE) if saved.get(key) != getattr(args, key)]
    if changed:
        raise UserError(f"--resume continues {experiment_dir} with the settings it started with ({saved_file}); "
                        "these flags differ (drop them, or start a new sweep with another --name):", changed)
    saved.update({key: getattr(args, key) for key in RESUME_MAY_CHANGE - {"storage_path", "name"}})
    if (experiment_dir / SPACE_FILE).is_file():  # the space as it was, even if its file has changed since
        saved.update(space=str(experiment_dir / SPACE_FILE), set=[])
    return argparse.Namespace(**{**vars(args), **saved})


def resume_command(args: argparse.Namespace, storage: Storage) -> str:
    cmd = ["python", "tune_main.py", "--resume", "--storage-path", storage.ray_path, "--name", args.name]
    if args.address:
        cmd += ["--address", args.address]
    return " ".join(shlex.quote(c) for c in cmd)
