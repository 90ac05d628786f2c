"""Read one delivery, whatever its format, into a DuckDB temp table of text columns.

Every value stays text here: casting is the contract's job (orchestration.rebuild.conform), so a bad value
becomes a dead-letter row with its rule instead of a reader crash. Each row keeps `_row_offset`,
its 0-based position among the file's data rows.

Column names are bound exactly as delivered; two names that differ only in case make the file
unreadable (DuckDB binds names case-insensitively, so either could be read for the other).

A last line with no line end may be a file cut short. jsonl: it is complete when it parses as a JSON
object (its closing brace proves it ended), otherwise it is rejected as truncated. csv: a value cut
short still parses (a time that lost its offset reads as local time), so the unterminated last line
of a csv is always rejected as truncated, with the fix in its reason: end the file with a line end.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:  # pyarrow loads where a jsonl or parquet delivery is read, not with the code location
    import pyarrow as pa

from orchestration.ingest.landing import Delivery
from orchestration.warehouse import delivered_ident, literal

TEMP_TABLE = "_delivery"
MAX_LINE_BYTES = 16 * 1024 * 1024  # a single record larger than this is refused, not buffered


class UnreadableFile(Exception):
    """The file as a whole cannot be read; the message says why and what to do."""


@dataclass
class Reject:
    row_offset: int      # csv: physical line number; jsonl: 0-based line
    kind: str            # e.g. csv_unparseable_line, jsonl_invalid_json, csv_truncated_line
    raw: str
    message: str
    fields: dict[str, str | None] | None = None  # delivered name -> text, as far as the line can be read
    partition: str | None = None                 # the event date the fields give (set by bronze)


@dataclass
class Loaded:
    columns: list[str]               # as delivered, in file order
    observed_schema: list[dict]      # [{name, type}] as delivered
    rows: int
    rejects: list[Reject] = field(default_factory=list)
    whole: bool = True  # the view holds every row the reader parsed (False: a cut last line was dropped)


def load_delivery(con: duckdb.DuckDBPyConnection, delivery: Delivery, rows_sql: str | None = None,
                  rejects: list[tuple] | None = None) -> Loaded:
    """Expose the file as TEMP VIEW _delivery (text columns + _row_offset); raise UnreadableFile.

    rows_sql/rejects: a csv's rows (c0.., in file order, _rid their position) and rejected lines already read with its batch
    (orchestration.ingest.batch), instead of reading the file here."""
    if rows_sql is not None:
        return _load_csv(con, delivery, rows_sql, rejects or [])
    try:
        if delivery.format == "csv":
            return _load_csv(con, delivery)
        table, loaded = _ARROW_READERS[delivery.format](delivery)
        _register(con, table)
        return loaded
    except UnreadableFile:
        raise
    except Exception as e:  # zlib.error, EOFError, struct.error, pyarrow, duckdb...: always this file's problem
        raise _unreadable(delivery, e) from e


def read_arrow(delivery: Delivery) -> tuple[pa.Table, Loaded]:
    """A jsonl or parquet delivery as the arrow table load_delivery exposes (text columns + _row_offset)."""
    try:
        return _ARROW_READERS[delivery.format](delivery)
    except UnreadableFile:
        raise
    except Exception as e:
        raise _unreadable(delivery, e) from e


def load_batched(con: duckdb.DuckDBPyConnection, rows_sql: str, loaded: Loaded) -> Loaded:
    """Expose a jsonl or parquet delivery read with its batch: rows_sql gives the table its reader gave alone."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _delivery_data AS {rows_sql}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {TEMP_TABLE} AS SELECT * FROM _delivery_data")
    return copy.deepcopy(loaded)  # bronze sets each reject's partition: the batch's copy stays as read


def _unreadable(delivery: Delivery, e: Exception) -> UnreadableFile:
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    kind = delivery.format + (" (gzip)" if delivery.compression else "")
    return UnreadableFile(f"{kind} reader failed: {type(e).__module__}.{type(e).__name__}: {first}".rstrip(": "))


def _open_text(delivery: Delivery):
    raw = gzip.open(delivery.path, "rb") if delivery.compression == "gzip" else open(delivery.path, "rb")
    return raw


def _check_columns(columns: list[str]) -> None:
    if not columns or all(not c.strip() for c in columns):
        raise UnreadableFile("no header: the first line must name the columns")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise UnreadableFile(f"duplicate column names in the header: {dupes}")
    _check_names(columns)


def _check_names(columns) -> None:
    """Refuse names plumbline could confuse: case-only twins and its reserved _row_offset."""
    groups: dict[str, list[str]] = {}
    for name in columns:
        groups.setdefault(name.lower(), []).append(name)
    twins = next((g for g in groups.values() if len(g) > 1), None)
    if twins:
        names = ", ".join(repr(n) for n in twins[:-1]) + f" and {twins[-1]!r}"
        raise UnreadableFile(f"columns {names} differ only in case: plumbline binds names exactly as delivered and "
                             "cannot tell which one is meant; rename or drop all but one of them in the export")
    # _row_offset is added to every row: a delivered column of that name (in any case) would replace it.
    reserved = [c for c in columns if c.lower() == "_row_offset"]
    if reserved:
        raise UnreadableFile(f"a delivered column is named {reserved[0]!r}, a name plumbline reserves: rename it in the export")


