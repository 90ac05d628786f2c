"""Benchmark: how long the CLI's read commands take to answer, and what a step process spends loading
the code location, each against a bare baseline measured in the same run.

    .venv/bin/python bench/startup.py --home /tmp/startup-home [--repeat 5] [--repo DIR] [--before DIR]

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
with this .venv's libraries. --before DIR measures that checkout as well, in the same run: its
processes take turns with those of --repo, repeat by repeat, so both columns see the same load (on
a loaded machine even CPU seconds drift by a fifth within minutes); the table gains a before column
and the after/before ratio.
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


def measure(name: str, cases: dict[str, tuple[list[str], dict, Path]], repeat: int) -> dict:
    """The median wall and CPU of each case (label -> argv, env, cwd), their runs interleaved."""
    runs: dict[str, list] = {label: [] for label in cases}
    for i in range(repeat):
        for label in (list(cases) if i % 2 == 0 else list(cases)[::-1]):  # neither checkout always goes first
            runs[label].append(run_once(*cases[label]))
    row = {"name": name}
    for label, found in runs.items():
        if any(code for _, _, code in found):
            raise SystemExit(f"{name} exited 1: is {cases[label][1]['PLUMBLINE_HOME']} a synced home?")
        row[label] = (statistics.median(r[0] for r in found), statistics.median(r[1] for r in found))
    print(f"{name:<28} " + "  ".join(f"{label}: wall {w:6.2f} s  CPU {c:6.2f} s" for label, (w, c) in
                                     ((label, row[label]) for label in cases)), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a synced PLUMBLINE_HOME")
    parser.add_argument("--repo", type=Path, default=REPO, help="the plumbline checkout to measure (default this one)")
    parser.add_argument("--before", type=Path, help="another checkout to measure beside --repo, in the same run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    home = args.home.resolve()
    repos = {"after": args.repo.resolve(), **({"before": args.before.resolve()} if args.before else {})}
    warehouse = home / "warehouse.duckdb"
    if not warehouse.is_file():
        raise SystemExit(f"{warehouse} does not exist: run plumbline feed --profile demo && plumbline sync with PLUMBLINE_HOME={home}")
    base_env = dict(os.environ, PLUMBLINE_HOME=str(home))
    for variable in ("PLUMBLINE_DEPLOYMENT", "DAGSTER_HOME", "PLUMBLINE_DAGSTER_URL", "DAGSTER_WEBSERVER_URL"):
        base_env.pop(variable, None)  # the embedded deployment on this home, as a user runs it
    envs = {label: {**base_env, "PYTHONPATH": str(repo)} for label, repo in repos.items()}
    py = sys.executable
    bare_duckdb = (f"import duckdb; duckdb.connect({str(warehouse)!r}, read_only=True)"
                   ".sql('select count(*) from ops.dead_letter').fetchall()")
    print(f"code {', '.join(f'{label} {repo}' for label, repo in repos.items())}, home {home}, median of {args.repeat}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)

    def bare(argv: list[str]) -> dict:
        return {"after": (argv, envs["after"], repos["after"])}

    def each_repo(code: str, argv: list[str] = ()) -> dict:
        return {label: ([py, "-c", code.format(repo=str(repos[label])), *argv], envs[label], repos[label])
                for label in repos}

    rows = [measure("python", bare([py, "-c", "pass"]), args.repeat),
            measure("bare duckdb", bare([py, "-c", bare_duckdb]), args.repeat)]
    for argv in READ_COMMANDS:
        rows.append(measure(f"plumbline {' '.join(argv)}", each_repo(CLI, argv), args.repeat))
    rows.append(measure("bare dagster", bare([py, "-c", "import dagster"]), args.repeat))
    rows.append(measure("definitions", each_repo(DEFINITIONS), args.repeat))

    base = {"read": rows[1], "step": rows[-2]}
    print(f"\nload after: {os.getloadavg()[0]:.1f}\n")
    before = "before" in repos
    after = "after: " if before else ""
    print("| process | " + ("before: CPU s | " if before else "") + f"{after}wall s | {after}CPU s | {after}CPU vs bare |"
          + (" CPU after / before |" if before else ""))
    print("|---|" + ("---:|" if before else "") + "---:|---:|---:|" + ("---:|" if before else ""))
    for r in rows:
        against = base["step"] if r["name"] == "definitions" else base["read"] if r["name"].startswith("plumbline") else None
        wall, cpu = r["after"]
        ratio = f"{cpu / against['after'][1]:.2f}x {against['name']}" if against else ""
        cells = [r["name"], *([f"{r['before'][1]:.2f}" if "before" in r else ""] if before else []),
                 f"{wall:.2f}", f"{cpu:.2f}", ratio,
                 *([f"{cpu / r['before'][1]:.2f}" if "before" in r else ""] if before else [])]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
