"""Small deliveries of one source read together, and profiled in one pass per shape, whatever their format.

Per-file work on a delivery of a few hundred rows is dominated by the fixed cost of each statement
(a read, a schema profile, the key and category checks) and of each commit. Consecutive small
deliveries of a source form a batch; within it, the members that give the same columns are read
into one table per shape (a `Part`), each row tagged with its file:

- csv and csv.gz whose header line is identical (same columns, same order, so the same contract
  mapping) are read with one `read_csv` of the list of files, plain and gzip-compressed apart;
  the rejected lines come from the same rejects table, per file;
- jsonl, jsonl.gz and parquet are read by the reader each gets alone (readers.read_arrow); the
  members whose columns and observed schema are identical are concatenated into one table.

Each file's rows are sliced out in file order, so the loader sees exactly the table a read of that
file alone gives. Profiles, key duplicates and new category values are computed per part, grouped
by file.

Every verdict is still made per file by bronze.ingest_file, in the same order, from the same
numbers: a file whose content may differ from what the batch read (it changed since, or its csv
last line is cut and dropped) is read and profiled alone, and a member whose read fails (its
part's `read_csv`, or its own reader) is read alone, so a broken file is judged exactly as before.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field

from orchestration.ingest import landing, readers
from orchestration.ingest.landing import Delivery
from orchestration.ingest.readers import MAX_LINE_BYTES, Loaded, csv_options
from orchestration.warehouse import delivered_ident, literal

TABLE = "_batch_data"  # one temp table per part of a batch: TABLE_<batch>_<part>
MAX_FILE_BYTES = 1 << 20   # larger files are read alone: one statement is already small against their cost
MAX_BATCH_FILES = 100      # bounds the rows each per-file slice scans
MAX_BATCH_BYTES = 16 << 20


@dataclass
class Part:
    """Members of a batch read into one table of columns c0.., _file (and _row_offset from a reader)."""
    table: str
    columns: list[str]             # as delivered, in order: the same for every member
    csv: bool                      # read by read_csv (rows numbered by _rid); else from each member's reader
    loaded: dict[str, Loaded] = field(default_factory=dict)  # not csv: relative -> what its reader gave
    stats: dict | None = None      # file path -> schema_changes.FileStats, computed once for the part


@dataclass
class Batch:
    deliveries: list[Delivery]
    table: str = TABLE
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # csv member -> its header (plan)
    states: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # relative -> state before the read
    rejects: dict[str, list[tuple]] = field(default_factory=dict)            # csv member -> rejects rows
    parts: dict[str, Part] = field(default_factory=dict)  # relative -> the part it was read into
    tables: list[str] = field(default_factory=list)       # every part's table, to drop
    was_read: bool = False
    done: set = field(default_factory=set)  # relative paths already ingested; the tables are dropped after the last

    def holds(self, delivery: Delivery, state_when_hashed) -> bool:
        """The batch's rows are this file's content: read in the batch, unchanged since."""
        return delivery.relative in self.parts and self.states.get(delivery.relative) == state_when_hashed

    def read_together(self, delivery: Delivery) -> bool:
        """The batch read gave this member's rows (it may still be read alone if it changed since)."""
        return delivery.relative in self.parts


def header_of(delivery: Delivery) -> tuple[str, ...] | None:
    """The parsed header line of a csv or csv.gz; None: it is read alone (which says why it cannot be read)."""
    try:
        opener = gzip.open if delivery.compression == "gzip" else open
        with opener(delivery.path, "rb") as f:
            first = f.readline(MAX_FILE_BYTES + 1)
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]))
    except Exception:  # OSError, zlib.error, EOFError, UnicodeDecodeError, csv.Error...: read alone, which says why
        return None
    if not header or len(set(header)) != len(header) or len({c.lower() for c in header}) != len(header):
        return None
    return tuple(header)


def _joinable(delivery: Delivery) -> tuple[int, tuple[str, ...] | None] | None:
    """(size, csv header) of a small file that can join a batch; None: it is read alone."""
    if delivery.problem or delivery.format not in ("csv", "jsonl", "parquet"):
        return None
    if delivery.compression not in (None, "gzip"):
        return None
    state = landing.file_state(delivery.path)
    if state is None or state[0] > MAX_FILE_BYTES:
        return None
    if delivery.format != "csv":
        return state[0], None
    header = header_of(delivery)
    return None if header is None else (state[0], header)


def plan(deliveries: list[Delivery]) -> dict[str, Batch]:
    """relative path -> the batch it is read in: consecutive small files, in delivery order, any format."""
    out: dict[str, Batch] = {}
    chunk: list[Delivery] = []
    headers: dict[str, tuple[str, ...]] = {}
    size = 0

    def close() -> None:
        if len(chunk) > 1:
            b = Batch(list(chunk), f"{TABLE}_{len(set(map(id, out.values())))}",
                      {d.relative: headers[d.relative] for d in chunk if d.relative in headers})
            out.update({d.relative: b for d in chunk})

    for d in deliveries:
        joinable = _joinable(d)
        if joinable is None:
            continue
        if len(chunk) >= MAX_BATCH_FILES or size + joinable[0] > MAX_BATCH_BYTES:
            close()
            chunk, size = [], 0
        chunk.append(d)
        size += joinable[0]
        if joinable[1] is not None:
            headers[d.relative] = joinable[1]
    close()
    return out


