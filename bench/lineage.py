"""Benchmark: `plumbline sync` of the full year with OpenLineage on, against OPENLINEAGE_DISABLED=true.

    .venv/bin/python bench/lineage.py [--profile demo] [--repeat 1] [--workdir DIR]

The demo feed (every 2013 delivery, faults included) is written once; each measurement copies
that landing zone into a fresh PLUMBLINE_HOME and runs `plumbline sync` in its own subprocess,
alternating lineage on and off so both see the same machine load. Lineage on uses the default
transport (JSON lines under $PLUMBLINE_HOME/lineage/) through the spool. Prints the wall times,
the overhead and a markdown table; exits 0 whatever the figures are (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUMBLINE = Path(sys.executable).parent / "plumbline"
TARGET_OVERHEAD = 0.05


def sync_once(fed: Path, work: Path, lineage_on: bool) -> tuple[float, float, int]:
    """Wall and CPU seconds of one `plumbline sync` in a fresh home, and the events it wrote."""
    home = work / ("on" if lineage_on else "off")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(fed, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENLINEAGE", "DAGSTER_HOME"))}
    env["PLUMBLINE_HOME"] = str(home)
    if not lineage_on:
        env["OPENLINEAGE_DISABLED"] = "true"
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run([str(PLUMBLINE), "sync"], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"plumbline sync failed (lineage {'on' if lineage_on else 'off'}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    events_file = home / "lineage" / "events.jsonl"
    events = sum(1 for _ in events_file.open()) if events_file.exists() else 0
    return wall, cpu, events


def _children_cpu() -> float:
    """CPU seconds of finished child processes: less blurred than wall time on a loaded machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def emission_seconds(home: Path, work: Path) -> float:
    """Seconds the emitter takes, alone, to build and deliver the lineage of every run of a finished
    sync (re-emitted from its Dagster instance into a scratch home): the part of the overhead that
    machine load cannot blur."""
    scratch = work / "emit-again"
    shutil.rmtree(scratch, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")}
    env.update(PLUMBLINE_HOME=str(scratch), DAGSTER_HOME=str(home / "dagster"))
    code = ("import time; from orchestration import lineage, sync; from orchestration.definitions import defs; "
            "inst = sync.instance(); ids = [r.run_id for r in inst.get_runs()]; t = time.perf_counter(); "
            "[lineage.emit_run(inst, i, defs) for i in ids]; print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["clean", "demo"], default="demo")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (on, off alternate); the median is reported")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-lineage-"))
    work.mkdir(parents=True, exist_ok=True)
    fed = work / "fed"
    if not (fed / "landing").exists():
        env = {**os.environ, "PLUMBLINE_HOME": str(fed)}
        subprocess.run([str(PLUMBLINE), "feed", "--profile", args.profile], env=env, check=True, capture_output=True)
    times: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    events = 0
    for i in range(args.repeat):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            wall, cpu, n = sync_once(fed, work, on)
            times[on].append(wall)
            cpus[on].append(cpu)
            events = max(events, n)
            print(f"pair {i + 1}/{args.repeat}: lineage {'on ' if on else 'off'} {wall:7.2f} s wall, {cpu:7.2f} s CPU"
                  + (f" ({n} events)" if on else ""), flush=True)
    emit = emission_seconds(work / "on", work)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    cpu_on, cpu_off = statistics.median(cpus[True]), statistics.median(cpus[False])
    overhead = cpu_on / cpu_off - 1
    print()
    print(f"| `plumbline sync`, full year ({args.profile} feed), median of {args.repeat} | wall s | CPU s | CPU vs disabled |")
    print("|---|---:|---:|---:|")
    print(f"| OPENLINEAGE_DISABLED=true | {off:.2f} | {cpu_off:.2f} | 1.00x |")
    print(f"| lineage on ({events} events, JSON lines via the spool) | {on:.2f} | {cpu_on:.2f} | {cpu_on / cpu_off:.3f}x |")
    print(f"| emitter alone, every run of that sync re-emitted | {emit:.2f} | | {emit / cpu_off * 100:.2f}% of disabled CPU |")
    print()
    print(f"CPU overhead {overhead * 100:+.1f}% (target < {TARGET_OVERHEAD * 100:.0f}%): {'met' if overhead < TARGET_OVERHEAD else 'NOT met'}")
    print(json.dumps({"on_s": times[True], "off_s": times[False], "cpu_on_s": cpus[True], "cpu_off_s": cpus[False],
                      "events": events, "overhead_cpu": overhead, "emit_s": emit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
