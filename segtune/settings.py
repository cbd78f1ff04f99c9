"""What a sweep runs with: ``SweepSettings`` (its flags, one typed value), saved as ``sweep.yaml`` next to
``space.yaml`` (the space), and the rules for ``--resume``, which reads them back.

Neither file ends in .json or .pkl: on a resumed run Ray copies every such file of the experiment folder into its
staging folder and keeps uploading it back, rewriting it in place, so a machine lost mid-upload truncates it."""
from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from segcore.config import build_checked
from segcore.errors import UserError
from segtune.checkpoint_policy import CheckpointPolicy
from segtune.storage import SETTINGS_FILE, SPACE_FILE, Storage, write_text_atomic

LEGACY_SETTINGS_FILE = "sweep.json"  # what earlier versions wrote: still read

# What wrote an experiment's saved state, kept in sweep.yaml: --resume needs the same Ray (Tune's state is pickled
# Ray objects). STATE_FORMAT 1: Tune's state and result rows committed in resume_state/ (segtune.saved_state);
# sweeps started before it have no such key and are resumed from Tune's own files.
SAVED_BY_KEY, STATE_FORMAT = "saved_by", 1

# Flags a resumed sweep may change: how to reach Ray and what to print. The rest comes from sweep.yaml.
RESUME_MAY_CHANGE = {"resume", "resume_auto", "address", "verbose", "dry_run", "dashboard", "storage_path", "name",
                     "no_final_test"}
# Keys earlier versions saved in sweep.yaml that are not settings (tune_main's other modes): ignored when read
NOT_SETTINGS = {"list_spaces", "report"}
SEARCHES, SCHEDULERS = ("optuna", "random"), ("asha", "fifo")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # an experiment's folder name: no path separators


SYNTHETIC_LAYOUTS = ("pets", "folder")


