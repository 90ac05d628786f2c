"""rebuild/conform: the SQL a contract compiles to turns delivered text into typed rows, sends a row
that breaks an error rule to the dead-letter verdict with a reason naming column, value and rule,
and never guesses what a time without an offset means. Run on an in-memory DuckDB."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from contracts.model import Column, Contract, Rule
from orchestration.rebuild.conform import stage_select

UTC = dt.timezone.utc
COLUMNS = ("id", "amount", "code", "at", "local_at", "note")


def contract() -> Contract:
    columns = (
        Column("id", "integer", "BIGINT", required=True, primary_key_position=1),
        Column("amount", "number", "DOUBLE", null_sentinels=(-999, "NA")),
        Column("code", "string", "VARCHAR"),
        Column("at", "timestamp", "TIMESTAMPTZ"),  # UTC-aware: a delivered time must name its offset
        Column("local_at", "timestamp", "TIMESTAMPTZ", source_timezone="America/New_York"),
        Column("note", "string", "VARCHAR"),
    )
    rules = (
        Rule("t_id_required", "required", "error", column="id"),
        Rule("t_id_type", "type", "error", column="id"),
        Rule("t_amount_type", "type", "error", column="amount"),
        Rule("t_at_type", "type", "error", column="at"),
        Rule("t_local_at_type", "type", "error", column="local_at"),
        Rule("t_amount_range", "range", "error", column="amount", minimum=0, maximum=1000, description="amount in 0..1000"),
        Rule("t_code_pattern", "pattern", "error", column="code", pattern="^[A-Z]{2}$", description="two capitals"),
        Rule("t_code_values", "allowed_values", "warning", column="code", values=("AA",)),  # a warning never rejects
    )
    return Contract(name="t", id="t", version="1.0.0", path="t.yaml", description="", table="raw.t", owners=(),
                    columns=columns, rules=rules, partitioning=None, allowed_lateness=None)


ROW = dict(id="1", amount="12.5", code="UA", at="2013-01-01T05:00:00Z", local_at="2013-01-01T05:00:00Z", note="")


def stage(*rows: dict) -> list[dict]:
    """Each row (delivered text, ROW filled in) staged through the contract's SQL, by row offset."""
    con = duckdb.connect()
    con.execute("CREATE TABLE bronze (_file_id VARCHAR, _file_path VARCHAR, _row_offset BIGINT, _event_date DATE, "
                "_delivered_at TIMESTAMPTZ, _extra JSON, " + ", ".join(f'"{c}" VARCHAR' for c in COLUMNS) + ")")
    for i, row in enumerate(rows):
        values = {**ROW, **row}
        con.execute(f"INSERT INTO bronze VALUES ('f1', 'landing/t/t.csv', ?, DATE '2013-01-01', TIMESTAMPTZ '2013-01-02 06:00:00+00', "
                    f"'{{}}', {', '.join('?' for _ in COLUMNS)})", [i, *(values[c] for c in COLUMNS)])
    cur = con.execute(stage_select(contract(), "SELECT * FROM bronze") + " ORDER BY _row_offset")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def test_a_clean_row_is_cast_to_the_contract_types_with_its_provenance_and_no_verdict():
    [row] = stage({"id": "42", "amount": "12.5", "code": "UA"})
    assert (row["id"], row["amount"], row["code"]) == (42, 12.5, "UA")
    assert row["at"] == dt.datetime(2013, 1, 1, 5, tzinfo=UTC)
    assert (row["_file_id"], row["_file_path"], row["_row_offset"]) == ("f1", "landing/t/t.csv", 0)
    assert (row["_failed"], row["_reason"], row["_payload"]) == ("", None, None)


@pytest.mark.parametrize("text,value", [("12", 12), ("12.0", 12), (" 7", 7)])
def test_whole_numbers_are_integers(text, value):
    [row] = stage({"id": text})
    assert row["id"] == value and row["_failed"] == ""


@pytest.mark.parametrize("text", ["12.7", "12x", "1e40"])
def test_a_value_that_is_not_exactly_an_integer_is_a_type_failure_not_a_rounded_number(text):
    [row] = stage({"id": text})
    assert row["_failed"] == "t_id_type"
    assert row["_reason"] == f"id '{text}' does not parse as integer [t_id_type]"


def test_a_missing_required_value_says_so():
    [row] = stage({"id": ""})
    assert row["id"] is None and row["_failed"] == "t_id_required"
    assert row["_reason"] == "id null is missing (required) [t_id_required]"


