"""The walk of a run's config through the calls of one start goes one way: every call from one project module into
another points down ARCHITECTURE.md's layer table (or stays in its layer), and no module is called back by a module
it called (the module-level call graph of a start has no cycle).

The calls are traced with `sys.setprofile` during a real `build_trainer` of the tiny demo run, so callbacks and
objects handed down count too, which an import check cannot see.
"""

from __future__ import annotations

import collections
import sys
import types

from flexbert.train.run_config import load_run_config
from flexbert.train.trainer import build_trainer
from tests.helpers import ROOT
from tests.test_layers import _cycle, layer_of, layer_table
from tests.tiny_setup import tiny_run_overrides


def _ours(module: str) -> bool:
    return module == "main" or module.split(".")[0] in ("flexbert", "data_prep")


def traced_calls(fn, *args, **kwargs):
    """(fn's result, Counter of (caller module, callee module, caller function, callee function)) for every call made
    while fn runs from a function of one of our modules into a function of another."""
    edges = collections.Counter()

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee, caller = frame.f_globals.get("__name__", ""), frame.f_back.f_globals.get("__name__", "")
        if callee != caller and _ours(callee) and _ours(caller):
            edges[(caller, callee, frame.f_back.f_code.co_name, frame.f_code.co_name)] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return result, edges


def walk_faults(edges) -> tuple[list[str], list[str] | None]:
    """(calls pointing up the layer table, one module-level call cycle or None)."""
    table = layer_table()
    upward = []
    for (caller, callee, caller_fn, callee_fn), n in sorted(edges.items()):
        mine, theirs = layer_of(caller, table), layer_of(callee, table)
        if mine is not None and theirs is not None and theirs[0] > mine[0]:
            upward.append(f"{caller}.{caller_fn} (layer {mine[0]}) calls {callee}.{callee_fn} (layer {theirs[0]}) "
                          f"x{n}")
    graph = collections.defaultdict(set)
    for caller, callee, _, _ in edges:
        graph[caller].add(callee)
        graph.setdefault(callee, set())
    return upward, _cycle({module: sorted(called) for module, called in graph.items()})


def test_one_start_calls_only_down_and_never_back(tiny_corpus, tmp_path):
    cfg = load_run_config(ROOT / "yamls" / "demo.yaml", tiny_run_overrides(tiny_corpus, tmp_path / "run"))
    (trainer, _), edges = traced_calls(build_trainer, cfg)
    trainer.close()
    modules = {m for edge in edges for m in edge[:2]}
    # the walk really covers a start: config, validation, model, data, optimizer and trainer modules
    assert {"flexbert.train.validate", "flexbert.train.builders", "flexbert.model.modeling", "flexbert.data.loader",
            "flexbert.optim.builders", "flexbert.train.trainer"} <= modules, sorted(modules)
    upward, cycle = walk_faults(edges)
    assert not upward, "calls climbing up the layer table during a start:\n" + "\n".join(upward)
    assert cycle is None, "a module is called back by a module it called: " + " -> ".join(cycle)


def _function_in(module: str, code: str, name: str, **names):
    """A function whose globals say it belongs to `module` (a stand-in for a project module)."""
    scope = {"__name__": module, **names}
    exec(compile(code, f"<{module}>", "exec"), scope)
    return scope[name]


def test_the_tracer_sees_a_callback_climbing_back():
    """The checker on a known walk: a train-layer function hands a callback down to a base-layer function, which
    calls it back: one upward call, and a train -> registry -> train cycle."""
    on_event = _function_in("flexbert.train.trainer", "def on_event():\n    return 1\n", "on_event")
    notify = _function_in("flexbert.registry", "def notify(callback):\n    return callback()\n", "notify")
    start = _function_in("flexbert.train.trainer", "def start():\n    return notify(on_event)\n", "start",
                         notify=notify, on_event=on_event)
    assert isinstance(start, types.FunctionType)
    result, edges = traced_calls(start)
    assert result == 1
    upward, cycle = walk_faults(edges)
    assert upward == ["flexbert.registry.notify (layer 0) calls flexbert.train.trainer.on_event (layer 5) x1"]
    assert cycle == ["flexbert.registry", "flexbert.train.trainer", "flexbert.registry"]
