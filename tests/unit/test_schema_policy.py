"""ingest/schema_policy: a contract's schemaEvolution (freeze, discard_row, discard_value, evolve)
decides what happens to each change a delivery carries, and the SQL it yields drops or nulls
exactly the rows and values that carry it. On the shipped flights contract and an in-memory DuckDB."""

from __future__ import annotations

import dataclasses

import duckdb
import pytest

from contracts.loader import load_contracts
from contracts.model import EVOLUTION_KEYS
from orchestration.ingest.schema_changes import Change, Verdict
from orchestration.ingest.schema_policy import decide, quarantine_reason

TYPE_CHANGED = Change("type_changed", "dep_delay", "integer -> string; contract expects integer, 40 of 100 values do not fit",
                      True, "dataType", "integer", "string")
WIDENED = Change("type_widened", "air_time", "integer -> number", False, "dataType", "integer", "number")
PK_CHANGED = Change("primary_key_changed", None, "declared key is not unique: 2 keys repeat", False, "primaryKey")
RENAMED = Change("renamed", "dep_delay", "delivered as 'departure_delay' (declared in sourceNames)", False)


def added(name: str) -> Change:
    return Change("column_added", name, "delivered column the contract does not name", False, "columns")


def removed(name: str, required: bool) -> Change:
    return Change("column_removed", name, "required column missing from the delivery" if required
                  else "optional column missing; loaded as NULL", True, "columns")


def flights(**evolution):
    shipped = load_contracts()["flights"]
    return dataclasses.replace(shipped, schema_evolution={**shipped.schema_evolution, **evolution})


def verdict(*changes: Change) -> Verdict:
    return Verdict(schema=[], schema_hash="h", changes=list(changes))


def where(decision, change: Change) -> str:
    for bucket in ("quarantine", "discard_rows", "discard_values"):
        if change in getattr(decision, bucket):
            return bucket
    return "accepted"


@pytest.mark.parametrize("policy,expected", [
    ("freeze", "quarantine"), ("discard_row", "discard_rows"), ("discard_value", "discard_values"), ("evolve", "accepted")])
def test_a_breaking_type_change_goes_where_schema_evolution_data_type_says(policy, expected):
    d = decide(flights(dataType=policy), verdict(TYPE_CHANGED), missing=[])
    assert where(d, TYPE_CHANGED) == expected
    assert d.changes == [TYPE_CHANGED]
    if expected == "accepted":
        assert d.notes == [f"{TYPE_CHANGED.describe()}; accepted (schemaEvolution.dataType = evolve)"]
    elif expected == "discard_rows":
        assert d.notes == [f"{TYPE_CHANGED.describe()}; rows carrying it dead-lettered (schemaEvolution.dataType = discard_row)"]


def test_a_change_that_only_widens_is_noted_whatever_the_policy():
    d = decide(flights(dataType="freeze"), verdict(WIDENED), missing=[])
    assert (d.quarantine, d.discard_rows, d.discard_values) == ([], [], [])
    assert d.notes == ["type_widened air_time: integer -> number (non-breaking)"]


def test_a_declared_rename_is_silent():
    d = decide(flights(), verdict(RENAMED), missing=[])
    assert (d.quarantine, d.notes) == ([], [])


@pytest.mark.parametrize("policy", ["freeze", "discard_row", "discard_value", "evolve"])
def test_a_missing_required_column_quarantines_the_delivery_under_any_policy(policy):
    gone = removed("dep_delay", required=True)
    assert decide(flights(columns=policy), verdict(gone), missing=["dep_delay"]).quarantine == [gone]


@pytest.mark.parametrize("policy,quarantined", [("freeze", True), ("discard_value", True), ("discard_row", True), ("evolve", False)])
def test_a_missing_optional_column_loads_as_null_only_when_columns_evolve(policy, quarantined):
    gone = removed("air_time", required=False)
    d = decide(flights(columns=policy), verdict(gone), missing=[])
    assert (d.quarantine == [gone]) is quarantined
    if not quarantined:
        assert d.notes == [f"{gone.describe()}; accepted (schemaEvolution.columns = evolve)"]


@pytest.mark.parametrize("policy,expected", [("freeze", "quarantine"), ("discard_row", "discard_rows"),
                                             ("discard_value", "accepted"), ("evolve", "accepted")])
def test_added_columns_are_one_change_decided_by_schema_evolution_columns(policy, expected):
    d = decide(flights(columns=policy), verdict(added("gate"), added("terminal")), missing=[])
    [group] = d.changes
    assert (group.kind, group.column, group.detail) == (
        "column_added", None, "2 delivered columns the contract does not name: ['gate', 'terminal']")
    assert where(d, group) == expected
    if expected == "accepted":
        assert d.notes == [f"unexpected column(s) ['gate', 'terminal'] kept in _extra only (schemaEvolution.columns = {policy})"]


