"""ingest/lateness: the watermark (latest event date loaded minus allowedLateness), rows older than it
held in ops.dead_letter with a reason that says how to release them, the filter that keeps held rows
out of a rebuild, and a release that makes their partitions stale. On a real warehouse in tmp."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from contracts.loader import load_contracts
from orchestration.ingest import lateness


@pytest.fixture(scope="module")
def flights():
    return load_contracts()["flights"]  # allowedLateness 30 days


def land(con, path: str, file_id: str, dates: list[str], status: str = "loaded", source: str = "flights") -> None:
    con.execute("INSERT INTO ops.landed_files (source, path, file_id, event_dates, status, landed_at) VALUES (?, ?, ?, ?, ?, now())",
                [source, path, file_id, json.dumps(dates), status])


def bronze(con, contract, rows: list[tuple[str, str, int]]) -> None:
    """The temp view _bronze a rebuild reads: (file id, event date, row offset), contract columns as text."""
    cols = ", ".join(f'NULL::VARCHAR AS "{c.name}"' for c in contract.columns if c.name != "carrier")
    values = ", ".join(f"('{f}', 'flights/{f}.csv', DATE '{d}', {o})" for f, d, o in rows)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _bronze_rows AS
        SELECT _file_id, _file_path, _event_date, _row_offset, 'UA' AS carrier, {cols}, '{{}}'::JSON AS _extra
        FROM (VALUES {values}) AS t(_file_id, _file_path, _event_date, _row_offset)""")
    con.execute("CREATE OR REPLACE TEMP VIEW _bronze AS SELECT * FROM _bronze_rows")


def dead(con) -> list[tuple]:
    return con.execute("SELECT file_id, strftime(partition_date, '%Y-%m-%d'), row_offset, rule_id, stage, severity, status "
                       "FROM ops.dead_letter ORDER BY ALL").fetchall()


def test_no_watermark_before_anything_loaded_or_without_allowed_lateness(warehouse_con, flights):
    assert lateness.watermark(warehouse_con, flights) is None
    land(warehouse_con, "flights/a.csv", "a", ["2013-03-20"])
    assert lateness.watermark(warehouse_con, dataclasses.replace(flights, allowed_lateness=None)) is None
    assert lateness.watermark(warehouse_con, load_contracts()["planes"]) is None  # a snapshot has no partitions


def test_the_watermark_is_the_latest_loaded_event_date_minus_allowed_lateness(warehouse_con, flights):
    land(warehouse_con, "flights/a.csv", "a", ["2013-03-01", "2013-03-20"])
    land(warehouse_con, "flights/b.csv", "b", ["2013-03-10"])
    land(warehouse_con, "flights/q.csv", "q", ["2013-06-01"], status="quarantined")  # never loaded: moves nothing
    land(warehouse_con, "weather/w.csv", "w", ["2013-09-01"], source="weather")
    assert lateness.watermark(warehouse_con, flights) == dt.date(2013, 2, 18)
    assert lateness.watermark(warehouse_con, dataclasses.replace(flights, allowed_lateness=dt.timedelta(days=3))) == dt.date(2013, 3, 17)


def test_rows_older_than_the_watermark_are_held_with_a_reason_that_says_how_to_release_them(warehouse_con, flights):
    bronze(warehouse_con, flights, [("late", "2013-01-05", 0), ("late", "2013-01-05", 1), ("late", "2013-01-07", 2),
                                    ("late", "2013-02-18", 3), ("fresh", "2013-03-01", 0)])
    held = lateness.hold(warehouse_con, flights, dt.date(2013, 2, 18), "run-1", "TRUE")
    assert held == ["2013-01-05", "2013-01-07"], "the watermark day itself is still accepted"
    rule = lateness.rule_id(flights)
    assert rule == "flights_allowed_lateness"
    assert dead(warehouse_con) == [("late", "2013-01-05", 0, rule, "bronze", "error", "open"),
                                   ("late", "2013-01-05", 1, rule, "bronze", "error", "open"),
                                   ("late", "2013-01-07", 2, rule, "bronze", "error", "open")]
    reason, payload = warehouse_con.execute("SELECT reason, payload FROM ops.dead_letter WHERE row_offset = 2").fetchone()
    assert reason.startswith("late beyond allowed lateness: event date 2013-01-07 is older than the watermark 2013-02-18")
    assert "allowedLateness of 30 days in contracts/flights.yaml" in reason
    assert reason.endswith("plumbline dlq release --source flights --partition 2013-01-07")
    assert json.loads(payload)["carrier"] == "UA"
    # holding the same rows again records nothing twice
    assert lateness.hold(warehouse_con, flights, dt.date(2013, 2, 18), "run-2", "TRUE") == held
    assert len(dead(warehouse_con)) == 3


