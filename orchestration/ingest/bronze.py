"""Bronze: take every new delivery exactly once per content hash, keep it as an immutable parquet
file of text columns, and record it in ops.landed_files.

A file that cannot be taken gets a status and a reason and never stops the others. A file still
being written (landing.settle) is not taken and not recorded: it shows as `settling` in the run's
output and is taken by a later ingest. Lines the reader rejects are dead-lettered under stage `read`,
in the partition their event date gives when it can still be read from the line; the file keeps
the count (ops.landed_files: delivered lines = rows + rejected_at_read).

Small deliveries of a source, in any format (csv, csv.gz, jsonl, jsonl.gz, parquet), are read and
profiled together, one table per shape (orchestration.ingest.batch), and landed in path order in one
transaction per run of batch members read together, each with the verdict it gets alone; a run that
cannot land whole is rolled back and each of its files landed alone in its own transaction.
"""

from __future__ import annotations

import bisect
import contextvars
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from contracts.model import Contract
from orchestration.quality import dead_letter
from orchestration.ingest import batch, landing, lateness, schema_changes, schema_policy
from orchestration import settings
from orchestration.ingest.landing import Delivery, content_hash, discover
from orchestration.ingest.readers import TEMP_TABLE, Loaded, Reject, UnreadableFile, load_batched, load_delivery
from orchestration.warehouse import (SNAPSHOT_PARTITION, WriteConflict, date_range, delivered_ident, ident, insert_absent_values,
                                    insert_absent_rows, literal, partition_lock, retry_conflicts, transaction)


@dataclass
class LandedFile:
    source: str
    path: str
    file_id: str
    status: str
    rows: int = 0
    event_dates: tuple[str, ...] = ()
    reason: str | None = None
    rejected_at_read: int = 0  # lines the reader could not turn into rows (dead-lettered, stage read)
    observed_schema: str | None = field(default=None, compare=False, repr=False)  # as recorded (JSON)
    delivered_at: dt.datetime | None = field(default=None, compare=False, repr=False)


class Ledger:
    """The source's loaded deliveries, read once per ingest and kept current as files land: each file's
    duplicate and previous-schema look-ups are answered without a query. Exact while the ingester holds
    the source's lock (no one else lands its files); it is only added to after a file's commit."""

    def __init__(self, con, source: str):
        self.paths: dict[str, str] = {}   # file_id -> a path it was loaded from
        self.schemas: list[tuple] = []    # sorted (delivered_at, path, observed_schema) of loaded files
        for path, file_id, delivered_at, schema in con.execute(
                "SELECT path, file_id, delivered_at, observed_schema FROM ops.landed_files "
                "WHERE source = ? AND status = 'loaded' ORDER BY delivered_at, path", [source]).fetchall():
            self._add(path, file_id, delivered_at, schema)
        self.schemas.sort(key=lambda r: r[:2])

    def _add(self, path: str, file_id: str, delivered_at, schema: str | None) -> None:
        self.paths.setdefault(file_id, path)
        if schema is not None and delivered_at is not None:
            bisect.insort(self.schemas, (delivered_at, path, schema), key=lambda r: r[:2])

    def copy(self) -> Ledger:
        out = Ledger.__new__(Ledger)
        out.paths, out.schemas = dict(self.paths), list(self.schemas)
        return out

    def landed(self, f: LandedFile) -> None:
        if f.status == "loaded":
            self._add(f.path, f.file_id, f.delivered_at, f.observed_schema)

    def loaded_path(self, file_id: str) -> str | None:
        return self.paths.get(file_id)

    def previous_schema(self, delivered_at, path: str) -> list[dict] | None:
        """schema_changes.previous_schema: the latest loaded delivery before (delivered_at, path)."""
        if delivered_at is None:
            return None
        i = bisect.bisect_left(self.schemas, (delivered_at, path), key=lambda r: r[:2])
        if i == 0:
            return None
        schema = json.loads(self.schemas[i - 1][2])
        return schema if schema and "non_null" in schema[0] else None