def read(con, batch: Batch) -> None:
    """Read every member into its part's table; a member whose read fails is left out (read alone)."""
    batch.was_read = True
    csv_groups: dict[tuple, list[Delivery]] = {}
    shapes: dict[tuple, list] = {}
    for d in batch.deliveries:
        if d.format == "csv":  # plain and gzip apart: one read_csv never mixes them
            csv_groups.setdefault((d.compression, batch.headers[d.relative]), []).append(d)
            continue
        state = landing.file_state(d.path)
        try:
            table, loaded = readers.read_arrow(d)
        except Exception:  # the member is read alone, which names the reason
            continue
        batch.states[d.relative] = state
        shapes.setdefault((tuple(loaded.columns), json.dumps(loaded.observed_schema)), []).append((d, table, loaded))
    for (_, header), members in csv_groups.items():
        _read_csv_part(con, batch, _new_part(batch, list(header), True), members)
    for (columns, _), members in shapes.items():
        _read_arrow_part(con, batch, _new_part(batch, list(columns), False), members)


def _new_part(batch: Batch, columns: list[str], is_csv: bool) -> Part:
    part = Part(f"{batch.table}_{len(batch.tables)}", columns, is_csv)
    batch.tables.append(part.table)
    return part


def _read_csv_part(con, batch: Batch, part: Part, members: list[Delivery]) -> None:
    """One read_csv of the members' list; on any error, none of them is read together."""
    states = {d.relative: landing.file_state(d.path) for d in members}
    files = "[" + ", ".join(literal(str(d.path)) for d in members) + "]"
    con.execute("DROP TABLE IF EXISTS temp._rejects")
    con.execute("DROP TABLE IF EXISTS temp._rejects_scan")
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {part.table} AS
            SELECT * FROM read_csv({files}, {csv_options(len(part.columns))}, filename = '_file',
                max_line_size = {MAX_LINE_BYTES})""")
        by_path = {str(d.path): d.relative for d in members}
        rejects: dict[str, list[tuple]] = {}
        for path, line, err_type, csv_line, msg in con.execute(
                "SELECT s.file_path, r.line, r.error_type, r.csv_line, r.error_message FROM _rejects r "
                "JOIN _rejects_scan s USING (scan_id, file_id) ORDER BY s.file_path, r.line").fetchall():
            rejects.setdefault(by_path[path], []).append((line, err_type, csv_line, msg))
    except Exception:  # any file's problem: each file is read alone, which names the file and the reason
        return
    batch.rejects.update(rejects)
    batch.states.update(states)
    batch.parts.update({d.relative: part for d in members})


def _read_arrow_part(con, batch: Batch, part: Part, members: list) -> None:
    """The members' tables (same columns and schema) concatenated, renamed c0.., tagged with _file."""
    import pyarrow as pa

    tables = []
    for d, table, loaded in members:
        names = [f"c{i}" for i in range(len(part.columns))] + ["_row_offset"]
        table = table.rename_columns(names)
        tables.append(table.append_column("_file", pa.array([str(d.path)] * table.num_rows, type=pa.string())))
        part.loaded[d.relative] = loaded
    con.register("_batch_arrow", pa.concat_tables(tables))
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {part.table} AS SELECT * FROM _batch_arrow")
    finally:
        con.unregister("_batch_arrow")
    batch.parts.update({d.relative: part for d, _, _ in members})


def slice_sql(batch: Batch, delivery: Delivery) -> str:
    """The file's rows as read alone would give them, in file order. csv: columns c0.. and _rid, the rowid
    a table of them alone would give (a table made inside a transaction numbers its rows from far off);
    otherwise the delivered names and the reader's _row_offset."""
    part = batch.parts[delivery.relative]
    where = f"FROM {part.table} WHERE _file = {literal(str(delivery.path))} ORDER BY rowid"
    if part.csv:
        cols = ", ".join(f"c{i}" for i in range(len(part.columns)))
        return f"SELECT {cols}, row_number() OVER (ORDER BY rowid) - 1 AS _rid {where}"
    named = ", ".join(f"c{i} AS {delivered_ident(c)}" for i, c in enumerate(part.columns))
    return f"SELECT {named}, _row_offset {where}"


def finish(con, batch: Batch, delivery: Delivery) -> None:
    """This member is ingested; the batch's rows are dropped once every member is."""
    batch.done.add(delivery.relative)
    if len(batch.done) == len(batch.deliveries):
        drop(con, batch)


def drop(con, batch: Batch) -> None:
    for table in batch.tables:
        con.execute(f"DROP TABLE IF EXISTS temp.{table}")