def test_hold_applies_only_inside_the_given_range(warehouse_con, flights):
    bronze(warehouse_con, flights, [("late", "2013-01-05", 0), ("late", "2013-01-07", 1)])
    assert lateness.hold(warehouse_con, flights, dt.date(2013, 2, 18), "run-1", "_event_date >= DATE '2013-01-06'") == ["2013-01-07"]
    assert [r[1] for r in dead(warehouse_con)] == ["2013-01-07"]


def rebuilt_rows(con, contract) -> list[tuple]:
    return con.execute(f"SELECT _file_id, strftime(_event_date, '%Y-%m-%d') FROM _bronze "
                       f"WHERE {lateness.held_filter(con, contract)} ORDER BY ALL").fetchall()


def test_held_rows_stay_out_of_a_rebuild_until_released_then_their_partition_is_stale(warehouse_con, flights):
    land(warehouse_con, "flights/late.csv", "late", ["2013-03-01"])  # its late days were held at ingest
    land(warehouse_con, "flights/new.csv", "new", ["2013-03-20"])
    bronze(warehouse_con, flights, [("late", "2013-01-05", 0), ("late", "2013-01-07", 1), ("late", "2013-03-01", 2),
                                    ("new", "2013-01-05", 0)])
    assert lateness.held_filter(warehouse_con, flights) == "TRUE", "nothing held: no filter"
    lateness.hold(warehouse_con, flights, dt.date(2013, 2, 18), "run-1", "_file_id = 'late'")
    assert rebuilt_rows(warehouse_con, flights) == [("late", "2013-03-01"), ("new", "2013-01-05")], \
        "held per file and day: another file's rows of that day still load"

    assert lateness.release(warehouse_con, flights, ["2013-01-07"]) == ["2013-01-07"]
    statuses = {r[1]: r[6] for r in dead(warehouse_con)}
    assert statuses == {"2013-01-05": "open", "2013-01-07": "released"}
    events = dict(warehouse_con.execute("SELECT file_id, event_dates FROM ops.landed_files").fetchall())
    assert json.loads(events["late"]) == ["2013-01-07", "2013-03-01"], "the file now touches the released day"
    assert json.loads(events["new"]) == ["2013-03-20"]
    assert rebuilt_rows(warehouse_con, flights) == [("late", "2013-01-07"), ("late", "2013-03-01"), ("new", "2013-01-05")]

    lateness.resolve_released(warehouse_con, flights, ["2013-01-07"], "run-2")
    assert warehouse_con.execute("SELECT status, resolved_by_run FROM ops.dead_letter WHERE partition_date = DATE '2013-01-07'"
                                 ).fetchall() == [("resolved", "run-2")]
    assert lateness.release(warehouse_con, flights, None) == ["2013-01-05"], "no partitions: release everything held"
    assert lateness.held_filter(warehouse_con, flights) == "TRUE"


def test_releasing_what_is_not_held_changes_nothing(warehouse_con, flights):
    land(warehouse_con, "flights/a.csv", "a", ["2013-03-01"])
    assert lateness.release(warehouse_con, flights, ["2013-01-01"]) == []
    assert warehouse_con.execute("SELECT event_dates FROM ops.landed_files").fetchone()[0] == '["2013-03-01"]'