@dataclass
class SweepSettings:
    """Everything a sweep runs with: its flags, checked together (``problems``), saved as ``sweep.yaml`` and read
    back by ``--resume``. The flags of tune_main.py are these fields, spelled with dashes."""
    space: str = "default"
    data_dir: str = "data"
    download: bool = False
    synthetic: bool = False
    synthetic_images: int = 96  # with --synthetic: how many images the generated set has (half of them test)
    # with --synthetic: Oxford-IIIT Pet's layout (two classes), or a folder of one's own with three classes
    # (segcore.synthetic_folder)
    synthetic_layout: str = "pets"
    num_samples: int = 16
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 3
    search: str = "optuna"
    scheduler: str = "asha"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    max_concurrent: Optional[int] = None
    max_failures: int = 0
    checkpoint_every: str = "auto"
    # the ended trials whose best weights stay on disk: the K best (segtune.saved_state.keep_best); the others' go
    keep_best: int = 10
    storage_path: str = "results"
    name: str = "sweep"
    resume: bool = False
    # --resume auto: continue the sweep if <storage-path>/<name> holds one, else start it (decided by auto_resume;
    # ``resume`` then says which). Not saved: each run says it again.
    resume_auto: bool = field(default=False, metadata={"saved": False})
    address: Optional[str] = None
    seed: int = 0
    set: list[str] = field(default_factory=list)
    dry_run: bool = False
    dashboard: bool = False
    no_final_test: bool = False
    verbose: bool = False
    # how the experiment's state is saved (not a flag): STATE_FORMAT for a new sweep, sweep.yaml's for a resumed one
    state_format: int = field(default=STATE_FORMAT, metadata={"saved": False})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "flags") -> "SweepSettings":
        """Build and check; unknown keys, wrong types and bad values are all reported together."""
        return build_checked(cls, values, source, label=flag, ignored=NOT_SETTINGS)

    def replace(self, **changes: Any) -> "SweepSettings":
        return dataclasses.replace(self, **changes)

    def to_saved(self) -> dict[str, Any]:
        """What sweep.yaml holds: every flag."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}

    def problems(self) -> list[str]:
        p = []
        if not NAME_RE.match(self.name):
            p.append(f"--name '{self.name}': use letters, digits, '_', '-', '.' (no path separators)")
        if self.search not in SEARCHES:
            p.append(f"--search {self.search!r}: one of {', '.join(SEARCHES)}")
        if self.scheduler not in SCHEDULERS:
            p.append(f"--scheduler {self.scheduler!r}: one of {', '.join(SCHEDULERS)}")
        if self.synthetic_layout not in SYNTHETIC_LAYOUTS:
            p.append(f"--synthetic-layout {self.synthetic_layout!r}: one of {', '.join(SYNTHETIC_LAYOUTS)}")
        if self.synthetic_images < 2:
            p.append(f"--synthetic-images must be >= 2 (one image per split at least), got {self.synthetic_images}")
        if self.num_samples < 1:
            p.append(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.max_epochs < 1:
            p.append(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if not 1 <= self.grace_period <= max(1, self.max_epochs):
            p.append(f"--grace-period must be between 1 and --max-epochs ({self.max_epochs}), "
                     f"got {self.grace_period}")
        if self.reduction_factor < 2:
            p.append(f"--reduction-factor must be >= 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0:
            p.append(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            p.append(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        elif self.gpus_per_trial > 1:
            p.append(f"--gpus-per-trial {self.gpus_per_trial:g}: a trial process drives one GPU (or a share); "
                     "for several GPUs per trial use --workers-per-trial N with --gpus-per-trial 1")
        if self.workers_per_trial < 1:
            p.append(f"--workers-per-trial must be >= 1, got {self.workers_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            p.append(f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        if self.max_failures < 0:
            p.append(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.keep_best < 1:
            p.append(f"--keep-best must be >= 1 (the best trial's weights are what the final test and the report "
                     f"use), got {self.keep_best}")
        try:
            CheckpointPolicy.parse(self.checkpoint_every)
        except ValueError as err:
            p.append(f"--checkpoint-every {err}")
        return p

    @property
    def local_sweep(self) -> bool:
        """Ray is started here for this sweep (no --address): what is asked is checked against this machine."""
        return not self.address


def flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def settings_for(given: SweepSettings, named: set[str], experiment_dir: Path) -> SweepSettings:
    """The settings a run goes with. A new sweep: the flags as ``given``. A resumed one keeps those it started
    with (sweep.yaml); only how to reach Ray and how to print may change (``named``: the flags on the command
    line). A flag given again with another value is refused rather than silently ignored."""
    if not given.resume:
        return given
    saved_file, saved = read_settings(experiment_dir, "--resume", hint="; check --storage-path and --name")
    versions = saved.pop(SAVED_BY_KEY, None) or {}
    check_versions(saved_file, versions)
    started = SweepSettings.from_dict(saved, source=str(saved_file))
    changed = [f"{flag(key)} {getattr(given, key)!r} (the sweep started with {getattr(started, key)!r})"
               for key in sorted(named - RESUME_MAY_CHANGE) if getattr(started, key) != getattr(given, key)]
    if changed:
        raise UserError(f"--resume continues {experiment_dir} with the settings it started with ({saved_file}); "
                        "these flags differ (drop them, or start a new sweep with another --name):", changed)
    this_run = {key: getattr(given, key) for key in RESUME_MAY_CHANGE - {"storage_path", "name"}}
    settings = started.replace(**this_run, state_format=int(versions.get("state", 0)))
    if (experiment_dir / SPACE_FILE).is_file():  # the space as it was, even if its file has changed since
        settings = settings.replace(space=str(experiment_dir / SPACE_FILE), set=[])
    return settings


def resume_command(settings: SweepSettings, storage: Storage) -> str:
    cmd = ["python", "tune_main.py", "--resume", "--storage-path", storage.ray_path, "--name", settings.name]
    if settings.address:
        cmd += ["--address", settings.address]
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


def save_settings(settings: SweepSettings, experiment_dir: Path) -> None:
    import yaml

    saved = {**settings.to_saved(), SAVED_BY_KEY: saved_by()}
    write_text_atomic(experiment_dir / SETTINGS_FILE, "# the flags this sweep started with (--resume reads them)\n"
                      + yaml.safe_dump(saved, sort_keys=True))


def auto_resume(experiment_dir: Path) -> bool:
    """--resume auto: True to continue the sweep in ``experiment_dir``, False to start it (the folder is absent or
    empty: a job killed before its sweep wrote anything, or cut short while writing sweep.yaml, which is written
    first). A folder that holds files but no sweep is refused."""
    cut_short = f".{SETTINGS_FILE}.tmp-"  # storage.write_text_atomic's temporary file
    if not experiment_dir.is_dir() or all(p.name.startswith(cut_short) for p in experiment_dir.iterdir()):
        return False
    if any((experiment_dir / name).is_file() for name in (SETTINGS_FILE, LEGACY_SETTINGS_FILE)):
        return True
    raise UserError(f"--resume auto: {experiment_dir} holds files but no sweep started by tune_main.py (no "
                    f"{SETTINGS_FILE}); nothing there is overwritten: choose another --name or --storage-path")


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
