"""Read one delivery, whatever its format, into a DuckDB temp table of text columns.

Every value stays text here: casting is the contract's job (orchestration.conform), so a bad value
becomes a dead-letter row with its rule instead of a reader crash. Each row keeps `_row_offset`,
its 0-based position among the file's data rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.landing import Delivery

TEMP_TABLE = "_delivery"
MAX_LINE_BYTES = 16 * 1024 * 1024  # a single record larger than this is refused, not buffered


class UnreadableFile(Exception):
    """The file as a whole cannot be read; the message says why and what to do."""


@dataclass
class Reject:
    row_offset: int      # csv: physical line number; jsonl: 0-based line
    kind: str            # e.g. csv_unparseable_line, jsonl_invalid_json
    raw: str
    message: str


@dataclass
class Loaded:
    columns: list[str]               # as delivered, in file order
    observed_schema: list[dict]      # [{name, type}] as delivered
    rows: int
    rejects: list[Reject] = field(default_factory=list)


def load_delivery(con: duckdb.DuckDBPyConnection, delivery: Delivery) -> Loaded:
    """Expose the file as TEMP VIEW _delivery (text columns + _row_offset); raise UnreadableFile."""
    reader = {"csv": _load_csv, "jsonl": _load_jsonl, "parquet": _load_parquet}[delivery.format]
    try:
        return reader(con, delivery)
    except UnreadableFile:
        raise
    except (duckdb.Error, pa.ArrowException, OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFile(f"{delivery.format} reader failed: {first}") from e


def _open_text(delivery: Delivery):
    raw = gzip.open(delivery.path, "rb") if delivery.compression == "gzip" else open(delivery.path, "rb")
    return raw


def _check_columns(columns: list[str]) -> None:
    if not columns or all(not c.strip() for c in columns):
        raise UnreadableFile("no header: the first line must name the columns")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise UnreadableFile(f"duplicate column names in the header: {dupes}")
    _check_reserved(columns)


def _check_reserved(columns) -> None:
    # _row_offset is added to every row: a delivered column of that name would replace it.
    if "_row_offset" in columns:
        raise UnreadableFile("a delivered column is named '_row_offset', a name plumbline reserves: rename it in the export")


def _load_csv(con, delivery: Delivery) -> Loaded:
    with _open_text(delivery) as f:
        first = f.readline(MAX_LINE_BYTES + 1)
    if not first:
        raise UnreadableFile("empty file: no header and no rows")
    if len(first) > MAX_LINE_BYTES:
        raise UnreadableFile(f"header line longer than {MAX_LINE_BYTES} bytes")
    try:
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]))
    except UnicodeDecodeError as e:
        raise UnreadableFile(f"header is not UTF-8 ({e.reason} at byte {e.start}): re-export the file as UTF-8") from e
    _check_columns(header)
    # Positional names inside DuckDB: a delivered column named rowid would otherwise hide the row id.
    columns_sql = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header))) + "}"
    named = ", ".join(f'c{i} AS "{c.replace(chr(34), chr(34) * 2)}"' for i, c in enumerate(header))
    path_sql = _escape(str(delivery.path))
    # DuckDB appends to an existing rejects table: without this, earlier files' bad lines land on this file.
    con.execute("DROP TABLE IF EXISTS temp._rejects")
    con.execute("DROP TABLE IF EXISTS temp._rejects_scan")
    # Fixed dialect: a feed declares its format, so a wrong delimiter is an error, not a guess.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _delivery_data AS
        SELECT * FROM read_csv('{path_sql}', header = true, auto_detect = false, delim = ',', quote = '"',
            escape = '"', columns = {columns_sql}, store_rejects = true, max_line_size = {MAX_LINE_BYTES},
            rejects_table = '_rejects', rejects_scan = '_rejects_scan')"""
    )
    rejects = [
        Reject(int(line), "csv_unparseable_line", (csv_line or "")[:2000], f"line {line}: {err_type.lower()}: {msg}")
        for line, err_type, csv_line, msg in con.execute(
            "SELECT line, error_type, csv_line, error_message FROM _rejects ORDER BY line"
        ).fetchall()
    ]
    # rowid follows file order (insertion order is preserved) but skips rejected lines: add back each
    # rejected data row (line - 2, the header is line 1) that comes before, so offsets are file positions.
    slots = [line - 2 - i for i, line in enumerate(sorted({r.row_offset for r in rejects}))]
    offset = f"rowid + len(list_filter({slots}::BIGINT[], lambda s: s <= rowid))" if slots else "rowid"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {TEMP_TABLE} AS SELECT {named}, {offset} AS _row_offset FROM _delivery_data")
    rows = con.execute(f"SELECT count(*) FROM {TEMP_TABLE}").fetchone()[0]
    if len(header) == 1 and any(d in header[0] for d in ";\t|"):
        raise UnreadableFile(f"one column named {header[0][:80]!r}: the file is not comma-delimited (fix the export's delimiter to ',')")
    return Loaded(header, [{"name": c, "type": "text"} for c in header], rows, rejects)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}.get(type(value), "null")