@pytest.mark.parametrize("text", ["-999", "-999.0", "NA"])
def test_null_sentinels_become_null_and_break_no_rule(text):
    [row] = stage({"amount": text})
    assert row["amount"] is None and row["_failed"] == ""


def test_not_a_finite_number_is_a_type_failure():
    nan, inf, ten = stage({"amount": "NaN"}, {"amount": "inf"}, {"amount": "ten"})
    assert "t_amount_type" in nan["_failed"].split(",") and "t_amount_type" in inf["_failed"].split(",")
    assert ten["_failed"] == "t_amount_type" and ten["amount"] is None


def test_value_rules_reject_with_the_offending_value_and_the_rule_description():
    out, bad = stage({"amount": "1000.5"}, {"code": "ua"})
    assert out["_failed"] == "t_amount_range" and out["amount"] == 1000.5
    assert out["_reason"] == "amount '1000.5' breaks 'amount in 0..1000' [t_amount_range]"
    assert bad["_failed"] == "t_code_pattern" and bad["_reason"] == "code 'ua' breaks 'two capitals' [t_code_pattern]"


def test_every_broken_rule_is_listed_and_the_payload_keeps_the_text_as_delivered():
    [row] = stage({"id": "x", "amount": "-5", "code": "u"})
    assert row["_failed"].split(",") == ["t_id_type", "t_amount_range", "t_code_pattern"]
    assert row["_reason"].count("; ") == 2
    payload = json.loads(row["_payload"])
    assert {c: payload[c] for c in ("id", "amount", "code")} == {"id": "x", "amount": "-5", "code": "u"}
    assert payload["_extra"] == {}


def test_a_long_value_is_shortened_in_the_reason_and_kept_whole_in_the_payload():
    long = "9" * 300 + "x"
    [row] = stage({"id": long})
    assert row["_reason"].startswith("id '" + "9" * 10) and "… (301 characters)" in row["_reason"]
    assert len(row["_reason"]) < 300
    assert json.loads(row["_payload"])["id"] == long


@pytest.mark.parametrize("text,utc", [
    ("2013-01-01T05:00:00Z", dt.datetime(2013, 1, 1, 5)),
    ("2013-01-01 00:00:00-05:00", dt.datetime(2013, 1, 1, 5)),
    ("2013-07-01T08:30:00+0200", dt.datetime(2013, 7, 1, 6, 30)),
    ("2013-01-01 05:00:00 UTC", dt.datetime(2013, 1, 1, 5)),
])
def test_a_time_with_an_offset_is_read_at_that_offset(text, utc):
    [row] = stage({"at": text})
    assert row["_failed"] == "" and row["at"] == utc.replace(tzinfo=UTC)


def test_a_time_without_an_offset_in_a_utc_column_is_a_type_failure_that_says_how_to_fix_it():
    [row] = stage({"at": "2013-01-01 05:00:00"})
    assert row["_failed"] == "t_at_type"
    assert row["_reason"] == ("at '2013-01-01 05:00:00' does not parse as a timestamp with a UTC offset (add Z or +HH:MM, "
                              "or declare the column's sourceTimezone in the contract) [t_at_type]")


@pytest.mark.parametrize("text,utc", [
    ("2013-01-15 08:00:00", dt.datetime(2013, 1, 15, 13)),    # EST, UTC-5
    ("2013-07-15 08:00:00", dt.datetime(2013, 7, 15, 12)),    # EDT, UTC-4
    ("2013-03-10 03:30:00", dt.datetime(2013, 3, 10, 7, 30)),  # just after the spring-forward gap
    ("2013-07-15T08:00:00Z", dt.datetime(2013, 7, 15, 8)),    # an explicit offset still wins
])
def test_a_naive_time_in_a_column_with_a_source_timezone_is_local_to_that_zone(text, utc):
    [row] = stage({"local_at": text})
    assert row["_failed"] == "" and row["local_at"] == utc.replace(tzinfo=UTC)


def test_a_time_that_does_not_parse_is_a_type_failure_in_either_kind_of_column():
    [row] = stage({"at": "yesterday", "local_at": "2013-02-30 08:00"})
    assert row["_failed"] == "t_at_type,t_local_at_type"
    assert "local_at '2013-02-30 08:00' does not parse as timestamp [t_local_at_type]" in row["_reason"]