def test_one_added_column_stays_the_change_it_was():
    d = decide(flights(columns="freeze"), verdict(added("gate")), missing=[])
    assert d.changes == [added("gate")] and d.quarantine == [added("gate")]


def test_a_contract_without_a_setting_takes_the_default():
    shipped = load_contracts()["flights"]
    bare = dataclasses.replace(shipped, schema_evolution={})
    assert {k: bare.evolution_mode(k) for k in EVOLUTION_KEYS} == {"tables": "freeze", "columns": "discard_value",
                                                                   "dataType": "freeze", "primaryKey": "evolve"}
    assert where(decide(bare, verdict(PK_CHANGED), missing=[]), PK_CHANGED) == "accepted"
    assert where(decide(bare, verdict(TYPE_CHANGED), missing=[]), TYPE_CHANGED) == "quarantine"


def mapped(con) -> None:
    con.execute("""CREATE TEMP TABLE _mapped AS SELECT * FROM (VALUES
        (2013, 1, 1, 'UA', 1, 'EWR', '5', NULL),
        (2013, 1, 1, 'UA', 2, 'EWR', '7x', NULL),
        (2013, 1, 1, 'UA', 2, 'EWR', '', '{"gate": "B2"}'),
        (2013, 1, 1, 'AA', 3, 'JFK', '-3', '{"gate": null}')
    ) AS t(year, month, day, carrier, flight, origin, dep_delay, _extra)""")


def rows(con, sql: str) -> list[tuple]:
    return con.execute(f"SELECT flight, dep_delay FROM ({sql}) ORDER BY flight, dep_delay NULLS FIRST").fetchall()


def test_discard_value_nulls_exactly_the_values_that_do_not_fit_and_records_them_as_warnings():
    contract = flights(dataType="discard_value")
    d = decide(contract, verdict(TYPE_CHANGED), missing=[])
    con = duckdb.connect()
    mapped(con)
    assert rows(con, d.select_sql(contract)) == [(1, "5"), (2, None), (2, ""), (3, "-3")]
    [(rule, reason, severity, sql)] = d.discarded_sql(contract)
    assert (rule, severity) == ("flights_dep_delay_value_discarded", "warning")
    assert "loaded dep_delay as NULL" in reason and "flights.yaml:" in reason
    assert rows(con, sql) == [(2, "7x")]


def test_discard_row_drops_the_rows_that_carry_a_value_in_an_added_column():
    contract = flights(columns="discard_row")
    d = decide(contract, verdict(added("gate")), missing=[])
    con = duckdb.connect()
    mapped(con)
    assert rows(con, d.select_sql(contract)) == [(1, "5"), (2, "7x"), (3, "-3")], "a null in the new column carries nothing"
    [(rule, _, severity, sql)] = d.discarded_sql(contract)
    assert (rule, severity) == ("flights_schema_column_added", "error")
    assert rows(con, sql) == [(2, "")]


def test_discard_row_on_a_repeated_key_drops_every_row_of_that_key():
    contract = flights(primaryKey="discard_row")
    d = decide(contract, verdict(PK_CHANGED), missing=[])
    con = duckdb.connect()
    mapped(con)
    assert rows(con, d.select_sql(contract)) == [(1, "5"), (3, "-3")]
    [(_, _, _, sql)] = d.discarded_sql(contract)
    assert rows(con, sql) == [(2, ""), (2, "7x")]


def test_nothing_to_discard_selects_every_row_unchanged():
    contract = flights()
    con = duckdb.connect()
    mapped(con)
    assert len(rows(con, decide(contract, verdict(WIDENED), missing=[]).select_sql(contract))) == 4


def test_a_quarantine_reason_names_the_file_the_change_the_contract_line_and_the_replay():
    contract = flights(dataType="freeze")
    d = decide(contract, verdict(TYPE_CHANGED, WIDENED), missing=[])
    text = quarantine_reason(contract, "flights/2013/07/flights_20130702T0600Z.csv", d)
    assert text.startswith("quarantined: flights delivery flights/2013/07/flights_20130702T0600Z.csv carries a schema change")
    assert TYPE_CHANGED.describe() in text and "change the column's logicalType at contracts/flights.yaml:" in text
    assert "Other changes: type_widened air_time: integer -> number (non-breaking)" in text
    assert text.endswith("replay with `plumbline deliveries retry --source flights --file flights/2013/07/flights_20130702T0600Z.csv`")