def _load_jsonl(con, delivery: Delivery) -> Loaded:
    records: list[dict] = []
    offsets: list[int] = []
    rejects: list[Reject] = []
    columns: dict[str, str] = {}
    with _open_text(delivery) as f:
        for offset, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b"")):
            # MAX_LINE_BYTES + 1 bytes ending in a newline is a line of exactly MAX_LINE_BYTES: not over-long.
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                rejects.append(Reject(offset, "jsonl_line_too_long", line[:2000].decode("utf-8", "replace"),
                                      f"line {offset + 1} is longer than {MAX_LINE_BYTES} bytes"))
                # Skip the rest of the over-long line in bounded chunks, never the line after it.
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                rejects.append(Reject(offset, "jsonl_invalid_utf8", line[:2000].decode("utf-8", "replace"),
                                      f"line {offset + 1} is not UTF-8 ({e.reason})"))
                continue
            except json.JSONDecodeError as e:
                rejects.append(Reject(offset, "jsonl_invalid_json", line[:2000].decode("utf-8", "replace"),
                                      f"line {offset + 1} is not JSON: {e.msg}"))
                continue
            if not isinstance(obj, dict):
                rejects.append(Reject(offset, "jsonl_not_an_object", line[:2000].decode("utf-8", "replace"),
                                      f"line {offset + 1} is a JSON {type(obj).__name__}, expected an object"))
                continue
            for k, v in obj.items():
                if v is not None and columns.get(k, "null") == "null":
                    columns[k] = _json_type(v)
                else:
                    columns.setdefault(k, _json_type(v))
            records.append(obj)
            offsets.append(offset)
    if not records and not rejects:
        raise UnreadableFile("empty file: no records")
    if not records:
        # No record means no columns: say why the lines failed, not that required columns are missing.
        raise UnreadableFile(f"no line is a readable record ({len(rejects)} tried); first: {rejects[0].message}")
    names = list(columns)
    _check_reserved(names)
    arrays = {n: pa.array([_text(r.get(n)) for r in records], type=pa.string()) for n in names}
    arrays["_row_offset"] = pa.array(offsets, type=pa.int64())
    _register(con, pa.table(arrays))
    return Loaded(names, [{"name": n, "type": t} for n, t in columns.items()], len(records), rejects)


def _load_parquet(con, delivery: Delivery) -> Loaded:
    if delivery.compression == "gzip":
        with gzip.open(delivery.path, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()))
    else:
        table = pq.read_table(delivery.path)
    names = table.column_names
    _check_columns(names)
    schema = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    arrays = {}
    for name in names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            arrays[name] = _timestamps_as_text(col)
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            arrays[name] = col.cast(pa.string())
        elif pa.types.is_nested(col.type):
            arrays[name] = pa.array([_text(v) for v in col.to_pylist()], type=pa.string())
        elif pa.types.is_floating(col.type):
            arrays[name] = pa.array([_text(v) for v in col.to_pylist()], type=pa.string())  # repr round-trips
        else:
            arrays[name] = col.cast(pa.string())
    arrays["_row_offset"] = pa.array(range(table.num_rows), type=pa.int64())
    _register(con, pa.table(arrays))
    return Loaded(names, schema, table.num_rows, [])


def _timestamps_as_text(col: pa.ChunkedArray) -> pa.Array:
    """ISO text keeps the offset of aware timestamps and leaves naive ones naive."""
    return pa.array([None if v is None else v.isoformat() for v in col.to_pylist()], type=pa.string())


def _register(con, table: pa.Table) -> None:
    con.register("_delivery_arrow", table)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _delivery_data AS SELECT * FROM _delivery_arrow")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {TEMP_TABLE} AS SELECT * FROM _delivery_data")
    finally:
        con.unregister("_delivery_arrow")


def _escape(text: str) -> str:
    return text.replace("'", "''")
