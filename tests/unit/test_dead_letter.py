"""orchestration.quality.dead_letter on a real in-memory DuckDB holding the ops tables: writing
rejects (once each), holding, releasing and resolving them, and the counts other modules read."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from contracts.model import Column, Contract, Partitioning
from orchestration.ingest.readers import Reject
from orchestration.quality import dead_letter
from orchestration.warehouse import OPS_DDL, SNAPSHOT_PARTITION, literal

RUN = "run 'one'"  # quotes in every value that reaches SQL text


def _contract(partitioned: bool = True) -> Contract:
    return Contract(
        name="o'hare", id="ohare", version="1.0.0", path="contracts/ohare.yaml", description="", table="raw.ohare",
        owners=(), rules=(), allowed_lateness=dt.timedelta(days=30),
        columns=(Column("gate", "string", "VARCHAR", required=True, primary_key_position=0),
                 Column("day", "date", "DATE")),
        partitioning=Partitioning(("day",), "day", "UTC", dt.date(2013, 1, 1), dt.date(2014, 1, 1)) if partitioned else None)


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute(OPS_DDL)
    yield c
    c.close()


def _bronze(con, rows: list[tuple[str, str | None, int]], file_id: str = "f1") -> None:
    """The temp table _bronze as bronze leaves it: contract columns as text, _extra, provenance."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _bronze (gate VARCHAR, "day" VARCHAR, _extra VARCHAR, _row_offset BIGINT,
                   _file_id VARCHAR, _file_path VARCHAR, _delivered_at TIMESTAMPTZ, _event_date DATE)""")
    con.executemany("INSERT INTO _bronze VALUES (?, ?, ?, ?, ?, ?, NULL, ?::DATE)",
                    [(gate, day, json.dumps({"note": "it's"}), offset, file_id, f"o'hare/{file_id}.csv", day)
                     for gate, day, offset in rows])


def _stage(con, rows: list[tuple[str | None, int, str]]) -> None:
    """The temp table _stage a rebuild leaves: (partition, row offset, failed rule ids) of file f1."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _stage (_file_id VARCHAR, _file_path VARCHAR, _row_offset BIGINT,
                   _event_date DATE, _failed VARCHAR, _reason VARCHAR, _payload JSON)""")
    if rows:
        con.executemany("INSERT INTO _stage VALUES ('f1', 'o''hare/f1.csv', ?, ?::DATE, ?, ?, '{}')",
                        [(offset, day, failed, f"gate 'x' breaks {failed}" if failed else None) for day, offset, failed in rows])


def _statuses(con) -> list[tuple]:
    return con.execute("""SELECT strftime(partition_date, '%Y-%m-%d'), row_offset, rule_id, stage, status, resolved_by_run
                          FROM ops.dead_letter ORDER BY row_offset, rule_id""").fetchall()


def test_record_rows_writes_each_rejected_row_once_with_its_values(con):
    contract = _contract()
    _bronze(con, [("A'1", "2013-01-05", 0), ("B2", "2015-06-01", 1)])  # the second is outside the partitions
    for _ in range(2):  # a re-run finds the rows there and changes nothing
        dead_letter.record_rows(con, contract, "SELECT * FROM _bronze", "o'hare_schema_column_added",
                                "column 'note' added", "warning", RUN)
    rows = con.execute("""SELECT source, strftime(partition_date, '%Y-%m-%d'), file_path, row_offset, rule_id, stage, reason,
                          severity, payload, run_id, attempts, status FROM ops.dead_letter ORDER BY row_offset""").fetchall()
    assert [r[:8] for r in rows] == [
        ("o'hare", "2013-01-05", "o'hare/f1.csv", 0, "o'hare_schema_column_added", "bronze", "column 'note' added", "warning"),
        ("o'hare", None, "o'hare/f1.csv", 1, "o'hare_schema_column_added", "bronze", "column 'note' added", "warning")]
    assert json.loads(rows[0][8]) == {"gate": "A'1", "day": "2013-01-05", "_extra": {"note": "it's"}}
    assert {r[9:] for r in rows} == {(RUN, 1, "open")}


def test_open_rows_are_listed_by_rule_most_frequent_first(con):
    _stage(con, [("2013-01-05", 0, "gate_pattern"), ("2013-01-05", 1, "gate_required"), ("2013-01-06", 2, "gate_required")])
    dead_letter.record_stage_failures(con, _contract(), RUN, ["2013-01-05", "2013-01-06"])
    assert [r[1:3] for r in dead_letter.open_by_rule(con)] == [("gate_required", 2), ("gate_pattern", 1)]


def test_bronze_rejects_are_read_stage_rows_counted_per_partition(con):
    contract = _contract()
    rejects = [Reject(3, "csv_unparseable_line", 'x,"y', "line 3: bad quote", partition="2013-01-05"),
               Reject(4, "csv_unparseable_line", "z'", "line 4: bad", partition="2013-01-05"),
               Reject(9, "csv_unparseable_line", "?", "line 9: bad")]  # no readable event date
    dead_letter.record_bronze_rejects(con, contract, "f1", "o'hare/f1.csv", rejects, RUN)
    dead_letter.record_bronze_rejects(con, contract, "f2", "o'hare/f2.csv", rejects[:1], RUN)
    assert dead_letter.read_rejects(con, "o'hare", ["2013-01-05", "2013-01-06"]) == {"2013-01-05": (3, ["f1", "f2"])}
    assert dead_letter.read_rejects(con, "o'hare", None) == {SNAPSHOT_PARTITION: (1, ["f1"])}
    assert dead_letter.counted_in_accounting(con, "o'hare", "2013-01-05") == 3
    assert dead_letter.counted_in_accounting(con, "o'hare", None) == 1
    assert con.execute("SELECT DISTINCT stage, rule_id FROM ops.dead_letter").fetchall() == [
        ("read", "o'hare_csv_unparseable_line")]


def test_stage_failures_are_recorded_then_resolved_by_the_run_that_passes_them(con):
    contract = _contract()
    _stage(con, [("2013-01-05", 0, "gate_required"), ("2013-01-05", 1, ""), ("2013-01-06", 2, "gate_pattern,gate_required")])
    dead_letter.record_stage_failures(con, contract, RUN, ["2013-01-05", "2013-01-06"])
    assert _statuses(con) == [("2013-01-05", 0, "gate_required", "raw", "open", None),
                              ("2013-01-06", 2, "gate_pattern", "raw", "open", None)]  # the first failed rule names the row
    assert dead_letter.counted_in_accounting(con, "o'hare", "2013-01-05") == 1
    assert sorted(dead_letter.open_by_rule(con)) == [("o'hare", "gate_pattern", 1, "gate 'x' breaks gate_pattern,gate_required"),
                                                     ("o'hare", "gate_required", 1, "gate 'x' breaks gate_required")]
    # After a contract fix nothing fails: only the rebuilt partition's rows are resolved, never deleted.
    _stage(con, [("2013-01-05", 0, ""), ("2013-01-05", 1, "")])
    dead_letter.record_stage_failures(con, contract, "run 'two'", ["2013-01-05"])
    assert _statuses(con) == [("2013-01-05", 0, "gate_required", "raw", "resolved", "run 'two'"),
                              ("2013-01-06", 2, "gate_pattern", "raw", "open", None)]
    assert dead_letter.counted_in_accounting(con, "o'hare", "2013-01-05") == 0
    assert dead_letter.open_rule_counts_outside(con, "o'hare", ["2013-01-05"]) == {"gate_pattern": {"2013-01-06": 1}}
    assert dead_letter.open_rule_counts_outside(con, "o'hare", ["2013-01-06"]) == {}
    assert dead_letter.open_rule_counts_outside(con, "o'hare", []) == {"gate_pattern": {"2013-01-06": 1}}


def test_a_snapshot_resolves_only_rows_without_a_partition(con):
    contract = _contract(partitioned=False)
    _stage(con, [(None, 0, "gate_required"), ("2013-01-05", 1, "gate_required")])
    dead_letter.record_stage_failures(con, contract, RUN, None)
    _stage(con, [])
    dead_letter.record_stage_failures(con, contract, "run 'two'", None)
    assert [(p, status) for p, _, _, _, status, _ in _statuses(con)] == [(None, "resolved"), ("2013-01-05", "open")]


def test_held_rows_stay_out_until_released_then_the_rebuild_resolves_them(con):
    contract = _contract()
    rule = "o'hare_allowed_lateness"
    assert dead_letter.excluding_open(con, "o'hare", rule) == "TRUE"  # nothing held: no filter to pay for
    _bronze(con, [("A", "2013-01-05", 0), ("B", "2013-01-06", 1), ("C", "2013-03-01", 2)])
    reason = literal("late: event date ") + " || _event_date"
    dead_letter.hold(con, contract, "_event_date < '2013-02-01'::DATE", rule, reason, RUN)
    dead_letter.hold(con, contract, "_event_date < '2013-02-01'::DATE", rule, reason, RUN)  # once each
    assert con.execute("SELECT row_offset, reason, stage, status FROM ops.dead_letter ORDER BY 1").fetchall() == [
        (0, "late: event date 2013-01-05", "bronze", "open"), (1, "late: event date 2013-01-06", "bronze", "open")]
    kept = dead_letter.excluding_open(con, "o'hare", rule)
    assert con.execute(f"SELECT gate FROM _bronze WHERE {kept} ORDER BY 1").fetchall() == [("C",)]
    assert sorted(dead_letter.open_files(con, "o'hare", rule, None)) == [("f1", "2013-01-05"), ("f1", "2013-01-06")]
    assert dead_letter.open_files(con, "o'hare", rule, ["2013-01-06"]) == [("f1", "2013-01-06")]

    dead_letter.release(con, "o'hare", rule, ["2013-01-06"])
    kept = dead_letter.excluding_open(con, "o'hare", rule)
    assert con.execute(f"SELECT gate FROM _bronze WHERE {kept} ORDER BY 1").fetchall() == [("B",), ("C",)]
    dead_letter.resolve_released(con, "o'hare", rule, ["2013-01-05", "2013-01-06"], "run 'two'")
    assert con.execute("SELECT row_offset, status, resolved_by_run FROM ops.dead_letter ORDER BY 1").fetchall() == [
        (0, "open", None), (1, "resolved", "run 'two'")]


def test_replay_selects_open_rule_rows_and_counts_an_attempt_only_when_revalidated(con):
    contract = _contract()
    _stage(con, [("2013-01-05", 0, "gate_required"), ("2013-01-06", 1, "gate_pattern")])
    dead_letter.record_stage_failures(con, contract, RUN, ["2013-01-05", "2013-01-06"])
    selected = dead_letter.replayable(con, "o'hare", "gate_required", None)
    assert selected == [("o'hare", "f1", 0, "gate_required", "2013-01-05")]
    assert len(dead_letter.replayable(con, None, None, "2013-01-06")) == 1
    assert dead_letter.replayable(con, "other", None, None) == []

    assert dead_letter.record_replay(con, selected, revalidated=False) == (0, 1)  # a failed run: attempts unchanged
    assert con.execute("SELECT attempts FROM ops.dead_letter WHERE row_offset = 0").fetchall() == [(1,)]
    assert dead_letter.record_replay(con, selected, revalidated=True) == (0, 1)  # still failing: one more attempt
    assert con.execute("SELECT attempts FROM ops.dead_letter ORDER BY row_offset").fetchall() == [(2,), (1,)]
    _stage(con, [("2013-01-05", 0, "")])
    dead_letter.record_stage_failures(con, contract, "run 'two'", ["2013-01-05"])
    assert dead_letter.record_replay(con, selected, revalidated=True) == (1, 0)
    assert dead_letter.replayable(con, "o'hare", "gate_required", None) == []
