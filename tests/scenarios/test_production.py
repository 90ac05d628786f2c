"""The production profile on this machine's real services: the demo feed up to the end of March
(and the dimensions) synced with the Dagster instance in PostgreSQL, the warehouse in DuckLake on a
PostgreSQL catalog and every step on one of two `plumbline worker` Celery workers over RabbitMQ,
gives the same tables, row for row, as the embedded profile synced from the same deliveries; and
its lineage validates, one START and one terminal event per run.

Each test session makes its own PostgreSQL databases, RabbitMQ virtual host (so parallel sessions
never take each other's tasks) and data directories, and removes them at the end."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from openlineage_validation import errors, read_events

pytestmark = pytest.mark.slow

PG = os.environ.get("PLUMBLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
AMQP = os.environ.get("PLUMBLINE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
BIN = Path(sys.executable).parent
# The feed as it stood at noon on April 1st: every flights day of January to March (delivered the
# next morning), the weather weeks delivered by then, the dimensions, and the demo's faults among them.
CUTOFF = os.environ.get("PLUMBLINE_TEST_CUTOFF", "20130401T1200Z")
WORKERS = 2
READY_S = 120
# Columns that say when or by which run a row was written: different between any two syncs.
# (delivered_at comes from the file name: it stays.)
VOLATILE = ("first_seen", "last_seen", "resolved_by_run")


def volatile(column: str) -> bool:
    return column in VOLATILE or column.endswith(("run_id", "_at")) and not column.endswith("delivered_at")
ENV_PREFIXES = ("PLUMBLINE_", "OPENLINEAGE", "MLFLOW_", "DAGSTER_", "CELERY_")


@dataclass
class Synced:
    home: Path
    seconds: float
    output: str


def _admin():
    import psycopg2

    con = psycopg2.connect(f"{PG}/postgres")
    con.autocommit = True
    return con


def _rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to give this test its own RabbitMQ virtual host")
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _cut_feed(home: Path) -> None:
    """Remove every delivery made after CUTOFF (the delivery time is in the file name)."""
    for path in (home / "landing").rglob("*"):
        stamp = re.search(r"_(\d{8}T\d{4}Z)", path.name)
        if stamp and stamp.group(1) > CUTOFF:
            path.unlink()


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}


def _sync(env: dict, home: Path) -> Synced:
    t0 = time.monotonic()
    done = subprocess.run([str(BIN / "plumbline"), "sync"], env=env, cwd=home, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t0
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return Synced(home, seconds, output)


def _die_with_parent() -> None:
    """In the worker's process before it starts: SIGTERM it when the test process dies without its
    teardown (killed), so no worker outlives the session."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_for_workers(app, names: list[str], procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                pytest.fail(f"worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        replies = app.control.ping(timeout=1.0) or []
        answered = {name for reply in replies for name in reply}
        if all(any(a.startswith(n + "@") for a in answered) for n in names):
            return
    pytest.fail("workers not ready in time:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """The same feed synced twice: embedded (one process, a DuckDB file) and production (PostgreSQL
    instance, DuckLake, 2 Celery workers). Yields both homes with their wall times."""
    import psycopg2
    from celery import Celery

    from orchestration.demo.feed import write_feed

    tag = f"plumbline_t{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dbs = {role: f"{tag}_{role}" for role in ("instance", "catalog", "mlflow")}
    vhost = tag
    root = tmp_path_factory.mktemp("production")
    feed = root / "feed"
    write_feed(feed, profile="demo", seed=13)
    _cut_feed(feed)
    homes = {name: root / name for name in ("embedded", "production")}
    for home in homes.values():
        shutil.copytree(feed / "landing", home / "landing")

    admin = _admin()
    procs: list[subprocess.Popen] = []
    made_vhost = False
    try:
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'CREATE DATABASE "{db}"')
        _rabbitmqctl("add_vhost", vhost)
        made_vhost = True
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        broker = f"{AMQP}/{vhost}"

        base = {**_clean_env(), "PLUMBLINE_SETTLE_SECONDS": "0"}
        embedded = {**base, "PLUMBLINE_HOME": str(homes["embedded"])}
        production = {**base, "PLUMBLINE_HOME": str(homes["production"]), "PLUMBLINE_DEPLOYMENT": "production",
                      "PLUMBLINE_INSTANCE_URL": f"{PG}/{dbs['instance']}",
                      "PLUMBLINE_CATALOG_URL": f"{PG}/{dbs['catalog']}",
                      "PLUMBLINE_MLFLOW_URL": f"{PG}/{dbs['mlflow']}",
                      "PLUMBLINE_DATA_PATH": str(homes["production"] / "lake"),
                      "PLUMBLINE_BROKER_URL": broker}

        names = [f"{tag}-w{i}" for i in range(WORKERS)]
        logs = [root / f"{name}.log" for name in names]
        for name, log in zip(names, logs):
            with open(log, "wb") as out:
                procs.append(subprocess.Popen([str(BIN / "plumbline"), "worker", "--name", name], env=production,
                                              cwd=homes["production"], stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True, preexec_fn=_die_with_parent))
        app = Celery(broker=broker)
        _wait_for_workers(app, names, procs, logs)

        synced = {"production": _sync(production, homes["production"]), "embedded": _sync(embedded, homes["embedded"])}
        for name, done in synced.items():
            (root / f"{name}-sync.log").write_text(done.output)
        print(f"\nJan-Mar sync wall time: embedded {synced['embedded'].seconds:.1f}s, production with {WORKERS} "
              f"workers {synced['production'].seconds:.1f}s", file=sys.stderr)
        yield {**synced, "env": production, "logs": logs, "instance_url": production["PLUMBLINE_INSTANCE_URL"]}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        if made_vhost:
            _rabbitmqctl("delete_vhost", vhost)


def _tables(con) -> list[tuple[str, str]]:
    return [(s, t) for s, t in con.execute(
        """SELECT table_schema, table_name FROM information_schema.tables
           WHERE table_catalog = current_database() AND table_schema IN ('raw', 'core', 'marts', 'ml', 'ops')
           ORDER BY 1, 2""").fetchall()]


def _rows(con, schema: str, table: str) -> list[tuple]:
    """A table's rows ordered by every column, without the columns that say when or by which run a
    row was written."""
    cols = [c for (c,) in con.execute(
        """SELECT column_name FROM information_schema.columns
           WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?
           ORDER BY ordinal_position""", [schema, table]).fetchall()]
    listed = ", ".join(f'"{c}"' for c in cols if not volatile(c))
    return [tuple(cols), *con.execute(f'SELECT {listed} FROM {schema}."{table}" ORDER BY ALL').fetchall()]


def _fingerprints(con) -> dict[str, tuple[int, str]]:
    """Per table: (rows, sha256 over its rows ordered by every column but the volatile ones)."""
    out = {}
    for schema, table in _tables(con):
        header, *rows = _rows(con, schema, table)
        digest = hashlib.sha256(repr(header).encode())
        for row in rows:
            digest.update(repr(row).encode())
        out[f"{schema}.{table}"] = (len(rows), digest.hexdigest())
    return out


def _open(env: dict):
    """A read-only connection to one profile's warehouse, chosen as its processes choose it."""
    from orchestration.lakehouse import Lakehouse
    from orchestration.warehouse_resource import Warehouse

    return (Lakehouse() if env.get("PLUMBLINE_DEPLOYMENT") == "production" else Warehouse()).connect(read_only=True)


def test_production_profile_builds_the_same_tables_as_embedded(profiles, monkeypatch):
    found, samples = {}, {}
    for name in ("embedded", "production"):
        with monkeypatch.context() as mp:
            for k in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
                mp.delenv(k)
            env = profiles["env"] if name == "production" else {"PLUMBLINE_HOME": str(profiles["embedded"].home)}
            for k, v in env.items():
                if k.startswith("PLUMBLINE_"):
                    mp.setenv(k, v)
            with _open(env) as con:
                found[name] = _fingerprints(con)
                days = {str(d) for (d,) in con.execute(
                    "SELECT partition_date FROM ops.partition_accounting WHERE source = 'flights'").fetchall()}
                rules = dict(con.execute("SELECT rule_id, count(*) FROM ops.dead_letter GROUP BY 1").fetchall())
                samples[name] = {t: _rows(con, *t.split(".")) for t in found[name] if not t.startswith("ml.")}
    for must in ("raw.flights", "raw.weather", "raw.planes", "raw.airlines", "raw.airports", "core.flights",
                 "marts.carrier_daily", "ops.partition_accounting", "ops.dead_letter"):
        assert must in found["production"] and found["production"][must][0] > 0, must
    assert set(found["production"]) == set(found["embedded"])
    differ = {t: (found["embedded"][t], found["production"][t]) for t in found["embedded"]
              if found["embedded"][t] != found["production"][t]}
    if differ:  # say how: the first rows that are in one profile and not the other
        for t in differ:
            if t in samples["embedded"] and t in samples["production"]:
                e, p = samples["embedded"][t], samples["production"][t]
                print(t, e[0], "\n  only embedded:", [r for r in e[1:] if r not in p][:3],
                      "\n  only production:", [r for r in p[1:] if r not in e][:3], file=sys.stderr)
    assert not differ, differ
    assert all(f"2013-{m:02d}-{d:02d}" in days for m, last in ((1, 31), (2, 28), (3, 31)) for d in range(1, last + 1)), \
        "every day of January to March was built"
    assert rules, "the demo faults of January to March dead-letter rows"


def test_every_step_ran_on_a_worker_and_the_runs_are_in_postgresql(profiles, monkeypatch):
    import dagster as dg

    from orchestration.ops import sync
    from orchestration.ops.runs import HOST_TAG, PID_TAG
    from orchestration.rebuild.ranges import RANGE_END, RANGE_START

    with monkeypatch.context() as mp:
        for k in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
            mp.delenv(k)
        for k, v in profiles["env"].items():
            if k.startswith("PLUMBLINE_"):
                mp.setenv(k, v)
        instance = sync.instance()
        try:
            runs = instance.get_runs()
            assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.job_name, r.status) for r in runs]
            on_workers: Counter = Counter()
            for run in runs:
                for record in instance.all_logs(run.run_id):
                    entry = record.dagster_event
                    worker = entry.engine_event_data.metadata.get("Celery worker") if entry and entry.is_engine_event else None
                    if worker is not None:  # "Executing steps ... in celery worker", reported by the worker
                        on_workers[str(worker.value).split("@")[0]] += 1
            # the runs keep the tags an in-process run has: who executes them (never-stuck), which partition range
            assert all(PID_TAG in r.tags and HOST_TAG in r.tags for r in runs)
            ranged = [r for r in runs if r.job_name.startswith("rebuild_") or r.job_name == "build_features"]
            assert ranged and all((r.tags.get(RANGE_START), r.tags.get(RANGE_END)) == ("2013-01-01", "2013-03-31")
                                  for r in ranged), [(r.job_name, r.tags.get(RANGE_START), r.tags.get(RANGE_END)) for r in ranged]
            built = instance.get_materialized_partitions(dg.AssetKey(["raw", "flights"]))
            assert len(built) == 90 and min(built) == "2013-01-01" and max(built) == "2013-03-31"
            steps = sum(1 for run in runs for s in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records)
        finally:
            instance.dispose()
    assert sum(on_workers.values()) == steps > 0, (on_workers, steps)
    assert len(on_workers) == WORKERS, f"both workers took steps: {on_workers}"
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"


def test_production_lineage_validates_with_one_start_and_one_end_per_run(profiles):
    emitted = read_events(profiles["production"].home / "lineage" / "events.jsonl")
    assert emitted
    problems = [f"{e['job']['name']} {e['eventType']}: {p}" for e in emitted for p in errors(e)]
    assert not problems, problems[:10]
    by_run = defaultdict(list)
    for e in emitted:
        by_run[e["run"]["runId"]].append(e["eventType"])
    bad = {run: types for run, types in by_run.items()
           if types.count("START") != 1 or sum(types.count(t) for t in ("COMPLETE", "FAIL", "ABORT")) != 1}
    assert not bad, bad
    secret_free = "guest:guest" not in (profiles["production"].home / "lineage" / "events.jsonl").read_text()
    assert secret_free
