"""Small csv deliveries of one source read in one statement, and profiled in one pass per batch.

Per-file work on a delivery of a few hundred rows is dominated by the fixed cost of each statement
(a csv read, a schema profile, the key and category checks). Deliveries whose header line is
identical (same columns, same order, so the same contract mapping) are read together with one
`read_csv` of the list of files, each row tagged with its file; each file's rows are then sliced
out in file order, so the reader sees exactly the table a read of that file alone gives (the
rejected lines come from the same rejects table, per file). Profiles, key duplicates and new
category values are computed for the whole batch grouped by file.

Every verdict is still made per file by bronze.ingest_file, in the same order, from the same
numbers: a file whose content may differ from what the batch read (it changed since, or its last
line is cut and dropped) is read and profiled alone, and a batch read that fails falls back to
reading each file alone, so a broken file is judged exactly as before.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

from orchestration.ingest import landing
from orchestration.ingest.readers import MAX_LINE_BYTES, csv_options
from orchestration.ingest.landing import Delivery
from orchestration.warehouse import literal

TABLE = "_batch_data"  # one temp table per batch: TABLE_<n>
MAX_FILE_BYTES = 1 << 20   # larger files are read alone: one statement is already small against their cost
MAX_BATCH_FILES = 100      # bounds the rows each per-file slice scans
MAX_BATCH_BYTES = 16 << 20


@dataclass
class Batch:
    header: list[str]
    deliveries: list[Delivery]
    table: str = TABLE
    states: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # relative -> state before the read
    rejects: dict[str, list[tuple]] = field(default_factory=dict)            # relative -> rejects rows
    read: bool = False           # the batch read succeeded; False: every file is read alone
    stats: dict | None = None    # file path -> schema_changes.FileStats, computed once for the batch
    done: set = field(default_factory=set)  # relative paths already ingested; the table is dropped after the last

    def holds(self, delivery: Delivery, state_when_hashed) -> bool:
        """The batch's rows are this file's content: read in the batch, unchanged since."""
        return self.read and delivery.relative in self.states and self.states[delivery.relative] == state_when_hashed


def header_of(delivery: Delivery) -> tuple[str, ...] | None:
    """The parsed header line when the file can join a batch; None: it is read alone."""
    if delivery.format != "csv" or delivery.compression is not None or delivery.problem:
        return None
    state = landing.file_state(delivery.path)
    if state is None or state[0] > MAX_FILE_BYTES:
        return None
    try:
        with open(delivery.path, "rb") as f:
            first = f.readline(MAX_FILE_BYTES + 1)
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]))
    except (OSError, UnicodeDecodeError, csv.Error, StopIteration):
        return None  # read alone, which says why
    if not header or len(set(header)) != len(header) or len({c.lower() for c in header}) != len(header):
        return None
    return tuple(header)


def plan(deliveries: list[Delivery]) -> dict[str, Batch]:
    """relative path -> the batch it is read in (only files that share a header with another)."""
    groups: dict[tuple[str, ...], list[Delivery]] = {}
    for d in deliveries:
        header = header_of(d)
        if header is not None:
            groups.setdefault(header, []).append(d)
    out: dict[str, Batch] = {}
    for header, members in groups.items():
        chunk: list[Delivery] = []
        size = 0
        for d in members + [None]:
            state = landing.file_state(d.path) if d is not None else None
            full = d is None or len(chunk) >= MAX_BATCH_FILES or size + (state[0] if state else 0) > MAX_BATCH_BYTES
            if full and len(chunk) > 1:
                batch = Batch(list(header), chunk, f"{TABLE}_{len(set(map(id, out.values())))}")
                out.update({c.relative: batch for c in chunk})
            if full:
                chunk, size = [], 0
            if d is not None:
                chunk.append(d)
                size += state[0] if state else 0
    return out


def read(con, batch: Batch) -> None:
    """Read every file of the batch in one statement into its table (c0.., _file); on any error, none is."""
    batch.states = {d.relative: landing.file_state(d.path) for d in batch.deliveries}
    files = "[" + ", ".join(literal(str(d.path)) for d in batch.deliveries) + "]"
    con.execute("DROP TABLE IF EXISTS temp._rejects")
    con.execute("DROP TABLE IF EXISTS temp._rejects_scan")
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {batch.table} AS
            SELECT * FROM read_csv({files}, {csv_options(len(batch.header))}, filename = '_file',
                max_line_size = {MAX_LINE_BYTES})""")
        by_path = {str(d.path): d.relative for d in batch.deliveries}
        for path, line, err_type, csv_line, msg in con.execute(
                "SELECT s.file_path, r.line, r.error_type, r.csv_line, r.error_message FROM _rejects r "
                "JOIN _rejects_scan s USING (scan_id, file_id) ORDER BY s.file_path, r.line").fetchall():
            batch.rejects.setdefault(by_path[path], []).append((line, err_type, csv_line, msg))
        batch.read = True
    except Exception:  # any file's problem: each file is read alone, which names the file and the reason
        batch.read = False
        batch.rejects.clear()


def slice_sql(batch: Batch, delivery: Delivery) -> str:
    """The file's rows as read alone would give them: its columns, in file order, and _rid, the rowid a table
    of them alone would give (a table made inside a transaction numbers its rows from far off)."""
    cols = ", ".join(f"c{i}" for i in range(len(batch.header)))
    return (f"SELECT {cols}, row_number() OVER (ORDER BY rowid) - 1 AS _rid FROM {batch.table} "
            f"WHERE _file = {literal(str(delivery.path))} ORDER BY rowid")


def finish(con, batch: Batch, delivery: Delivery) -> None:
    """This member is ingested; the batch's rows are dropped once every member is."""
    batch.done.add(delivery.relative)
    if len(batch.done) == len(batch.deliveries):
        drop(con, batch)


def drop(con, batch: Batch) -> None:
    con.execute(f"DROP TABLE IF EXISTS temp.{batch.table}")
