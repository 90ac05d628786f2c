"""Benchmark: how long the CLI's read commands take to answer, and what a step process spends loading
the code location, each against a bare baseline measured in the same run.

    .venv/bin/python bench/startup.py --home /tmp/startup-home [--repeat 5] [--repo DIR]

--home is a home `plumbline feed --profile demo && plumbline sync` filled (not timed here). Each case
is a fresh interpreter (what a user's command and a Dagster step process are); wall and CPU (user +
system, from wait4) are the median of --repeat runs:

  python           python -c pass: the interpreter alone
  bare duckdb      python -c "import duckdb; duckdb.connect(home/warehouse.duckdb, read_only=True)
                   .sql('select count(*) from ops.dead_letter')": the least a read command does
  bare dagster     python -c "import dagster": the least a step process does
  plumbline ...    the console script's main() with those arguments, on --home
  definitions      import orchestration.definitions and build its repository (every job and
                   sensor), as a step process does before it runs its step

--repo measures the code of another checkout of plumbline (e.g. `git archive <commit>` unpacked)
with this .venv's libraries: the before/after figures in docs/benchmarks.md come from one run each.
This is a benchmark, not a test: it prints figures and a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CLI = "import sys; sys.path.insert(0, {repo!r}); from orchestration.ops.cli import main; sys.exit(main(sys.argv[1:]))"
DEFINITIONS = ("import sys; sys.path.insert(0, {repo!r}); import orchestration.definitions as d; "
               "d.defs.get_repository_def().get_all_jobs()")
READ_COMMANDS = [["summary"], ["restatements"], ["dlq", "list"], ["contracts", "lint"]]


def run_once(argv: list[str], env: dict, cwd: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit code) of one fresh process."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if child.returncode not in (0, 1):  # dlq list and friends exit 1 only on an empty home, checked below
        raise SystemExit(f"{' '.join(argv[-3:])} failed ({child.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, child.returncode


def measure(name: str, argv: list[str], env: dict, cwd: Path, repeat: int) -> dict:
    runs = [run_once(argv, env, cwd) for _ in range(repeat)]
    if any(code for _, _, code in runs):
        raise SystemExit(f"{name} exited 1: is {env['PLUMBLINE_HOME']} a synced home?")
    wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"{name:<28} wall {wall:6.2f} s  CPU {cpu:6.2f} s", flush=True)
    return {"name": name, "wall": wall, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a synced PLUMBLINE_HOME")
    parser.add_argument("--repo", type=Path, default=REPO, help="the plumbline checkout to measure (default this one)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    home, repo = args.home.resolve(), args.repo.resolve()
    warehouse = home / "warehouse.duckdb"
    if not warehouse.is_file():
        raise SystemExit(f"{warehouse} does not exist: run plumbline feed --profile demo && plumbline sync with PLUMBLINE_HOME={home}")
    env = {**os.environ, "PLUMBLINE_HOME": str(home), "PYTHONPATH": str(repo)}
    for variable in ("PLUMBLINE_DEPLOYMENT", "DAGSTER_HOME", "PLUMBLINE_DAGSTER_URL", "DAGSTER_WEBSERVER_URL"):
        env.pop(variable, None)  # the embedded deployment on this home, as a user runs it
    py = sys.executable
    bare_duckdb = (f"import duckdb; duckdb.connect({str(warehouse)!r}, read_only=True)"
                   ".sql('select count(*) from ops.dead_letter').fetchall()")
    print(f"code {repo}, home {home}, median of {args.repeat}, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = [measure("python", [py, "-c", "pass"], env, repo, args.repeat),
            measure("bare duckdb", [py, "-c", bare_duckdb], env, repo, args.repeat)]
    for argv in READ_COMMANDS:
        rows.append(measure(f"plumbline {' '.join(argv)}", [py, "-c", CLI.format(repo=str(repo)), *argv], env, repo, args.repeat))
    rows.append(measure("bare dagster", [py, "-c", "import dagster"], env, repo, args.repeat))
    rows.append(measure("definitions", [py, "-c", DEFINITIONS.format(repo=str(repo))], env, repo, args.repeat))

    base = {"read": rows[1], "step": rows[-2]}
    print(f"\nload after: {os.getloadavg()[0]:.1f}\n")
    print("| process | wall s | CPU s | CPU vs bare |")
    print("|---|---:|---:|---:|")
    for r in rows:
        against = base["step"] if r["name"] == "definitions" else base["read"] if r["name"].startswith("plumbline") else None
        ratio = f"{r['cpu'] / against['cpu']:.1f}x {against['name']}" if against else ""
        print(f"| {r['name']} | {r['wall']:.2f} | {r['cpu']:.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
