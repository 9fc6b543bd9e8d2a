"""The offline GPU check kit: collect wheels here (network), run the GPU check there (no network).

    python -m benchmarks.gpu_kit collect [--out gpu_kit_wheels]     # here: the pinned wheels (requirements.txt)
    python -m benchmarks.gpu_kit run [--wheels gpu_kit_wheels] [--out gpu_kit_out] [--device cuda|cpu] [--tiny]
                                     [--checks a,b,...] [--no-install]

`collect` downloads, for CPython 3.12 on manylinux x86_64, the wheels pinned in benchmarks/gpu_kit/requirements.txt
(what a current GPU image -- torch, transformers, numpy, triton -- lacks), without their dependencies (the list
is complete). `run` installs them with `pip --no-index --no-deps --target OUT/site` (nothing outside OUT changes),
then runs benchmarks/gpu_smoke.py one check per process, each under its own time budget and all under one deadline
(a check that hangs or crashes is one FAIL entry; the others still run), and writes OUT/smoke.json and OUT/smoke.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_5_x86_64",
             "manylinux2010_x86_64", "manylinux_2_12_x86_64", "manylinux1_x86_64")
# Seconds per gpu_smoke check (each in its own process, imports included) on a GPU; --tiny on a CPU gets CPU_BUDGET
# each. The GPU budgets add up to under 8 minutes with the install.
GPU_BUDGETS = {"a": 60, "b": 30, "c": 90, "d": 45, "e": 150, "f": 90, "g": 30}
CPU_BUDGET = 300
GPU_DEADLINE = 450


def pinned(path: Path = REQUIREMENTS) -> list[tuple[str, bool]]:
    """(requirement, built from sdist) for each line of the pinned list."""
    out = []
    for line in path.read_text().splitlines():
        spec, _, comment = line.partition("#")
        if spec.strip():
            if "==" not in spec:
                raise SystemExit(f"{path}: {spec.strip()!r} is not pinned (name==version)")
            out.append((spec.strip(), comment.strip() == "sdist"))
    return out


def collect(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    wheels, sdists = [], []
    for spec, from_sdist in pinned():
        (sdists if from_sdist else wheels).append(spec)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", *platform_args, "-d", str(out), *wheels], check=True)
    if sdists:  # pure Python packages without a wheel: build theirs here
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(out), *sdists], check=True)
    files = sorted(out.glob("*.whl"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"# {len(files)} wheels, {size:.1f} MiB in {out}: carry it with this checkout, then run "
          f"`python -m benchmarks.gpu_kit run --wheels {out}` on the GPU machine")
    return 0


def install(wheels: Path, site: Path) -> None:
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"--wheels {wheels}: no .whl files; run `python -m benchmarks.gpu_kit collect` first")
    stamp = site / ".installed"
    names = "\n".join(f.name for f in files)
    if stamp.exists() and stamp.read_text() == names:
        return
    shutil.rmtree(site, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                    str(site), *map(str, files)], check=True)
    stamp.write_text(names)


def run_check(key: str, args, env: dict, timeout: float, log) -> dict:
    """One gpu_smoke check in its own process; a timeout or a crash is a FAIL entry with its reason."""
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "part.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu_smoke", "--device", args.device, "--checks", key, "--out",
               str(part)] + (["--tiny"] if args.tiny else [])
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            out, _ = proc.communicate(timeout=timeout)
            lines = out.splitlines()
            error = None if part.exists() else f"exited {proc.returncode} without a result: " + (
                [ln for ln in lines if ln.strip()] or ["(no output)"])[-1][:300]
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            lines = (out or "").splitlines()
            error = f"timed out after its budget of {timeout:.0f} s"
        log.write("\n".join(lines) + "\n")
        log.flush()
        print("\n".join(lines), flush=True)
        if error is None:
            return json.loads(part.read_text())["checks"][key]
        return {"title": key, "status": "FAIL", "error": error, "seconds": round(time.perf_counter() - start, 1),
                "rows": []}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    site = out / "site"
    if not args.no_install:
        install(Path(args.wheels), site)
    paths = [str(ROOT)] if args.no_install else [str(site), str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "WANDB_MODE": "offline"}
    keys = args.checks.split(",")
    deadline = time.monotonic() + (CPU_BUDGET * len(keys) if args.device == "cpu" else GPU_DEADLINE)
    results = {}
    with open(out / "smoke.log.tmp", "w") as log:
        probe = subprocess.run([sys.executable, "-c", "import composer, streaming, optimi, omegaconf, flexbert"],
                               cwd=ROOT, env=env, capture_output=True, text=True)
        if probe.returncode != 0:
            raise SystemExit(f"the kit's packages do not import: {probe.stderr.strip().splitlines()[-1]}")
        for key in keys:
            budget = CPU_BUDGET if args.device == "cpu" else GPU_BUDGETS.get(key, 60)
            remaining = deadline - time.monotonic()
            if remaining < 5:
                results[key] = {"title": key, "status": "FAIL", "error": "not run: the kit's deadline passed",
                                "seconds": 0.0, "rows": []}
                continue
            results[key] = run_check(key, args, env, min(budget, remaining), log)
    (out / "smoke.log.tmp").replace(out / "smoke.log")
    status = "FAIL" if any(r["status"] == "FAIL" for r in results.values()) else "PASS"
    summary = ", ".join(f"{k} {r['status']}" + (f" ({r['error']})" if r.get("error") else "")
                        for k, r in results.items())
    print(f"# gpu_kit: {summary} -> {status}")
    # goals (PASS / MISS / n/a) of the rows that have them; a MISS does not make the run FAIL
    targets = {f"{key}: {r['case']}: {name}": t["status"]
               for key, check in results.items() for r in check["rows"] for name, t in r.get("targets", {}).items()}
    if targets:
        print("# targets: " + "; ".join(f"{k} {v}" for k, v in targets.items()))
    tmp = out / "smoke.json.tmp"
    tmp.write_text(json.dumps({"status": status, "targets": targets, "checks": results}, indent=1))
    tmp.replace(out / "smoke.json")
    print(f"# wrote {out / 'smoke.json'} and {out / 'smoke.log'}")
    return 1 if status == "FAIL" else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="download the pinned wheels (needs the network)")
    c.add_argument("--out", default=str(ROOT / "gpu_kit_wheels"))
    r = sub.add_parser("run", help="install the wheels privately and run the GPU check, one check per process")
    r.add_argument("--wheels", default=str(ROOT / "gpu_kit_wheels"))
    r.add_argument("--out", default=str(ROOT / "gpu_kit_out"))
    r.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    r.add_argument("--tiny", action="store_true", help="gpu_smoke's small shapes (CPU mode)")
    r.add_argument("--checks", default="a,b,c,d,e,f,g", help="comma-separated gpu_smoke checks")
    r.add_argument("--no-install", action="store_true",
                   help="use this Python's installed packages instead of installing --wheels (an image that has them)")
    args = p.parse_args(argv)
    return collect(Path(args.out)) if args.command == "collect" else run(args)


if __name__ == "__main__":
    sys.exit(main())
