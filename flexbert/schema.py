"""Typed config sections: a dataclass declares each key once (type, default, one-line doc); `read_section` builds
it from a YAML mapping, strictly.

- An unknown key fails naming the closest valid key and listing the valid ones (`check_keys`, the one checker
  every section uses).
- A value of the wrong type fails naming the key, the value and the expected type. The only conversions are the
  ones YAML makes necessary: an int where a float is declared, and a float written in a form YAML 1.1 reads as a
  string (`1e-5`).
- A field without a default is required.
- `describe(cls)` lists the keys with type, default and doc (what `python main.py --help-config` prints).

Field types understood: bool, int, float, str, `Any`, dict / Mapping, list / tuple, `Literal[...]`, `Optional[...]`,
`Union[...]` of those, nested dataclasses (sections inside sections) and `dict[str, Section]` (named sections, e.g.
a dataset's `streams`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable, Mapping, Optional

from flexbert.registry import closest

MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config key or value that cannot work; the message names the key (and file) and the fix."""


def field(default: Any = MISSING, *, doc: str, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its one-line doc (shown by `describe`)."""
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_keys(data: Mapping[str, Any], valid: Iterable[str], where: str, error: type = ConfigError,
               hint: str = "") -> None:
    """Every key of `data` must be in `valid`; otherwise fail naming the closest valid key."""
    valid = list(valid)
    for key in data:
        if key not in valid:
            raise error(f"unknown key `{join(where, str(key))}`{closest(str(key), valid)}; "
                        f"valid keys: {', '.join(valid)}{hint}")


def check_kwargs(target: Any, kwargs: Mapping[str, Any], where: str, error: type = ConfigError) -> None:
    """Keyword settings for a class or function (a callback, an algorithm, a logger) against its signature."""
    import inspect

    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    check_keys(kwargs, [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL],
               where, error)


def is_mapping(value: Any) -> bool:
    return hasattr(value, "items") and hasattr(value, "keys")


def _type_name(tp: Any) -> str:
    """How a declared type reads in a message: 'an integer or null', 'a number', ..."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a section (key: value lines)"
    if _named_section_type(tp) is not None:
        return "a mapping of name -> section"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if origin in (list, tuple) or tp in (list, tuple):
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "any value"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _fail(where: str, value: Any, tp: Any, error: type) -> ConfigError:
    return error(f"`{where}` must be {_type_name(tp)}, got {value!r}")


def coerce(value: Any, tp: Any, where: str, error: type = ConfigError) -> Any:
    """`value` checked against the declared type `tp` (converted only as the module docstring says)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _fail(where, value, tp, error)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise error(f"`{where}` must be set ({_type_name(tp)}), got null")
        for arg in args:  # the first alternative that takes the value as it is
            if arg is not type(None) and _accepts(value, arg):
                return coerce(value, arg, where, error)
        for arg in args:  # then one that converts it
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where, error)
            except ConfigError:
                continue
        raise _fail(where, value, tp, error)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise error(f"`{where}`: unknown value {value!r}{closest(str(value), [str(c) for c in choices])}; "
                        f"choose one of: {', '.join(str(c) for c in choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        return read_section(tp, value, where, error)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(where, value, tp, error)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise error(f"`{where}` must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise error(f"`{where}` must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise error(f"`{where}` must be a string, got {value!r}")
    if _named_section_type(tp) is not None:
        if is_mapping(value):
            return {str(name): read_section(_named_section_type(tp), section, join(where, str(name)), error)
                    for name, section in value.items()}
        raise error(f"`{where}` must be a mapping of name -> section, got {value!r}")
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        if is_mapping(value):
            return _plain(value)
        raise error(f"`{where}` must be a mapping (key: value lines), got {value!r}")
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            item = typing.get_args(tp)[0] if typing.get_args(tp) else Any
            out = [coerce(v, item, f"{where}[{i}]", error) for i, v in enumerate(value)]
            return tuple(out) if (tp is tuple or origin is tuple) else out
        raise error(f"`{where}` must be a list, got {value!r}")
    raise TypeError(f"{where}: unsupported declared type {tp!r}")


def _accepts(value: Any, tp: Any) -> bool:
    """Whether `value` already has the type `tp` names (no conversion needed)."""
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, tp) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if tp in (dict, Mapping) or origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return is_mapping(value)
    if tp in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    return tp is Any


def _plain(value: Any) -> Any:
    """Nested mappings and lists as plain dicts and lists (OmegaConf containers included)."""
    if is_mapping(value):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def read_section(cls: type, data: Any, where: str, error: type = ConfigError):
    """Dataclass `cls` from the mapping `data` (None = every default). Unknown keys, wrong types and missing
    required keys fail naming `where.key`."""
    if data is None:
        data = {}
    if not is_mapping(data):
        raise error(f"`{where or 'the run file'}` must be a mapping (key: value lines), got {type(data).__name__} "
                    f"{data!r}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    check_keys(data, [f.name for f in fields], where, error)
    hints = _field_types(cls)
    values = {}
    for f in fields:
        if f.name in data:
            values[f.name] = coerce(data[f.name], hints[f.name], join(where, f.name), error)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise error(f"`{join(where, f.name)}` is required: {f.metadata.get('doc', '')}".rstrip(": "))
    try:
        return cls(**values)  # the section's own cross-key checks (__post_init__)
    except ConfigError as err:  # "`key ...`" from the section names its key without the section
        message = str(err)
        if where and message.startswith("`"):
            raise error(f"`{where}.{message[1:]}") from None
        raise error(f"{where}: {message}" if where else message) from None
    except KeyError as err:  # a registry lookup: its message names the key and the choices
        raise error(str(err.args[0]) if err.args else str(err)) from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for every field of `cls`, nested sections expanded."""
    rows = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = join(prefix, f.name), hints[f.name]
        section = _section_type(tp)
        if f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not MISSING:
            made = f.default_factory()
            default = "{}" if dataclasses.is_dataclass(made) else repr(made)
        else:
            default = "required"
        rows.append((key, _type_name(tp), default, f.metadata.get("doc", "")))
        if section is not None:
            rows.extend(describe(section, key))
        named = next((n for n in (_named_section_type(tp), *map(_named_section_type, typing.get_args(tp)))
                      if n is not None), None)
        if named is not None:
            rows.extend(describe(named, f"{key}.<name>"))
    return rows


def _named_section_type(tp: Any) -> Optional[type]:
    """The section class of a `dict[str, Section]` field type, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (dict, Mapping) and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1]
    return None


def _section_type(tp: Any) -> Optional[type]:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def format_rows(rows: list[tuple[str, str, str, str]]) -> str:
    width = max(len(r[0]) for r in rows) + 2
    out = []
    for key, tp, default, doc in rows:
        out.append(f"{key:<{width}}{tp}  [default {default}]")
        if doc:
            out.append(f"{'':<{width}}{doc}")
    return "\n".join(out)
