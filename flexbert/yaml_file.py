"""The one reader of YAML config files (run, evaluation and sweep files) and their `key.sub=value` overrides.

`load_config_file(path, overrides, kind=...)` reads the file with OmegaConf, applies the overrides in order,
resolves `${...}` variables and returns plain dicts and lists. Every error is a `ConfigError` (or the caller's
subclass of it) on one line that names the file -- and the line, for a YAML syntax error -- or the override:

    run.yaml:3: cannot parse YAML: mapping values are not allowed here (column 9)
    command-line override `optimizer.lr=[1e-3`: ...

Override semantics are OmegaConf's `from_dotlist` + `merge` (so `60ba`, `1e-3` and `[0.9, 0.98]` read as they do
in a file), with one addition: `key={}` empties the section, where a merge would keep its entries.
Each file kind keeps its own schema check; this module only reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flexbert.schema import ConfigError

_DOLLAR_NAME = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class ConfigFile:
    """A read config file: its values and what the file's own variables need to know about them."""

    values: dict[str, Any]
    referenced: set[str] = field(default_factory=set)  # top-level names used as ${name} or ${name.sub}
    override_keys: set[str] = field(default_factory=set)  # top-level keys set by a command-line override


def one_line(err: BaseException) -> str:
    """An OmegaConf / YAML error as one line: its first line, plus the key OmegaConf names."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    full_key = getattr(err, "full_key", None)
    return f"{text} (at `{full_key}`)" if full_key else text


def _yaml_error(path: Path, err: Exception) -> str:
    """`path:line: cannot parse YAML: problem (column c)`: PyYAML's marks count from 0."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if mark is None or problem is None:
        return f"{path}: cannot parse YAML: {one_line(err)}"
    context = getattr(err, "context", None)
    context = f" ({context})" if context and context != problem else ""
    return f"{path}:{mark.line + 1}: cannot parse YAML: {problem}{context} (column {mark.column + 1})"


def read_file(path: str | Path, kind: str = "YAML file", error: type = ConfigError) -> DictConfig:
    """The file as an unresolved OmegaConf mapping."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {kind}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml's syntax errors carry the line; OmegaConf's a key
        raise error(_yaml_error(path, err)) from None
    if not isinstance(loaded, DictConfig):
        found = "list" if isinstance(loaded, ListConfig) else type(loaded).__name__
        raise error(f"{path}: a {kind} is a mapping of `key: value` lines, this one is a {found}")
    return loaded


def _override(text: str, error: type) -> DictConfig:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise error(f"command-line override `{text}` must look like key.sub=value")
    try:
        return OmegaConf.from_dotlist([text])
    except Exception as err:  # OmegaConf's grammar errors, or yaml's for the value
        problem = getattr(err, "problem", None)
        raise error(f"command-line override `{text}`: cannot parse it: {problem or one_line(err)}") from None


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], error: type = ConfigError) -> DictConfig:
    """`cfg` with each `key.sub=value` applied in order (so `loggers={} loggers.x=...` keeps x)."""
    for text in overrides:
        parsed = _override(text, error)
        key, value = (part.strip() for part in text.split("=", 1))
        try:
            if value == "{}":  # empties the section; a merge would keep its entries
                OmegaConf.update(cfg, key, {}, merge=False)
            else:
                cfg = OmegaConf.merge(cfg, parsed)
        except OmegaConfBaseException as err:
            raise error(f"command-line override `{text}`: {one_line(err)}") from None
    return cfg


def referenced_names(cfg: DictConfig) -> set[str]:
    """Top-level names used as `${name}` or `${name.sub}` anywhere in the (unresolved) config."""
    return set(_DOLLAR_NAME.findall(OmegaConf.to_yaml(cfg, resolve=False)))


def to_plain(cfg: DictConfig, where: str, error: type = ConfigError, resolve: bool = True) -> dict[str, Any]:
    """Plain dicts and lists, `${...}` resolved unless `resolve=False`."""
    try:
        return OmegaConf.to_container(cfg, resolve=resolve)
    except OmegaConfBaseException as err:
        raise error(f"{where}: cannot resolve a ${{...}} variable: {one_line(err)}") from None


def load_config_file(path: Optional[str | Path], overrides: Sequence[str] = (), *, kind: str = "YAML file",
                     error: type = ConfigError, base: Optional[Mapping[str, Any]] = None,
                     resolve: bool = True) -> ConfigFile:
    """Read `base` <- the file at `path` (None: no file) <- `key.sub=value` overrides, resolved."""
    where = str(path) if path is not None else kind
    try:
        cfg = OmegaConf.create(dict(base or {}))
    except OmegaConfBaseException as err:
        raise error(f"{where}: {one_line(err)}") from None
    if path is not None:
        cfg = OmegaConf.merge(cfg, read_file(path, kind, error))
    override_keys = {text.split("=", 1)[0].strip().split(".")[0] for text in overrides if "=" in text}
    cfg = apply_overrides(cfg, overrides, error)
    return ConfigFile(to_plain(cfg, where, error, resolve), referenced_names(cfg), override_keys)


def parse_value(text: str) -> Any:
    """The right-hand side of a `key=value` override as OmegaConf reads it (`60ba` -> '60ba', `1e-3` -> 0.001)."""
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"k={text}"]))["k"]


def write_yaml(path: Path, values: Mapping[str, Any]) -> None:
    """`values` as a YAML file that `load_config_file` reads back, written under a temporary name, then renamed."""
    import yaml

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    tmp.replace(path)
