"""The SQL toolkit of orchestration.warehouse, run against a real in-memory DuckDB: quoting of
hostile names and values, partition-key lists, the event-date range and the transaction helper."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from orchestration.warehouse import date_literal, date_range, delivered_ident, ident, key_list, literal, transaction

HOSTILE_TEXT = ["O'Hare", "''", "'; DROP TABLE t; --", "a''b", 'say "hi"', "back\\slash", "line\nbreak", "é ✈", ""]
HOSTILE_NAMES = ['we"ird', 'x"; DROP TABLE t; --', "a b", "select", "O'Hare", '""', "rowid", "É"]


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    yield c
    c.close()


def test_ident_quotes_safe_names_and_refuses_the_rest():
    assert ident("dep_delay") == '"dep_delay"'
    assert ident("_x9") == '"_x9"'
    for bad in ['a"b', "1a", "a b", "x; DROP TABLE t", "", "a-b"]:
        with pytest.raises(ValueError, match="not a safe SQL identifier"):
            ident(bad)


def test_delivered_ident_names_any_column_exactly_as_delivered(con):
    cols = ", ".join(f"{i} AS {delivered_ident(n)}" for i, n in enumerate(HOSTILE_NAMES))
    con.execute(f"CREATE TABLE t AS SELECT {cols}")
    assert [r[0] for r in con.execute("DESCRIBE t").fetchall()] == HOSTILE_NAMES
    for i, n in enumerate(HOSTILE_NAMES):  # and each one reads back its own value
        assert con.execute(f"SELECT {delivered_ident(n)} FROM t").fetchall() == [(i,)]


def test_literal_round_trips_hostile_text_and_plain_values(con):
    for text in HOSTILE_TEXT:
        assert con.execute(f"SELECT {literal(text)}").fetchall() == [(text,)]
    assert literal(None) == "NULL" and con.execute(f"SELECT {literal(None)}").fetchall() == [(None,)]
    assert literal(True) == "TRUE" and literal(False) == "FALSE"
    assert con.execute(f"SELECT {literal(42)}, {literal(-2.5)}").fetchall() == [(42, -2.5)]


def test_literal_is_safe_inside_read_csv_options(con, tmp_path):
    folder = tmp_path / "it's a \"folder\""
    folder.mkdir()
    path = folder / "o'hare.csv"
    path.write_text("a,b\n1,x\n")
    assert con.execute(f"SELECT * FROM read_csv({literal(str(path))}, header = true, auto_detect = false, "
                       "columns = {'a': 'VARCHAR', 'b': 'VARCHAR'})").fetchall() == [("1", "x")]


def test_date_literal_takes_iso_text_or_a_date(con):
    assert date_literal("2013-01-02") == "'2013-01-02'::DATE"
    assert con.execute(f"SELECT {date_literal('2013-01-02')}, {date_literal(dt.date(2013, 12, 31))}").fetchall() == [
        (dt.date(2013, 1, 2), dt.date(2013, 12, 31))]


def test_key_list_renders_partition_keys_for_in(con):
    assert key_list(["2013-01-01", "2013-01-03"]) == "('2013-01-01'::DATE, '2013-01-03'::DATE)"
    con.execute("CREATE TABLE t AS SELECT DATE '2013-01-01' + i::INTEGER AS event_date FROM range(5) r(i)")
    picked = con.execute(f"SELECT strftime(event_date, '%Y-%m-%d') FROM t WHERE event_date IN {key_list(['2013-01-01', '2013-01-03'])} "
                         "ORDER BY 1").fetchall()
    assert picked == [("2013-01-01",), ("2013-01-03",)]
    assert con.execute(f"SELECT count(*) FROM t WHERE event_date IN {key_list([])}").fetchall() == [(0,)]
    assert con.execute(f"SELECT count(*) FROM t WHERE event_date NOT IN {key_list([])}").fetchall() == [(5,)]


def test_a_hostile_partition_key_is_a_bad_date_never_sql(con):
    con.execute("CREATE TABLE t AS SELECT DATE '2013-01-01' AS event_date")
    with pytest.raises(ValueError, match="not a partition key"):
        key_list(["2013-01-01'::DATE); DROP TABLE t; --"])
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_date_range_is_half_open_and_may_be_open_ended(con):
    con.execute("CREATE TABLE t AS SELECT DATE '2012-12-30' + i::INTEGER AS d FROM range(6) r(i)")  # 12-30 .. 01-04

    def days(predicate: str) -> list[str]:
        return [r[0] for r in con.execute(f"SELECT strftime(d, '%Y-%m-%d') FROM t WHERE {predicate} ORDER BY 1").fetchall()]

    assert date_range("d", "2013-01-01", "2013-01-03") == "d >= '2013-01-01'::DATE AND d < '2013-01-03'::DATE"
    assert days(date_range("d", dt.date(2013, 1, 1), dt.date(2013, 1, 3))) == ["2013-01-01", "2013-01-02"]
    assert date_range("d", "2013-01-02") == "d >= '2013-01-02'::DATE"
    assert days(date_range("d", "2013-01-02")) == ["2013-01-02", "2013-01-03", "2013-01-04"]


def test_transaction_commits_when_the_block_ends(con):
    con.execute("CREATE TABLE t (x INTEGER)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1), (2)")
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


class _Crash(BaseException):
    """Not an Exception: a kill or KeyboardInterrupt must roll back too."""


@pytest.mark.parametrize("error", [RuntimeError("boom"), _Crash()])
def test_transaction_rolls_back_everything_on_an_error_and_reraises(con, error):
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    with pytest.raises(type(error)):
        with transaction(con):
            con.execute("DELETE FROM t")
            con.execute("INSERT INTO t VALUES (7), (8)")
            con.execute("CREATE TABLE u (y INTEGER)")
            raise error
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'u'").fetchall() == [(0,)]
    with transaction(con):  # no transaction is left open: the connection takes the next one
        con.execute("INSERT INTO t VALUES (2)")
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
