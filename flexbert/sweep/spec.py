"""The sweep file: which base run, which common overrides, which variants -- parsed and checked strictly.

A sweep file is YAML with these keys (anything else is an error naming the closest key):

    name: blocks_demo              # optional; default: the file's stem. Also the wandb group of its runs.
    description: ...               # optional, copied into results.md
    base: ../demo.yaml             # the run YAML every variant starts from (see `resolve_base`)
    overrides:                     # optional: dotted run keys -> values, applied to every run
      max_duration: 60ba
    grid:                          # EITHER a cartesian product: dotted key -> list of values ...
      model.model_config.mlp_layer: [glu, mlp]
    variants:                      # ... OR a list of named variants
      - name: plain_mlp            # optional; default: derived from the overrides
        description: ...           # optional
        overrides: {model.model_config.mlp_layer: mlp}
    eval: ../eval/demo.yaml        # optional: an evaluation file (flexbert.eval), or its content inline; each
                                   # variant's final checkpoint is fine-tuned on its tasks (see evaluation.py)

Values are read by `flexbert.yaml_file`, the same reader as run files and their `key=value` overrides,
so `1e-3`, `60ba`, `[0.9, 0.98]` mean what they mean in a run file. Whether a key exists in the run schema
is checked later, by `validate.validate_variant`, with the same code that checks a run.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flexbert import schema
from flexbert.yaml_file import load_config_file, parse_value

SWEEP_KEYS = ("name", "description", "base", "overrides", "grid", "variants", "eval")
VARIANT_KEYS = ("name", "description", "overrides")
# The sweep owns these: every run gets its own folder and name, and resuming is the sweep's decision.
RESERVED_KEYS = ("save_folder", "run_name", "autoresume")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")
MAX_NAME = 120


class SweepError(schema.ConfigError):
    """A sweep file problem; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]  # this variant's own dotted key -> value (not the common ones)
    description: str = ""


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: Path  # resolved run YAML
    common: dict[str, Any]
    variants: list[Variant]
    description: str = ""
    varied_keys: list[str] = field(default_factory=list)  # keys any variant sets, in first-seen order
    eval: Any = None  # the `eval:` section: a path (resolved) or an inline evaluation file


# ------------------------------------------------------------------------------------------- values