def event_date_sql(contract: Contract) -> str:
    """The partition date of a bronze row, from text; NULL when it cannot be formed."""
    p = contract.partitioning
    if p is None:
        return "NULL::DATE"

    def strict_int(col: str) -> str:
        # 2.7 is not a month: only whole numbers form a date
        return f"CASE WHEN TRY_CAST({ident(col)} AS DOUBLE) = TRY_CAST({ident(col)} AS INTEGER) THEN TRY_CAST({ident(col)} AS INTEGER) END"

    if len(p.event_date) == 3:
        y, m, d = (strict_int(c) for c in p.event_date)
        return f"try(make_date({y}, {m}, {d}))"
    col = contract.column(p.event_date[0])
    if col.logical_type == "timestamp":
        return f"CAST(timezone({literal(p.timezone)}, TRY_CAST({ident(col.name)} AS TIMESTAMPTZ)) AS DATE)"
    return f"TRY_CAST({ident(col.name)} AS DATE)"


def pending(con: duckdb.DuckDBPyConnection, contract: Contract, landing: Path) -> list[Delivery]:
    """Deliveries whose (path, content) pair is not yet in ops.landed_files."""
    seen = {
        (p, fid) for p, fid in con.execute(
            "SELECT path, file_id FROM ops.landed_files WHERE source = ?", [contract.name]).fetchall()
    }
    seen_paths = {p for p, _ in seen}
    out = []
    for d in discover(landing, contract.name):
        if d.relative not in seen_paths:
            out.append(d)
            continue
        if d.problem is None:
            try:
                fid, _ = content_hash(d.path)
            except OSError:
                out.append(d)  # ingest_file records why it cannot be read
                continue
            if (d.relative, fid) not in seen:
                out.append(d)  # same path, new content: a new delivery
    return out


def ingest_source(con, contract: Contract, run_id: str, log=None) -> list[LandedFile]:
    """Ingest every pending delivery of one source; return what happened to each file."""
    # One ingester per source at a time on a warehouse with concurrent writers: both would take the same file.
    with partition_lock(con, f"bronze.{contract.name}", [SNAPSHOT_PARTITION]):
        results = []
        deliveries, moving = landing.settle(pending(con, contract, settings.landing_dir()))
        seconds = landing.settle_seconds()
        for d in moving:
            results.append(LandedFile(contract.name, d.relative, "-", "settling", reason=landing.still_being_written(seconds)))
            if log:
                log(f"{contract.name}: {d.relative}: settling ({results[-1].reason})")
        # Fixed for the whole ingestion, so files arriving together are judged alike, in any order.
        mark = lateness.watermark(con, contract)
        batches = batch.plan(deliveries)  # small files: read and profiled together
        ledger = Ledger(con, contract.name)
        try:
            results += _ingest_each(con, contract, deliveries, batches, run_id, mark, log, ledger)
        finally:
            for b in {id(b): b for b in batches.values()}.values():
                batch.drop(con, b)
        return results


class _NotTogether(Exception):
    """A member of a batch is not landed with the others (read alone, or unreadable): each is landed alone."""


def _runs(con, deliveries: list[Delivery], batches: dict[str, batch.Batch]):
    """Consecutive deliveries of one batch that its read gave, in order; any other file is a run of its own.
    A batch is read when its first member comes up, outside any transaction (a rollback would drop its rows)."""
    run: list[Delivery] = []
    group = None
    for d in deliveries:
        this = batches.get(d.relative)
        if this is not None and not this.was_read:
            batch.read(con, this)
        joins = this is not None and this.read_together(d)
        if run and joins and this is group:
            run.append(d)
            continue
        if run:
            yield group, run
        run, group = [d], this
        if not joins:  # read alone (the batch only drops its tables after it)
            yield group, run
            run, group = [], None
    if run:
        yield group, run


