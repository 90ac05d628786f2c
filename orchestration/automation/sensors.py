"""What runs plumbline over time: a landing sensor, one rebuild sensor per source, a daily schedule.

landing_sensor   deliveries that ops.landed_files does not hold yet (path and content hash) -> one
                 ingest run; its run key is a hash of what it found, so no tick submits it twice.
rebuild sensors  after each bronze materialization (and on their first tick), the partitions of
                 raw.<source> that the warehouse says are stale (partitions.stale_partitions, as
                 `plumbline sync` computes them) -> runs of raw.<source> and everything downstream,
                 one per contiguous range, keyed by the deliveries each partition is built from.
schedule         rebuilds the latest partition of each partitioned source every morning.
Why sensors and not automation conditions: a delivery is a file on disk, not a Dagster event, and
which partitions it made stale is known only to the warehouse (ops.landed_files against what each
partition was built from, quarantined files apart), which a condition over the instance's events
cannot see. Core and marts are in the rebuild jobs, so they follow raw in the same run; what they
follow besides (a dimension snapshot) is an automation condition (assets/policy.py).
The warehouse is the truth, not the sensors' history: a sensor started on a home that `plumbline
sync` filled finds nothing to do. The sensors read the warehouse only when a delivery or a bronze
materialization is new to them, and never wait for it: while a run writes it, the tick is skipped
and the next one looks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import dagster as dg
import duckdb

from orchestration import catalog, settings
from orchestration.ingest import landing
from orchestration.rebuild import partitions
from orchestration.rebuild.ranges import RANGE_END, RANGE_START, contiguous_ranges
from orchestration.resources import resources


def interval_seconds() -> int:
    """How often the daemon evaluates each sensor; a test deployment may shorten it. Read when the
    sensors are built (each load of the definitions), not when this module is imported."""
    return int(os.environ.get("PLUMBLINE_SENSOR_INTERVAL_SECONDS", "30"))


def scan(previous: dict[str, list]) -> dict[str, list]:
    """relative path -> [size, mtime_ns, sha256] of every delivery; unchanged files are not re-hashed."""
    out = {}
    root = settings.landing_dir()
    settle = landing.settle_seconds()
    for source in catalog.contracts():  # every source with a contract has a landing folder
        for d in landing.discover(root, source):
            if d.problem:
                out[d.relative] = [0, 0, "problem:" + d.problem]  # bronze records the refusal with its reason
                continue
            try:
                st = d.path.stat()
                if time.time() - st.st_mtime < settle:
                    continue  # still settling: left out of the cursor, so a later tick sees it as new
                old = previous.get(d.relative)
                if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
                    out[d.relative] = old
                else:
                    out[d.relative] = [st.st_size, st.st_mtime_ns, landing.content_hash(d.path)[0]]
            except OSError as e:  # bronze records why the file cannot be read; the tick goes on
                out[d.relative] = [0, 0, f"unreadable:{type(e).__name__}"]
    return out


class WarehouseBusy(Exception):
    """A run holds the warehouse for writing; the sensor looks again at its next tick."""


def read_warehouse(read, empty):
    """read(con) on the warehouse without waiting for a writer; `empty` when no sync has written it yet."""
    warehouse = resources()["warehouse"]
    if not warehouse.exists():
        return empty
    try:
        with warehouse.connect(read_only=True, wait_s=0) as con:
            return read(con)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            raise WarehouseBusy() from e
        raise


BUSY = "a run is writing the warehouse: checked again at the next tick"


def _landed(con) -> set[tuple[str, str]]:
    return set(con.execute("SELECT path, file_id FROM ops.landed_files").fetchall())


def _is_landed(path: str, entry: list, landed: set[tuple[str, str]]) -> bool:
    if str(entry[2]).startswith("problem:"):  # a refused file is recorded once, by path, with file id "-"
        return (path, "-") in landed
    return (path, entry[2]) in landed


def landing_sensor(ingest_job_name: str) -> dg.SensorDefinition:
    @dg.sensor(name="landing_sensor", job_name=ingest_job_name, minimum_interval_seconds=interval_seconds(), default_status=dg.DefaultSensorStatus.RUNNING,
               description="Ingests deliveries in the landing zone that ops.landed_files does not hold yet (path and content hash).")
    def _sensor(context: dg.SensorEvaluationContext):
        previous = json.loads(context.cursor) if context.cursor else {}
        current = scan(previous)
        seen = {p: v for p, v in current.items() if (previous.get(p) or [None] * 3)[2] != v[2]}
        if not seen:
            context.update_cursor(json.dumps(current))
            return dg.SkipReason(f"no new or changed deliveries among {len(current)} file(s)")
        try:  # new to this sensor is not new to plumbline: a sync may have taken it already
            landed = read_warehouse(_landed, set())
        except WarehouseBusy:
            return dg.SkipReason(f"{len(seen)} new or changed file(s); {BUSY}")
        changed = sorted(f"{p}:{v[2]}" for p, v in seen.items() if not _is_landed(p, v, landed))
        context.update_cursor(json.dumps(current))
        if not changed:
            return dg.SkipReason(f"{len(seen)} file(s) new to this sensor, every one already in ops.landed_files")
        run_key = "landing-" + hashlib.sha256("\n".join(changed).encode()).hexdigest()[:32]
        return dg.RunRequest(run_key=run_key, tags={"plumbline/deliveries": str(len(changed))})

    return _sensor


def _storage_id(cursor: str | None) -> int | None:
    try:
        return int(cursor) if cursor else None
    except ValueError:  # a cursor written by an older plumbline: start from the warehouse
        return None


def _digest(keys: list[str], files: dict[str, set[str]]) -> str:
    """The same partitions built from the same deliveries give the same run key."""
    text = ";".join(f"{k}={','.join(sorted(files.get(k, ())))}" for k in keys)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rebuild_sensor(source: str, job_name: str, partitioned: bool) -> dg.SensorDefinition:
    """The partitions of raw.<source> whose deliveries changed since they were built, after every
    bronze/<source> materialization."""
    key = dg.AssetKey(["bronze", source])
    raw = dg.AssetKey(["raw", source])

    @dg.sensor(name=f"rebuild_{source}_sensor", job_name=job_name, minimum_interval_seconds=interval_seconds(), default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Rebuilds the partitions of raw.{source} (and downstream) whose deliveries changed since they "
                           "were built (ops.landed_files against ops.partition_accounting).")
    def _sensor(context: dg.SensorEvaluationContext):
        latest = context.instance.fetch_materializations(key, limit=1, ascending=False).records
        latest_id = latest[0].storage_id if latest else 0
        since = _storage_id(context.cursor)
        if since is not None and latest_id <= since:
            return dg.SkipReason(f"no new bronze/{source} materialization")
        contract = catalog.contracts()[source]

        def read(con):
            held = {d for _, _, dates, _ in partitions.quarantined_files(con, source) for d in dates}
            return partitions.stale_partitions(con, contract), partitions.files_by_partition(con, contract), held

        try:
            stale, files, held = read_warehouse(read, ([], {}, set()))
        except WarehouseBusy:
            return dg.SkipReason(BUSY)
        context.update_cursor(str(latest_id))
        if not stale:
            return dg.SkipReason(f"raw.{source}: no stale partition")
        if not partitioned:
            return [dg.RunRequest(run_key=f"{source}:{_digest(stale, files)}", asset_selection=[raw])]
        # a quarantined delivery fails its partitions' blocking check: run them apart, as sync does
        blocked = [k for k in stale if k in held]
        ranges = contiguous_ranges([k for k in stale if k not in held]) + contiguous_ranges(blocked)
        return [dg.RunRequest(run_key=f"{start}:{end}:{_digest(partitions.partition_range(start, end), files)}",
                              tags={RANGE_START: start, RANGE_END: end}) for start, end in ranges]

    return _sensor
