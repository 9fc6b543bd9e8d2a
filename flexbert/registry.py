"""Typed registries keyed by the names used in YAML.

Every configurable component (embedding, attention kernel, MLP, norm, layer, init scheme, loss,
optimizer, scheduler, callback, ...) registers itself under its YAML name with a one-line
description. Builders look names up here; an unknown name fails with the closest valid one.

`python -m flexbert.list_registries` prints every registry with its names and descriptions.
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


if __name__ == "__main__":  # the listing needs every module that registers, so it lives in the tool layer
    raise SystemExit("the listing moved: python -m flexbert.list_registries")