def _ingest_each(con, contract: Contract, deliveries: list[Delivery], batches: dict[str, batch.Batch], run_id: str,
                 mark: dt.date | None, log, ledger: Ledger) -> list[LandedFile]:
    results = []
    for group, run in _runs(con, deliveries, batches):
        together = _land_together(con, contract, group, run, run_id, mark, ledger) if group is not None and len(run) > 1 else None
        for delivery, landed in zip(run, together or [None] * len(run)):
            results.append(landed or _ingest_alone(con, contract, delivery, group, run_id, mark, ledger))
            i = len(results)
            if group is not None:
                batch.finish(con, group, delivery)
            if log and (i % 50 == 0 or i == len(deliveries) or results[-1].status != "loaded"):
                log(f"{contract.name}: {i}/{len(deliveries)} files; {delivery.relative}: {results[-1].status}"
                    + (f" ({results[-1].reason})" if results[-1].reason else ""))
    return results


def _land_together(con, contract: Contract, group: batch.Batch, run: list[Delivery], run_id: str,
                   mark: dt.date | None, ledger: Ledger) -> list[LandedFile] | None:
    """The run's files landed in one transaction, each judged as alone and in order, so a batch pays one
    commit; None when any of them is not landed from the batch's rows (nothing applied: each is landed alone)."""
    trial = ledger.copy()  # the files landed so far in the transaction count for the next ones
    results = []
    rows = _LANDED_ROWS.set([])  # their ops.landed_files rows, written in one statement before the commit
    try:
        with partition_lock(con, "ops.landed_files", [SNAPSHOT_PARTITION]), transaction(con), \
                schema_changes.collecting():  # and their schema versions, merged in one or two statements
            for delivery in run:
                results.append(ingest_file(con, contract, delivery, run_id, mark, group, trial, together=True))
                trial.landed(results[-1])
            insert_absent_rows(con, "ops.landed_files", _LANDED_COLUMNS, _LANDED_KEY, _LANDED_ROWS.get())
            schema_changes.record_collected(con)
    except Exception:  # rolled back: each file is landed alone, which says what went wrong with which
        return None
    finally:
        _LANDED_ROWS.reset(rows)
    ledger.paths, ledger.schemas = trial.paths, trial.schemas
    return results


def _ingest_alone(con, contract: Contract, delivery: Delivery, group: batch.Batch | None, run_id: str,
                  mark: dt.date | None, ledger: Ledger) -> LandedFile:
    # one file of any source lands at a time: every source's landing deletes from and inserts into
    # the shared ops tables, which DuckLake sees as conflicting commits (a retry alone can starve)
    with partition_lock(con, "ops.landed_files", [SNAPSHOT_PARTITION]):
        try:
            result = ingest_file(con, contract, delivery, run_id, mark, group, ledger)
        except WriteConflict:
            raise  # not the file's problem: the step fails retryably, the file stays pending
        except Exception as e:  # whatever goes wrong with one file is that file's problem, never the source's
            try:
                file_id = content_hash(delivery.path)[0]
            except OSError:
                file_id = "-"
            result = _record(con, LandedFile(contract.name, delivery.relative, file_id, "unreadable",
                                             reason=f"{delivery.relative}: {type(e).__name__}: {str(e)[:300]}; the file was "
                                                    "not loaded: re-deliver it (a new file or new content is picked up automatically)"),
                             _base(contract, delivery), None, None)
    ledger.landed(result)
    return result


def _base(contract: Contract, delivery: Delivery) -> dict:
    return dict(source=contract.name, path=delivery.relative, format=delivery.format, compression=delivery.compression,
                delivered_at=delivery.delivered_at, landed_at=dt.datetime.now(dt.timezone.utc))