def csv_options(columns: int) -> str:
    """read_csv options of a delivery: a fixed dialect (a feed declares its format, so a wrong delimiter
    is an error, not a guess), positional text columns c0.. and bad lines kept in temp._rejects."""
    # Positional names inside DuckDB: a delivered column named rowid would otherwise hide the row id.
    columns_sql = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(columns)) + "}"
    return (f"""header = true, auto_detect = false, delim = ',', quote = '"', escape = '"', columns = {columns_sql}, """
            "store_rejects = true, rejects_table = '_rejects', rejects_scan = '_rejects_scan'")


def _load_csv(con, delivery: Delivery, rows_sql: str | None = None, batch_rejects: list[tuple] = ()) -> Loaded:
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
    named = ", ".join(f"c{i} AS {delivered_ident(c)}" for i, c in enumerate(header))
    if rows_sql is None:
        # DuckDB appends to an existing rejects table: without this, earlier files' bad lines land on this file.
        con.execute("DROP TABLE IF EXISTS temp._rejects")
        con.execute("DROP TABLE IF EXISTS temp._rejects_scan")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _delivery_data AS
            SELECT * FROM read_csv({literal(str(delivery.path))}, {csv_options(len(header))}, max_line_size = {MAX_LINE_BYTES})"""
        )
        batch_rejects = con.execute("SELECT line, error_type, csv_line, error_message FROM _rejects ORDER BY line").fetchall()
    else:  # read with its batch: the same rows, in file order, so rowid is the same
        con.execute(f"CREATE OR REPLACE TEMP TABLE _delivery_data AS {rows_sql}")
    rejects = [
        Reject(int(line), "csv_unparseable_line", (csv_line or "")[:2000], f"line {line}: {err_type.lower()}: {msg}",
               _csv_fields(header, csv_line))
        for line, err_type, csv_line, msg in batch_rejects
    ]
    # rowid follows file order (insertion order is preserved) but skips rejected lines: add back each
    # rejected data row (line - 2, the header is line 1) that comes before, so offsets are file positions.
    slots = [line - 2 - i for i, line in enumerate(sorted({r.row_offset for r in rejects}))]
    rid = "rowid" if rows_sql is None else "_rid"
    offset = f"{rid} + len(list_filter({slots}::BIGINT[], lambda s: s <= {rid}))" if slots else rid
    view = f"SELECT {named}, {offset} AS _row_offset FROM _delivery_data"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {TEMP_TABLE} AS {view}")
    tail, cut = _unterminated_last_line(delivery), None
    if tail is not None and tail.strip():  # trailing blanks are no record
        last_row = con.execute(f"SELECT max(_row_offset) FROM {TEMP_TABLE}").fetchone()[0]
        rejects, cut = _reject_truncated_csv_line(header, tail, rejects, last_row)
        if cut is not None:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {TEMP_TABLE} AS SELECT * FROM ({view}) WHERE _row_offset <> {cut}")
    rows = con.execute(f"SELECT count(*) FROM {TEMP_TABLE}").fetchone()[0]
    if len(header) == 1 and any(d in header[0] for d in ";\t|"):
        raise UnreadableFile(f"one column named {header[0][:80]!r}: the file is not comma-delimited (fix the export's delimiter to ',')")
    return Loaded(header, [{"name": c, "type": "text"} for c in header], rows, rejects, whole=cut is None)


def _truncated(line: int) -> str:
    return (f"line {line} has no line end: the file may be truncated, and a value cut short can still parse "
            "(a time that lost its offset); end the file with a line end, or re-deliver it complete")


def _reject_truncated_csv_line(header: list[str], tail: bytes, rejects: list[Reject],
                               last_row: int | None) -> tuple[list[Reject], int | None]:
    """Reject the unterminated last line; returns the rejects and the row offset to drop from the rows, if any."""
    last_rejected = max((r.row_offset - 2 for r in rejects), default=None)
    if last_rejected is not None and (last_row is None or last_rejected > last_row):
        # the reader already refused the line (too few fields, say): one reject for it, saying why
        first = next(r for r in rejects if r.row_offset - 2 == last_rejected)
        kept = [r for r in rejects if r.row_offset - 2 != last_rejected]
        first.kind, first.message = "csv_truncated_line", f"{_truncated(first.row_offset)} ({first.message})"
        return kept + [first], None
    if last_row is None:
        return rejects, None  # a header with no line end and no rows: nothing to reject
    text = tail.decode("utf-8", "replace")
    line = last_row + 2
    return rejects + [Reject(line, "csv_truncated_line", text[:2000], _truncated(line), _csv_fields(header, text))], last_row


def _csv_fields(header: list[str], line: str | None) -> dict[str, str | None] | None:
    """The values a rejected csv line still gives, by delivered column name (fewer when it is cut short)."""
    if not line:
        return None
    try:
        values = next(csv.reader([line.rstrip("\r\n")]))
    except (csv.Error, StopIteration):
        return None
    return dict(zip(header, values))


_JSON_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)')


def _json_fields(text: str) -> dict[str, str | None] | None:
    """The scalar fields a broken json line still gives (keys that occur once), as text."""
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return {k: _text(v) for k, v in obj.items()}
    except ValueError:
        pass
    pairs: dict[str, list] = {}
    for key, value in _JSON_PAIR.findall(text):
        try:
            pairs.setdefault(json.loads(f'"{key}"'), []).append(json.loads(value))
        except ValueError:
            continue
    return {k: _text(v[0]) for k, v in pairs.items() if len(v) == 1} or None


def _unterminated_last_line(delivery: Delivery) -> bytes | None:
    """The last line when the file does not end with a line end (None when it does, or is empty)."""
    with _open_text(delivery) as f:
        if delivery.compression is None:
            end = f.seek(0, io.SEEK_END)
            tail, pos = b"", end
            while pos > 0 and b"\n" not in tail and len(tail) <= MAX_LINE_BYTES:
                step = min(1 << 16, pos)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
        else:  # a compressed stream can only be read forwards
            tail = b""
            while chunk := f.read(1 << 20):
                cut = chunk.rfind(b"\n")
                tail = chunk[cut:] if cut >= 0 else (tail + chunk)[: MAX_LINE_BYTES + 2]
    if not tail or tail.endswith((b"\n", b"\r")):
        return None
    return tail[tail.rfind(b"\n") + 1:]


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


def _jsonl_table(delivery: Delivery) -> tuple[pa.Table, Loaded]:
    import pyarrow as pa

    records: list[dict] = []
    offsets: list[int] = []
    rejects: list[Reject] = []
    names: dict = {}
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
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                rejects.append(_jsonl_reject(offset, line, e))
                continue
            if not isinstance(obj, dict):
                rejects.append(Reject(offset, "jsonl_not_an_object", line[:2000].decode("utf-8", "replace"),
                                      f"line {offset + 1} is a JSON {type(obj).__name__}, expected an object"))
                continue
            names.update(obj)  # every key, in the order it first appears (the values are not kept)
            records.append(obj)
            offsets.append(offset)
    if not records and not rejects:
        raise UnreadableFile("empty file: no records")
    if not records:
        # No record means no columns: say why the lines failed, not that required columns are missing.
        raise UnreadableFile(f"no line is a readable record ({len(rejects)} tried); first: {rejects[0].message}")
    names = list(names)
    _check_names(names)
    arrays, columns = {}, []
    for n in names:
        values = [r.get(n) for r in records]
        # a column's type is its first value that is not null
        columns.append({"name": n, "type": _json_type(next((v for v in values if v is not None), None))})
        arrays[n] = pa.array(_texts(values), type=pa.string())
    arrays["_row_offset"] = pa.array(offsets, type=pa.int64())
    return pa.table(arrays), Loaded(names, columns, len(records), rejects)


def _texts(values: list) -> list:
    """_text of every value; a column of strings (the usual case) is its own text."""
    kinds = set(map(type, values))
    if kinds <= {str, type(None)}:
        return values
    if kinds <= {int, type(None)}:
        return [None if v is None else str(v) for v in values]
    return list(map(_text, values))


def _jsonl_reject(offset: int, line: bytes, e: ValueError) -> Reject:
    text = line.decode("utf-8", "replace")
    fields = _json_fields(text)
    if isinstance(e, UnicodeDecodeError):
        return Reject(offset, "jsonl_invalid_utf8", text[:2000], f"line {offset + 1} is not UTF-8 ({e.reason})", fields)
    if not line.endswith((b"\n", b"\r")):  # only the last line can lack a line end
        return Reject(offset, "jsonl_truncated_line", text[:2000],
                      f"line {offset + 1} has no line end and is not complete JSON ({e.msg}): the file may be "
                      "truncated; re-deliver it complete", fields)
    return Reject(offset, "jsonl_invalid_json", text[:2000], f"line {offset + 1} is not JSON: {e.msg}", fields)


def _parquet_table(delivery: Delivery) -> tuple[pa.Table, Loaded]:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    return pa.table(arrays), Loaded(names, schema, table.num_rows, [])


def _timestamps_as_text(col: pa.ChunkedArray) -> pa.Array:
    """ISO text keeps the offset of aware timestamps and leaves naive ones naive."""
    import pyarrow as pa

    return pa.array([None if v is None else v.isoformat() for v in col.to_pylist()], type=pa.string())


_ARROW_READERS = {"jsonl": _jsonl_table, "parquet": _parquet_table}


def _register(con, table: pa.Table) -> None:
    con.register("_delivery_arrow", table)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _delivery_data AS SELECT * FROM _delivery_arrow")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {TEMP_TABLE} AS SELECT * FROM _delivery_data")
    finally:
        con.unregister("_delivery_arrow")

