"""Typed registries keyed by the names used in YAML.

Every configurable component (embedding, attention kernel, MLP, norm, layer, init scheme, loss,
optimizer, scheduler, callback, ...) registers itself under its YAML name with a one-line
description. Builders look names up here; an unknown name fails with the closest valid one.

`python -m flexbert.registry` prints every registry with its names and descriptions.
"""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, Tuple, TypeVar

T = TypeVar("T")


def closest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Generic[T]):
    """A name -> object table with descriptions. Registration is a decorator:

    @ATTENTION_KERNELS.register("sdpa", "PyTorch scaled_dot_product_attention over padded blocks")
    def sdpa_attention(...): ...
    """

    all: Dict[str, "Registry"] = {}

    def __init__(self, kind: str, config_key: str | None = None):
        self.kind = kind
        self.config_key = config_key or kind
        self._entries: Dict[str, Tuple[T, str]] = {}
        Registry.all[kind] = self

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = (obj, description)
            return obj

        return decorator

    def add(self, name: str, obj: T, description: str) -> T:
        return self.register(name, description)(obj)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} '{name}' for `{self.config_key}`{closest(name, self._entries)}; "
                f"choose one of: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name][0]

    def description(self, name: str) -> str:
        self.get(name)
        return self._entries[name][1]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _load_all() -> None:
    """Import every module that registers something, so the listing is complete."""
    import importlib
    import pkgutil

    import flexbert

    for mod in pkgutil.walk_packages(flexbert.__path__, prefix="flexbert."):
        if mod.name.endswith("__main__") or mod.name in ("flexbert.registry", "flexbert.demo"):
            continue
        importlib.import_module(mod.name)


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(prog="python -m flexbert.registry",
                            description="List every registered block, kernel, optimizer, schedule, callback and "
                                        "logger: the names a run file may use.").parse_args(argv)
    # Under `python -m`, this file runs as __main__: the registries live in the imported flexbert.registry.
    from flexbert import registry as canonical

    _load_all()
    tables = canonical.Registry.all
    for kind in sorted(tables):
        reg = tables[kind]
        print(f"{kind} (`{reg.config_key}`):")
        width = max((len(n) for n in reg.names()), default=0)
        for name in reg.names():
            print(f"  {name:<{width}}  {reg.description(name)}")
        print()


if __name__ == "__main__":
    main()
