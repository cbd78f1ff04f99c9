"""Search spaces are data: ``search_spaces/NAME.yaml`` maps config keys to a fixed value or one distribution.

    # One-line description (the file's first comment line; shown by --list-spaces)
    arch: fpn                              # fixed for every trial
    lr: {loguniform: [1.0e-5, 1.0e-2]}
    weight_decay: {uniform: [0.0, 1.0e-3]}
    epochs: {int: [2, 5]}                  # both ends included
    encoder: {choice: [resnet18, mobilenet_v2]}
    loss: {grid: [dice, bce]}              # every value, with --search random only
    freeze: {choice: [none, encoder, decoder+head]}

Every key is a ``TrainConfig`` field, plus ``freeze``: one categorical over the valid combinations of frozen parts
(``none``, ``encoder``, ``decoder``, ``head``, ``encoder+decoder``, ``encoder+head``, ``decoder+head``), which sets the
three ``freeze_*`` fields. Every value and bound is checked against the config's own validation before Ray starts.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from segcore.config import TrainConfig, read_mapping
from segcore.errors import UserError
from segtune.storage import write_text_atomic

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice", "grid")
FREEZE_PARTS = ("encoder", "decoder", "head")
FREEZE_COMBOS = ["none"] + ["+".join(c) for n in (1, 2) for c in itertools.combinations(FREEZE_PARTS, n)]
NUMERIC = {"loguniform", "uniform", "int"}


def expand_freeze(value: str) -> dict[str, bool]:
    parts = [] if value == "none" else value.split("+")
    return {f"freeze_{p}": p in parts for p in FREEZE_PARTS}


def to_config_values(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled / fixed space values -> TrainConfig keys (``freeze`` expands into the three ``freeze_*``)."""
    out = {k: v for k, v in params.items() if k != "freeze"}
    if "freeze" in params:
        out.update(expand_freeze(params["freeze"]))
    return out


def trial_config(params: dict[str, Any], base: dict[str, Any]) -> TrainConfig:
    """The sampled ``params`` over the sweep's fixed ``base`` values: the whole config of one trial."""
    return TrainConfig.from_dict({**base, **to_config_values(params)}, source="trial config")


@dataclass
class Space:
    name: str
    path: Path
    description: str
    fixed: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, tuple[str, list]] = field(default_factory=dict)  # key -> (distribution, arguments)

    def values_of(self, key: str) -> list[Any]:
        """Every value ``key`` can take (bounds for numeric distributions)."""
        if key in self.fixed:
            return [self.fixed[key]]
        if key in self.searched:
            return list(self.searched[key][1])
        return [getattr(TrainConfig(), key)]

    def save(self, path: Path) -> None:
        """The space as resolved (with ``--set`` values fixed) in the file format ``load_space`` reads: a sweep keeps
        it in its folder, so resuming or reporting never depends on a space file that may have changed since."""
        body: dict[str, Any] = dict(self.fixed)
        body.update({key: {kind: list(args)} for key, (kind, args) in self.searched.items()})
        write_text_atomic(path, f"# {self.description} (space '{self.name}' as the sweep started with it)\n"
                          + yaml.safe_dump(body, sort_keys=False))

    def to_tune(self) -> dict[str, Any]:
        """Ray Tune's param_space: OptunaSearch converts these domains into Optuna distributions."""
        from ray import tune

        space: dict[str, Any] = dict(self.fixed)
        for key, (kind, args) in self.searched.items():
            if kind == "loguniform":
                space[key] = tune.loguniform(*args)
            elif kind == "uniform":
                space[key] = tune.uniform(*args)
            elif kind == "int":
                space[key] = tune.randint(args[0], args[1] + 1)  # randint excludes its upper bound
            elif kind == "choice":
                space[key] = tune.choice(args)
            else:
                space[key] = tune.grid_search(args)
        return space


def list_spaces() -> list[tuple[str, str]]:
    return [(p.stem, _description(p)) for p in sorted(SPACES_DIR.glob("*.yaml"))]


def resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"--space {name_or_path}: file not found")
        return path
    candidate = SPACES_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        names = ", ".join(n for n, _ in list_spaces())
        raise UserError(f"--space {name_or_path}: no such space (named spaces: {names}; or pass a YAML file path)")
    return candidate


def _description(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return "(no description: start the file with a '# ...' line)"


def load_space(name_or_path: str, overrides: Optional[dict[str, Any]] = None, search: str = "optuna") -> Space:
    """Read and validate a space; ``overrides`` (from --set) fix keys for every trial. All problems at once."""
    path = resolve_path(name_or_path)
    raw = read_mapping(path)
    space = Space(name=path.stem, path=path, description=_description(path))
    problems: list[str] = []
    known = {f.name for f in fields(TrainConfig)} | {"freeze"}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"key '{key}': not a config field (valid: {', '.join(sorted(known))})")
            continue
        if isinstance(value, dict):
            problem = _parse_distribution(space, key, value, search)
            if problem:
                problems.append(f"key '{key}': {problem}")
        else:
            space.fixed[key] = value
    for key, value in (overrides or {}).items():
        if key not in known:
            problems.append(f"--set {key}: not a config field (valid: {', '.join(sorted(known))})")
            continue
        space.searched.pop(key, None)
        space.fixed[key] = value
    if not problems:
        problems += _check_values(space)
    if problems:
        raise UserError(f"search space {path}:", problems)
    return space


def _parse_distribution(space: Space, key: str, spec: dict, search: str) -> Optional[str]:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        return f"expected a value or one of {{{', '.join(DISTRIBUTIONS)}: [...]}}, got {spec}"
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list):
        return f"{kind} takes a list, got {args!r}"
    if kind in NUMERIC:
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            return f"{kind} takes [low, high] numbers, got {args}"
        low, high = args
        if not low < high:
            return f"{kind} bounds must satisfy low < high, got [{low}, {high}]"
        if kind == "loguniform" and low <= 0:
            return f"loguniform bounds must be > 0, got [{low}, {high}]"
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            return f"int bounds must be integers, got [{low}, {high}]"
        if kind == "int":
            args = [int(low), int(high)]
    else:
        if not args:
            return f"{kind} needs at least one value"
        if len({yaml.safe_dump(a) for a in args}) != len(args):
            return f"{kind} lists a value twice: {args}"
        if kind == "grid" and search == "optuna":
            return "grid values need --search random (Optuna samples; it does not enumerate grids); use choice"
    space.searched[key] = (kind, args)
    return None


def _check_values(space: Space) -> list[str]:
    """Each candidate value (fixed, listed, or numeric bound) must make a valid TrainConfig."""
    problems: list[str] = []
    base = {k: v for k, v in space.fixed.items()}
    try:
        base_values = to_config_values({k: v for k, v in base.items() if k != "freeze" or v in FREEZE_COMBOS})
    except (AttributeError, TypeError):
        base_values = {}
    for key in list(space.fixed) + list(space.searched):
        for value in space.values_of(key):
            if key == "freeze":
                if value not in FREEZE_COMBOS:
                    problems.append(f"key 'freeze': '{value}' is not one of: {', '.join(FREEZE_COMBOS)}")
                    continue
                candidate = {**base_values, **expand_freeze(value)}
            else:
                candidate = {**base_values, key: value}
            try:
                TrainConfig.from_dict(candidate)
            except UserError as err:
                mine = [p for p in err.problems if f"'{key}'" in p or (key == "freeze" and "freeze" in p)]
                problems += mine or [f"key '{key}': value {value!r} with the fixed values gives: {err.problems[0]}"]
    if "image_size" in space.searched and space.searched["image_size"][0] in NUMERIC:
        problems.append("key 'image_size': use choice or grid (each size is decoded and cached once before launch)")
    # dedupe, keep order
    return list(dict.fromkeys(problems))