def ingest_file(con, contract: Contract, delivery: Delivery, run_id: str, watermark: dt.date | None = None,
                group: batch.Batch | None = None, ledger: Ledger | None = None, together: bool = False) -> LandedFile:
    """group: the batch the file is read with (batch.plan); its verdict is the one it gets alone.
    ledger: the source's loaded files, kept by the caller (read from ops.landed_files when None).
    together: inside the caller's transaction with the rest of its batch; raises _NotTogether when the
    file is not judged from the batch's rows (it is then landed alone)."""
    base = _base(contract, delivery)
    if delivery.problem:
        return _record(con, LandedFile(contract.name, delivery.relative, "-", "rejected", reason=delivery.problem), base, None, None)
    before = landing.file_state(delivery.path)
    try:
        file_id, size = content_hash(delivery.path)
    except OSError as e:
        return _record(con, LandedFile(contract.name, delivery.relative, "-", "unreadable",
                                       reason=f"{delivery.relative} cannot be read ({type(e).__name__}: {e.strerror or e}); "
                                              "fix its permissions or re-deliver it"), base, None, None)
    base["size_bytes"] = size
    if ledger is not None:
        already = ledger.loaded_path(file_id)
    else:
        already = next(iter(con.execute(
            "SELECT path FROM ops.landed_files WHERE source = ? AND file_id = ? AND status = 'loaded' LIMIT 1",
            [contract.name, file_id]).fetchall()), (None,))[0]
    if already is not None:
        return _record(con, LandedFile(contract.name, delivery.relative, file_id, "duplicate",
                                       reason=f"identical content already loaded from {already}; skipped"), base, None, None)
    rows_sql = part = None
    if group is not None:
        if not group.was_read:  # the first member to be read reads the whole batch
            batch.read(con, group)
        if group.holds(delivery, before):
            rows_sql, part = batch.slice_sql(group, delivery), group.parts[delivery.relative]
    if together and rows_sql is None:
        raise _NotTogether(delivery.relative)
    try:
        if part is not None and not part.csv:
            loaded = load_batched(con, rows_sql, part.loaded[delivery.relative])
        else:
            loaded = load_delivery(con, delivery, rows_sql, group.rejects.get(delivery.relative, []) if part else None)
    except UnreadableFile as e:
        if together:
            raise _NotTogether(delivery.relative) from e
        if landing.file_state(delivery.path) != before:
            return _settling(contract, delivery)
        return _record(con, LandedFile(contract.name, delivery.relative, file_id, "unreadable",
                                       reason=f"{delivery.relative}: {e}; the file was not loaded: re-deliver it "
                                              "(a new file or new content is picked up automatically)"),
                       base, None, None)
    if landing.file_state(delivery.path) != before:
        return _settling(contract, delivery)  # what was read may not be what was hashed

    stats = None
    if rows_sql is not None and loaded.whole and loaded.rows <= schema_changes.SAMPLE_ROWS:
        stats = _batch_stats(con, contract, part, loaded).get(str(delivery.path), schema_changes.FileStats())

    if together:  # the caller's transaction holds the batch: its files are recorded whole or not at all
        return _land(con, contract, delivery, file_id, loaded, base, run_id, watermark, stats, ledger)

    def land() -> LandedFile:
        with transaction(con):  # a file is recorded whole or not at all
            return _land(con, contract, delivery, file_id, loaded, base, run_id, watermark, stats, ledger)

    # another writer of the ops tables (a rebuild's dead letters) may commit first: nothing was applied,
    # so the file, read once, is landed again from the new snapshot
    return retry_conflicts(land, f"{contract.name}: {delivery.relative}")


def _batch_stats(con, contract: Contract, part: batch.Part, loaded: Loaded) -> dict:
    """The numbers examine reads, for every file of the batch's part in one pass (same columns: same mapping)."""
    if part.stats is None:
        mapping, _, _ = _column_mapping(contract, loaded.columns)
        part.stats = schema_changes.batch_stats(con, contract, part.table, "_file", loaded.observed_schema, mapping,
                                                schema_changes.null_texts(contract, mapping))
    return part.stats


def _settling(contract: Contract, delivery: Delivery) -> LandedFile:
    """Changed while it was read: not recorded, so a later ingest takes the settled content."""
    return LandedFile(contract.name, delivery.relative, "-", "settling",
                      reason=landing.still_being_written(landing.settle_seconds()) + " (it changed while it was read)")