def render_value(value: Any) -> str:
    """A value as the right-hand side of a `key=value` override that OmegaConf parses back to `value`."""
    if isinstance(value, str):
        try:
            parsed = parse_value(value) if value else None
        except Exception:  # not even parseable as a plain scalar: quote it
            parsed = None
        # Plain text when it reads back unchanged (mlp, 60ba); JSON quoting otherwise ('60', 'true', 'a: b').
        return value if parsed == value and type(parsed) is str else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {render_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return json.dumps(value)  # numbers, bools (true/false), None (null)


def render_overrides(overrides: Mapping[str, Any]) -> list[str]:
    return [f"{key}={render_value(value)}" for key, value in overrides.items()]


def _name_part(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_name_part(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_name_part(v)}" for k, v in value.items())
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def sanitize(text: str) -> str:
    """Characters outside [A-Za-z0-9._=+,-] -> '_' (run names become folder names and wandb names)."""
    text = re.sub(r"[^A-Za-z0-9._=+,-]", "_", text).strip("._") or "variant"
    return text if _NAME_OK.match(text) else "v" + text


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key -> its shortest unambiguous suffix (`model.model_config.mlp_layer` -> `mlp_layer`)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def derived_name(overrides: Mapping[str, Any], shorts: Mapping[str, str]) -> str:
    if not overrides:
        return "baseline"
    name = sanitize("__".join(f"{shorts.get(k, k)}={_name_part(v)}" for k, v in overrides.items()))
    return name if len(name) <= MAX_NAME else name[:MAX_NAME]


# ------------------------------------------------------------------------------------------- parsing


def _check_keys(where: str, data: Mapping, valid: tuple[str, ...]) -> None:
    try:
        schema.check_keys(data, valid, "", SweepError)
    except SweepError as err:
        raise SweepError(f"{where}: {err}") from None


def _overrides(where: str, data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SweepError(f"{where} must be a mapping of dotted run keys to values (e.g. `optimizer.lr: 1.0e-3`), "
                         f"got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$", key):
            raise SweepError(f"{where}: `{key}` is not a dotted run key (like model.model_config.mlp_layer)")
        if key.split(".")[0] in RESERVED_KEYS:
            raise SweepError(f"{where}: `{key}` is set by the sweep for every run (runs go to OUT/runs/<name>/); remove it")
        out[key] = value
    return out


def resolve_base(base: Any, sweep_path: Path) -> Path:
    """`base` relative to the sweep file's folder first, then to the current directory; absolute paths as given."""
    if not isinstance(base, str) or not base:
        raise SweepError(f"{sweep_path}: `base` is required: the run YAML the variants start from (e.g. base: ../demo.yaml)")
    path = Path(base)
    tried = [path] if path.is_absolute() else [sweep_path.parent / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise SweepError(f"{sweep_path}: base run file '{base}' not found (tried {', '.join(str(t) for t in tried)})")


def _grid_variants(where: str, grid: Any) -> list[dict[str, Any]]:
    grid = _overrides(where, grid)
    if not grid:
        raise SweepError(f"{where} is empty: give at least one key with a list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}.{key} must be a non-empty list of values, got {values!r} "
                             f"(a single value that every run shares belongs in `overrides`)")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file. Run keys are checked later (`validate.validate_variant`)."""
    path = Path(path)
    # unresolved: a `${...}` in an override is the run file's variable, resolved when the run reads it
    raw = load_config_file(path, kind="sweep file", error=SweepError, resolve=False).values
    _check_keys(str(path), raw, SWEEP_KEYS)
    if ("grid" in raw) == ("variants" in raw):
        which = "both" if "grid" in raw else "neither"
        raise SweepError(f"{path}: give either `grid` (a cartesian product) or `variants` (a list), not {which}")
    sweep_name = sanitize(str(raw.get("name") or path.stem))
    base = resolve_base(raw.get("base"), path)
    common = _overrides(f"{path}: overrides", raw.get("overrides"))

    if "grid" in raw:
        entries = [{"overrides": o} for o in _grid_variants(f"{path}: grid", raw["grid"])]
    else:
        entries = raw["variants"]
        if not isinstance(entries, list) or not entries:
            raise SweepError(f"{path}: `variants` must be a non-empty list of {{name, overrides}} entries")
    parsed: list[tuple[str | None, dict[str, Any], str]] = []
    for i, entry in enumerate(entries):
        where = f"{path}: variants[{i}]"
        if not isinstance(entry, Mapping):
            raise SweepError(f"{where} must be a mapping with keys {', '.join(VARIANT_KEYS)}")
        _check_keys(where, entry, VARIANT_KEYS)
        given = entry.get("name")
        if given is not None and (not isinstance(given, str) or not _NAME_OK.match(given) or len(given) > MAX_NAME):
            raise SweepError(f"{where}: name {given!r} must be 1-{MAX_NAME} characters from [A-Za-z0-9._=+,-] "
                             f"(it becomes a folder name), e.g. '{sanitize(str(given))}'")
        parsed.append((given, _overrides(f"{where}.overrides", entry.get("overrides")), str(entry.get("description") or "")))

    varied = list(dict.fromkeys(k for _, o, _ in parsed for k in o))
    shorts = short_keys(varied)
    variants, seen = [], {}
    for i, (given, overrides, description) in enumerate(parsed):
        name = given or derived_name(overrides, shorts)
        if name in seen:
            raise SweepError(f"{path}: variants[{seen[name]}] and variants[{i}] are both named '{name}': "
                             "give them distinct `name`s or distinct overrides")
        seen[name] = i
        variants.append(Variant(name, overrides, description))
    return SweepSpec(path=path, name=sweep_name, base=base, common=common, variants=variants,
                     description=str(raw.get("description") or ""), varied_keys=varied, eval=_eval_section(raw.get("eval"), path))


def _eval_section(section: Any, sweep_path: Path) -> Any:
    if section is None:
        return None
    if isinstance(section, str):  # same lookup as `base`: the sweep file's folder, then the current directory
        tried = [Path(section)] if Path(section).is_absolute() else [sweep_path.parent / section, Path.cwd() / section]
        for candidate in tried:
            if candidate.is_file():
                return candidate.resolve()
        raise SweepError(f"{sweep_path}: eval file '{section}' not found (tried {', '.join(map(str, tried))})")
    if not isinstance(section, Mapping):
        raise SweepError(f"{sweep_path}: `eval` must be an evaluation file's path or its content (a mapping)")
    if "starting_checkpoint_load_path" in section:
        raise SweepError(f"{sweep_path}: `eval.starting_checkpoint_load_path` is set by the sweep (each variant's "
                         "final checkpoint); remove it")
    return dict(section)
