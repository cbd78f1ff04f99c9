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

# What wrote an experiment's saved state, kept in sweep.yaml: --resume needs the same Ray (Tune's state is pickled
# Ray objects). STATE_FORMAT 1: Tune's state and result rows committed in resume_state/ (segtune.saved_state);
# sweeps started before it have no such key and are resumed from Tune's own files.
SAVED_BY_KEY, STATE_FORMAT = "saved_by", 1

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
        args.state_format = STATE_FORMAT
        return args
    saved_file, saved = read_settings(experiment_dir, "--resume", hint="; check --storage-path and --name")
    versions = saved.pop(SAVED_BY_KEY, None) or {}
    check_versions(saved_file, versions)
    changed = [f"--{key.replace('_', '-')} {getattr(args, key)!r} (the sweep started with {saved.get(key)!r})"
               for key in sorted(given - RESUME_MAY_CHANGE) if saved.get(key) != getattr(args, key)]
    if changed:
        raise UserError(f"--resume continues {experiment_dir} with the settings it started with ({saved_file}); "
                        "these flags differ (drop them, or start a new sweep with another --name):", changed)
    saved.update({key: getattr(args, key) for key in RESUME_MAY_CHANGE - {"storage_path", "name"}})
    saved["state_format"] = int(versions.get("state", 0))
    if (experiment_dir / SPACE_FILE).is_file():  # the space as it was, even if its file has changed since
        saved.update(space=str(experiment_dir / SPACE_FILE), set=[])
    return argparse.Namespace(**{**vars(args), **saved})


def resume_command(args: argparse.Namespace, storage: Storage) -> str:
    cmd = ["python", "tune_main.py", "--resume", "--storage-path", storage.ray_path, "--name", args.name]
    if args.address:
        cmd += ["--address", args.address]
    return " ".join(shlex.quote(c) for c in cmd)


def saved_by() -> dict:
    import optuna
    import ray

    return {"state": STATE_FORMAT, "ray": ray.__version__, "optuna": optuna.__version__}


def check_versions(saved_file: Path, saved: dict) -> None:
    """A sweep resumes with the Ray it was started with: Tune's saved state is pickled Ray objects."""
    import ray

    if saved.get("ray") and saved["ray"] != ray.__version__:
        raise UserError(f"--resume: {saved_file.parent} was saved by Ray {saved['ray']} and this is Ray "
                        f"{ray.__version__}, which cannot read another version's saved state; resume it with "
                        f"pip install 'ray[default,tune]=={saved['ray']}', or start a new sweep with another --name")
    if int(saved.get("state", 0)) > STATE_FORMAT:
        raise UserError(f"--resume: {saved_file.parent} was saved by a newer version of this project (state "
                        f"format {saved['state']}, this one reads up to {STATE_FORMAT}); update it, or start a new "
                        "sweep with another --name")


def save_settings(args: argparse.Namespace, experiment_dir: Path) -> None:
    import yaml

    settings = {**vars(args), SAVED_BY_KEY: saved_by()}
    settings.pop("state_format", None)
    write_text_atomic(experiment_dir / SETTINGS_FILE, "# the flags this sweep started with (--resume reads them)\n"
                      + yaml.safe_dump(settings, sort_keys=True))


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
