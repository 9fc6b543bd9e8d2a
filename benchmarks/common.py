"""Shared helpers of the benchmarks: timing, matmul throughput, process memory, subprocess workers, tables, JSON.

Memory on CPU: torch's CPU allocations are invisible to tracemalloc, so peak memory is
measured on the process's resident set, in a fresh subprocess per measurement with glibc told to return freed
memory at once (`EXACT_RSS_ENV`): the kernel's high-water mark (VmHWM) reset right before the measured work by
writing 5 to /proc/self/clear_refs (Linux >= 4.0), cross-checked by the peak of the anonymous RSS sampled by a
thread (`AnonPeakSampler`, the number used where the reset is not allowed).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import torch


# ------------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                       repeats: int = 5) -> float:
    """Dense n x n x n torch.mm throughput (FLOP/s, 2 n^3 per product), median of `repeats` timed calls after one
    untimed: the machine's practical matmul limit at this thread count, measured next to the model."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    torch.mm(a, b)
    times = [timed(lambda: torch.mm(a, b), device) for _ in range(repeats)]
    return 2 * n**3 / median(times)


# ------------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """Current resident set size of this process (MiB); falls back to ru_maxrss where /proc is missing."""
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def reset_peak_rss() -> bool:
    """Set the high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def anon_rss_mib() -> Optional[float]:
    """Resident anonymous memory (heap, tensors) in MiB: /proc/self/statm resident - shared; None without /proc."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE") / 2**20


class AnonPeakSampler:
    """Peak anonymous RSS while the `with` block runs, sampled every `interval` seconds by a thread (torch ops
    release the GIL). Unlike the high-water mark it ignores the file-backed pages of loaded libraries, which the
    kernel may drop and reload under memory pressure from other processes (that made VmHWM deltas jump by
    hundreds of MiB between runs). Allocations living < `interval` can be missed."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.start = self.peak = float("nan")
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, anon_rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> "AnonPeakSampler":
        self.start = self.peak = anon_rss_mib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss_mib())

    @property
    def growth_mib(self) -> float:
        return self.peak - self.start


# ------------------------------------------------------------------------------------------------- workers
# For memory workers: glibc serves every allocation above 64 KiB with its own mmap and returns it on free, so the
# resident set follows the live tensors; by default freed heap memory is kept (by amounts that vary from run to run
# with thread timing: +-500 MiB seen on the same step), which made RSS peaks unrepeatable. Not used for timing.
EXACT_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_worker(script: str, args: Sequence[str], timeout: Optional[float] = None,
               env: Optional[dict] = None) -> dict:
    """Run `python script *args` in a fresh process (extra `env` variables); it prints one JSON object as its last
    stdout line."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
        raise RuntimeError(f"worker `{' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def emit(result: dict) -> None:
    """A worker's answer: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- output
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def write_json(path: str, payload: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def machine_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)  # > the core count: other processes share the CPU
    return info