def _column_mapping(contract: Contract, delivered: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """contract column -> delivered column; plus missing required and unexpected delivered columns."""
    mapping, missing = {}, []
    for col in contract.columns:
        found = next((n for n in (col.name, *col.source_names) if n in delivered), None)
        if found is not None:
            mapping[col.name] = found
        elif col.required:
            missing.append(col.name)
    extra = [n for n in delivered if n not in mapping.values()]
    return mapping, missing, extra


def _land(con, contract: Contract, delivery: Delivery, file_id: str, loaded: Loaded, base: dict, run_id: str,
          watermark: dt.date | None, stats: schema_changes.FileStats | None = None, ledger: Ledger | None = None) -> LandedFile:
    rel = delivery.relative
    mapping, missing, extra = _column_mapping(contract, loaded.columns)
    previous = ledger.previous_schema(delivery.delivered_at, rel) if ledger is not None else schema_changes.NOT_READ
    verdict = schema_changes.examine(con, contract, TEMP_TABLE, loaded.observed_schema, mapping, missing, extra,
                                     delivery.delivered_at, rel, stats, previous)
    schema = verdict.schema
    select = [f"{delivered_ident(mapping[c.name])} AS {ident(c.name)}" if c.name in mapping else f"NULL::VARCHAR AS {ident(c.name)}"
              for c in contract.columns]
    extra_sql = ("json_object(" + ", ".join(f"{literal(n)}, {delivered_ident(n)}" for n in extra) + ")::VARCHAR") if extra else "NULL::VARCHAR"
    delivered_at = literal(delivery.delivered_at.isoformat()) + "::TIMESTAMPTZ" if delivery.delivered_at else "NULL::TIMESTAMPTZ"
    dates_known = contract.partitioning is not None and all(c in mapping for c in contract.partitioning.event_date)
    con.execute(f"""CREATE OR REPLACE TEMP VIEW _mapped AS
        SELECT *, {event_date_sql(contract) if dates_known else 'NULL::DATE'} AS _event_date FROM (
            SELECT {', '.join(select)}, {extra_sql} AS _extra, _row_offset,
                   {literal(file_id)} AS _file_id, {literal(rel)} AS _file_path, {delivered_at} AS _delivered_at
            FROM {TEMP_TABLE})""")
    decision = schema_policy.decide(contract, verdict, missing)
    dates: list[str] = []
    if decision.quarantine:
        if dates_known:  # the partitions the quarantined file would touch
            dates = [r[0].isoformat() for r in con.execute(
                f"SELECT DISTINCT _event_date FROM _mapped WHERE {_in_range_sql(contract)} ORDER BY 1").fetchall()]
        reason = schema_policy.quarantine_reason(contract, rel, decision)
        schema_changes.record_version(con, contract, verdict, rel, delivery.delivered_at, dates, "quarantined")
        return _record(con, LandedFile(contract.name, rel, file_id, "quarantined", loaded.rows, tuple(dates), reason),
                       base, schema, None)

    out = settings.bronze_dir() / contract.name / file_id[:2] / f"{file_id}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    # Written beside, then renamed: a crash never leaves a half bronze file under its final name.
    # Streamed straight to parquet; rows carry _row_offset, so their order in the file need not be kept.
    con.execute(f"""
        COPY ({decision.select_sql(contract)})
        TO {literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd, PRESERVE_ORDER false)""")
    tmp.replace(out)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _bronze AS SELECT * FROM read_parquet({literal(str(out))})")
    schema_policy.record_discards(con, contract, decision, run_id)

    notes = decision.notes
    unpartitioned = False  # a row whose event date is unreadable or outside the partitions
    if contract.partitioning is not None:
        # every distinct date at once: which rows the lateness and event-date checks below would catch
        seen = con.execute(f"SELECT DISTINCT _event_date, coalesce({_in_range_sql(contract)}, false) "
                           "FROM _bronze ORDER BY 1").fetchall()
        dates = [d.isoformat() for d, ok in seen if ok]
        unpartitioned = any(not ok for _, ok in seen)
    held: list[str] = []
    if watermark is not None and any(d < watermark.isoformat() for d in dates):  # else nothing to hold
        held = lateness.hold(con, contract, watermark, run_id, _in_range_sql(contract))
        if held:
            dates = [d for d in dates if d not in held]  # a held date is touched only once it is released
            notes.append(f"{len(held)} date(s) {held[0]} .. {held[-1]} older than the watermark {watermark}: "
                         f"held in ops.dead_letter ({lateness.REASON})")
    if dates_known:
        reject_dates = _attribute_rejects(con, contract, mapping, loaded.rejects)
        dates = sorted(set(dates) | (reject_dates - set(held)))
    dead_letter.record_bronze_rejects(con, contract, file_id, rel, loaded.rejects, run_id)
    if unpartitioned:
        dead_letter.record_event_date_failures(con, contract, run_id, _in_range_sql(contract))
    status = "loaded" if loaded.rows or loaded.rejects else "empty"
    if status == "empty":
        notes.append("header only: no data rows")
    if status == "loaded":
        schema_changes.record_version(con, contract, verdict, rel, delivery.delivered_at, dates, status)
    result = LandedFile(contract.name, rel, file_id, status, loaded.rows, tuple(dates), "; ".join(notes) or None,
                        len({r.row_offset for r in loaded.rejects}))
    return _record(con, result, base, schema, str(out.relative_to(settings.plumbline_home())))


def _attribute_rejects(con, contract: Contract, mapping: dict[str, str], rejects: list[Reject]) -> set[str]:
    """Set each rejected line's partition from the event-date fields it still gives; return those dates."""
    cols = contract.partitioning.event_date
    readable = [r for r in rejects if r.fields and all(mapping[c] in r.fields for c in cols)]
    if not readable:
        return set()
    names = ", ".join(ident(c) for c in cols)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _reject_fields (_row_offset BIGINT, {', '.join(f'{ident(c)} VARCHAR' for c in cols)})")
    con.executemany(f"INSERT INTO _reject_fields (_row_offset, {names}) VALUES ({', '.join('?' * (len(cols) + 1))})",
                    [(r.row_offset, *(r.fields[mapping[c]] for c in cols)) for r in readable])
    found = dict(con.execute(f"""SELECT _row_offset, strftime(_event_date, '%Y-%m-%d') FROM (
        SELECT _row_offset, {event_date_sql(contract)} AS _event_date FROM _reject_fields) WHERE {_in_range_sql(contract)}""").fetchall())
    for r in readable:
        r.partition = found.get(r.row_offset)
    return set(found.values())


def _in_range_sql(contract: Contract) -> str:
    p = contract.partitioning
    return "TRUE" if p is None else date_range("_event_date", p.start, p.end)


_LANDED_COLUMNS = ("source, path, file_id, size_bytes, format, compression, delivered_at, observed_schema, rows, "
                   "event_dates, status, reason, bronze_path, landed_at, rejected_at_read")
_LANDED_KEY = ("source", "path", "file_id")
# Set while a batch lands in one transaction: its rows are collected and inserted together.
_LANDED_ROWS: contextvars.ContextVar[list | None] = contextvars.ContextVar("landed_rows", default=None)


def _record(con, f: LandedFile, base: dict, schema, bronze_path) -> LandedFile:
    f.observed_schema = json.dumps(schema) if schema is not None else None
    f.delivered_at = base["delivered_at"]
    row = (f.source, f.path, f.file_id, base.get("size_bytes"), base["format"], base["compression"], base["delivered_at"],
           f.observed_schema, f.rows, json.dumps(list(f.event_dates)), f.status, f.reason, bronze_path, base["landed_at"],
           f.rejected_at_read)
    collected = _LANDED_ROWS.get()
    if collected is not None:
        collected.append(row)
    else:
        insert_absent_values(con, "ops.landed_files", _LANDED_COLUMNS, _LANDED_KEY, [row])
    return f
