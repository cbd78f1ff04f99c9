"""What a sweep started with, and how it continues: ``sweep.yaml`` (the flags), ``space.yaml`` (the space), and the
rules for ``--resume``.

Neither file ends in .json or .pkl: on a resumed run Ray copies every such file of the experiment folder into its
staging folder and keeps uploading it back, rewriting it in place, so a machine lost mid-upload truncates it."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Optional, Sequence

from segcore.errors import UserError
from segtune.storage import SETTINGS_FILE, SPACE_FILE, Storage, write_text_atomic

LEGACY_SETTINGS_FILE = "sweep.json"  # what earlier versions wrote: still read

# Flags a resumed sweep may change: how to reach Ray and what to print. The rest comes from sweep.yaml.
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
    if not args.resume:
        return args
    saved_file, saved = read_settings(experiment_dir, "--resume", hint="; check --storage-path and --name")
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


def save_settings(args: argparse.Namespace, experiment_dir: Path) -> None:
    import yaml

    write_text_atomic(experiment_dir / SETTINGS_FILE, "# the flags this sweep started with (--resume reads them)\n"
                      + yaml.safe_dump(vars(args), sort_keys=True))


def read_settings(experiment_dir: Path, flag: str, hint: str = "") -> tuple[Path, dict]:
    """The saved flags of the sweep in ``experiment_dir``; ``flag`` (--resume, --report) names the asker in errors."""
    import yaml

    for name in (SETTINGS_FILE, LEGACY_SETTINGS_FILE):
        path = experiment_dir / name
        if path.is_file():
            break
    else:
        raise UserError(f"{flag}: {experiment_dir} holds no sweep started by tune_main.py (no {SETTINGS_FILE}){hint}")
    try:  # YAML reads the legacy JSON too
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{flag}: {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise UserError(f"{flag}: {path} does not hold the flags of a sweep (a mapping); it is damaged")
    return path, saved
