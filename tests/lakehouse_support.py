"""A private DuckLake for one test: a catalog database on the machine's PostgreSQL (127.0.0.1:5432,
or $PLUMBLINE_TEST_POSTGRES, as production_support.py) and a data directory, both with unique names
and removed afterwards; plus writer processes that pause at a chosen statement, for the race and
kill tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from production_support import PG, admin

PREFIX = "plumbline_lh_test_"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Lake:
    database: str
    catalog_url: str   # what PLUMBLINE_CATALOG_URL is set to
    data_path: Path    # what PLUMBLINE_DATA_PATH is set to


@contextlib.contextmanager
def fresh_lake(root: Path) -> Iterator[Lake]:
    """Create a catalog database and a data directory under root; drop both (and only them) after."""
    name = PREFIX + uuid.uuid4().hex[:12]
    with contextlib.closing(admin()) as pg, pg.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    data = root / f"lake-{name}"
    try:
        yield Lake(name, f"{PG}/{name}", data)
    finally:
        with contextlib.closing(admin()) as pg, pg.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(data, ignore_errors=True)


def point_at(monkeypatch, lake: Lake) -> None:
    monkeypatch.setenv("PLUMBLINE_CATALOG_URL", lake.catalog_url)
    monkeypatch.setenv("PLUMBLINE_DATA_PATH", str(lake.data_path))


def wait_for(condition, timeout_s: float = 60.0, every_s: float = 0.05, what: str = "condition"):
    """Poll until condition() is truthy; its value, or AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


# Run in a writer process (python -c WRITER): a connection to the production warehouse whose
# statements pass through a proxy that can meet other writers, pause or die at a chosen statement.
# argv: role, statement prefix to stop before, mode (meet:<n>:<dir> | pause:<dir> | none), lock (on|off),
# then the operation: replace <table> <days> <rows> | rebuild <source> <day or -> | ingest <source>.
WRITER = r'''
import json, os, signal, sys, time
from pathlib import Path
from orchestration import warehouse
from orchestration.lakehouse import Lakehouse

role, stop_before, mode, lock, op, *args = sys.argv[1:]

class Proxy:
    """The real connection; before the first statement starting with stop_before it meets or pauses."""
    def __init__(self, con):
        self.con, self.hit = con, False
    def _gate(self, sql):
        if self.hit or not str(sql).lstrip().startswith(stop_before):
            return
        self.hit = True
        kind, *rest = mode.split(":")
        if kind == "meet":  # wait (bounded) until n writers stand here: they all hold open transactions
            n, folder = int(rest[0]), Path(rest[1])
            (folder / f"at-{role}").write_text(str(time.time()))
            deadline = time.monotonic() + float(os.environ.get("MEET_TIMEOUT_S", "3"))
            while len(list(folder.glob("at-*"))) < n and time.monotonic() < deadline:
                time.sleep(0.02)
        elif kind == "pause":  # say so, then wait to be killed
            (Path(rest[0]) / f"paused-{role}").write_text(str(os.getpid()))
            while True:
                time.sleep(1)
    def execute(self, sql, *a, **k):
        self._gate(sql)
        return self.con.execute(sql, *a, **k)
    def executemany(self, sql, *a, **k):
        self._gate(sql)
        return self.con.executemany(sql, *a, **k)

with Lakehouse().connect() as con:
    if os.environ.get("GO_DIR"):  # connected: wait for the word, so that writers start together
        go = Path(os.environ["GO_DIR"])
        (go / f"ready-{role}").write_text("")
        while not (go / "go").exists():
            time.sleep(0.01)
    started = time.time()
    proxy = Proxy(con)
    locker = warehouse._LOCKERS.get(id(con))
    if lock == "on":
        warehouse.register_locker(proxy, locker)  # partition_lock finds the locker by connection
    if op == "replace":  # days: comma-separated; rows per day
        from orchestration.rebuild.partitions import replace_partitions
        table, days, rows = args
        dates = ", ".join(f"DATE '{d}'" for d in days.split(","))
        replace_partitions(proxy, table, f"CREATE TABLE IF NOT EXISTS {table} (event_date DATE, v BIGINT, writer VARCHAR)",
                           days.split(","), f"SELECT d AS event_date, i AS v, '{role}' AS writer FROM unnest([{dates}]) t(d), "
                                            f"range({int(rows)}) r(i) WHERE {{partition_filter}}")
    elif op == "ingest":  # every pending delivery of a source
        from contracts.loader import load_contracts
        from orchestration.ingest import bronze
        (source,) = args
        bronze.ingest_source(proxy, load_contracts()[source], f"run-{role}")
    else:  # rebuild <source> <day>, or - for a snapshot
        from contracts.loader import load_contracts
        from orchestration.rebuild import partitions
        source, day = args
        partitions.rebuild(proxy, load_contracts()[source], None if day == "-" else [day], f"run-{role}")
    warehouse.unregister_locker(proxy)
print(json.dumps({"role": role, "started": started, "ended": time.time()}))
'''


def start_writer(role: str, op: list[str], stop_before: str = "-", mode: str = "none", lock: str = "on",
                 env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, role, stop_before, mode, lock, *op], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"writer failed ({proc.returncode}):\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1]) | {"stderr": err}


def start_together(roles_ops: dict[str, tuple], folder: Path, timeout_s: float = 120) -> list[subprocess.Popen]:
    """Start one writer per role (start_writer's arguments after role), let them all connect, then
    give them the word at once: their replaces start within milliseconds of each other."""
    folder.mkdir(exist_ok=True)
    procs = [start_writer(role, *args, env={**kwargs, "GO_DIR": str(folder)}) for role, (args, kwargs) in roles_ops.items()]
    wait_for(lambda: all((folder / f"ready-{r}").exists() for r in roles_ops) or any(p.poll() is not None for p in procs),
             timeout_s, what="the writers to connect")
    (folder / "go").write_text("")
    return procs

