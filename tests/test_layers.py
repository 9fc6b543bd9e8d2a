"""ARCHITECTURE.md's layer table, enforced: every module of flexbert/, data_prep/ and benchmarks/ has a layer, and
its imports (function-local ones included) point to its own layer or below, without cycles.

The table is read from ARCHITECTURE.md itself, so the document and the check cannot disagree: a backticked name in a
row's modules cell (text in parentheses is commentary) is a module (`schema`), a package (`model/`), a top-level
package (`data_prep/`) or a script (`main.py`); `__init__` is the package root `flexbert`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("flexbert", "data_prep", "benchmarks")
SCRIPTS = ("main.py",)

# (importer, imported, why): upward imports tolerated for now, each to be removed by the change named; the test
# fails when one no longer occurs, so this list only shrinks.
KNOWN_UPWARD_IMPORTS: list[tuple[str, str, str]] = [
]


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages and the top-level scripts."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    for script in SCRIPTS:
        found[script[:-3]] = ROOT / script
    return found


def _without_parentheses(text: str) -> str:
    while True:
        shorter = re.sub(r"\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def layer_table() -> dict[str, tuple[int, str]]:
    """Module or package name (dotted) -> (layer number, layer name), from ARCHITECTURE.md's table."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d+)\s+([^|]+?)\s*\|([^|]*)\|", line)
        if not row:
            continue
        layer = (int(row.group(1)), row.group(2))
        for name in re.findall(r"`([^`]+)`", _without_parentheses(row.group(3))):
            if name == "__init__":
                dotted = "flexbert"
            elif name in SCRIPTS:
                dotted = name[:-3]
            elif name.rstrip("/") in PACKAGES:
                dotted = name.rstrip("/")
            else:
                dotted = "flexbert." + name.rstrip("/").replace("/", ".")
            assert dotted not in table, f"ARCHITECTURE.md names `{name}` in two layers"
            table[dotted] = layer
    assert table, "ARCHITECTURE.md has no layer table under '## Layers'"
    return table


def layer_of(module: str, table: dict[str, tuple[int, str]]):
    """The layer of the longest table entry that is `module` or a package holding it (None: not in the table)."""
    name = module
    while name:
        if name in table:
            return table[name]
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.append((target, node.lineno))
    return out


def import_graph():
    known = modules()
    return known, {name: imports_of(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer_and_every_named_module_exists():
    table = layer_table()
    known = modules()
    missing = sorted(name for name in known if layer_of(name, table) is None)
    assert not missing, f"modules in no row of ARCHITECTURE.md's layer table: {missing}"
    phantom = sorted(name for name in table if name not in known)
    assert not phantom, f"ARCHITECTURE.md's layer table names modules that do not exist: {phantom}"


def test_imports_point_down_the_layer_table():
    table = layer_table()
    known, graph = import_graph()
    upward, seen_exceptions = [], set()
    exceptions = {(a, b): why for a, b, why in KNOWN_UPWARD_IMPORTS}
    for importer, imported in graph.items():
        for target, line in imported:
            if layer_of(importer, table) is None or layer_of(target, table) is None:
                continue  # reported by test_every_module_has_a_layer_and_every_named_module_exists
            (mine, my_name), (theirs, their_name) = layer_of(importer, table), layer_of(target, table)
            if theirs <= mine:
                continue
            if (importer, target) in exceptions:
                seen_exceptions.add((importer, target))
                continue
            path = known[importer].relative_to(ROOT)
            upward.append(f"{path}:{line}: {importer} (layer {mine} {my_name}) imports {target} "
                          f"(layer {theirs} {their_name})")
    assert not upward, "imports pointing up the layer table:\n" + "\n".join(upward)
    stale = sorted(set(exceptions) - seen_exceptions)
    assert not stale, f"KNOWN_UPWARD_IMPORTS lists imports that no longer occur; remove them: {stale}"


def _cycle(graph: dict[str, list[str]]):
    """One import cycle as a list of modules, or None (depth-first search for a back edge)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    _, graph = import_graph()
    edges = {name: sorted({target for target, _ in imported}) for name, imported in graph.items()}
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_upward_and_function_local_imports(tmp_path):
    """The checker itself, on a known graph: a function-local upward import and a two-module cycle are found."""
    table = {"flexbert.low": (0, "base"), "flexbert.high": (6, "tools")}
    known = {"flexbert": Path("flexbert/__init__.py"), "flexbert.low": Path("low.py"), "flexbert.high": Path("high.py")}
    probe = tmp_path / "low.py"
    probe.write_text("import os\n\n\ndef f():\n    from flexbert import high\n")
    found = imports_of("flexbert.low", probe, known)
    assert found == [("flexbert.high", 5)]
    assert layer_of("flexbert.high", table)[0] > layer_of("flexbert.low", table)[0]
    assert _cycle({"a": ["b"], "b": ["a"], "c": []}) == ["a", "b", "a"]
    assert _cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
