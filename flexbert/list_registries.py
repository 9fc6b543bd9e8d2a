"""`python -m flexbert.list_registries`: every registered block, kernel, optimizer, schedule, callback and logger,
with its description -- the names a run file may use.

A tool, not part of `flexbert.registry`: listing every table means importing every module that registers one,
which only a module above them all may do.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import flexbert
from flexbert.registry import Registry

# Not imported for the listing: entry points that register nothing.
_SKIPPED = ("flexbert.list_registries", "flexbert.demo")  # and the modules under them


def load_all() -> None:
    """Import every module that registers something, so the listing is complete."""
    for mod in pkgutil.walk_packages(flexbert.__path__, prefix="flexbert."):
        skipped = any(mod.name == name or mod.name.startswith(name + ".") for name in _SKIPPED)
        if mod.name.endswith("__main__") or skipped:
            continue
        importlib.import_module(mod.name)


def main(argv=None) -> None:
    argparse.ArgumentParser(prog="python -m flexbert.list_registries",
                            description="List every registered block, kernel, optimizer, schedule, callback and "
                                        "logger: the names a run file may use.").parse_args(argv)
    load_all()
    for kind in sorted(Registry.all):
        table = Registry.all[kind]
        print(f"{kind} (`{table.config_key}`):")
        width = max((len(n) for n in table.names()), default=0)
        for name in table.names():
            print(f"  {name:<{width}}  {table.description(name)}")
        print()


if __name__ == "__main__":
    main()
