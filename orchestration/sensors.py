"""What runs plumbline over time: a landing sensor, one rebuild sensor per source, a daily schedule.

landing_sensor   new or changed deliveries (by content hash, remembered in the cursor) -> one
                 ingest run; its run key is a hash of what it found, so no tick submits it twice.
rebuild sensors  each bronze materialization -> runs of raw.<source> and everything downstream for
                 exactly the partitions that ingestion touched, one run per contiguous range.
schedule         rebuilds the latest partition of each partitioned source every morning.
The sensors touch files and the Dagster instance only, never the warehouse, so a tick never waits
for a DuckDB writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import dagster as dg

from orchestration import catalog, landing, settings
from orchestration.sync import RANGE_END, RANGE_START, contiguous_ranges

# How often the daemon evaluates each sensor; a test deployment may shorten it.
INTERVAL_SECONDS = int(os.environ.get("PLUMBLINE_SENSOR_INTERVAL_SECONDS", "30"))


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


def landing_sensor(ingest_job_name: str) -> dg.SensorDefinition:
    @dg.sensor(name="landing_sensor", job_name=ingest_job_name, minimum_interval_seconds=INTERVAL_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Ingests new and changed deliveries in the landing zone (content hash, kept in the cursor).")
    def _sensor(context: dg.SensorEvaluationContext):
        previous = json.loads(context.cursor) if context.cursor else {}
        current = scan(previous)
        changed = sorted(f"{p}:{v[2]}" for p, v in current.items() if (previous.get(p) or [None] * 3)[2] != v[2])
        if not changed:
            context.update_cursor(json.dumps(current))
            return dg.SkipReason(f"no new or changed deliveries among {len(current)} file(s)")
        run_key = "landing-" + hashlib.sha256("\n".join(changed).encode()).hexdigest()[:32]
        context.update_cursor(json.dumps(current))
        return dg.RunRequest(run_key=run_key, tags={"plumbline/deliveries": str(len(changed))})

    return _sensor


def rebuild_sensor(source: str, job_name: str, partitioned: bool) -> dg.SensorDefinition:
    """Every bronze/<source> materialization since the cursor, oldest first, none skipped."""
    key = dg.AssetKey(["bronze", source])

    @dg.sensor(name=f"rebuild_{source}_sensor", job_name=job_name, minimum_interval_seconds=INTERVAL_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Rebuilds the partitions of raw.{source} (and downstream) that an ingestion touched.")
    def _sensor(context: dg.SensorEvaluationContext):
        result = context.instance.fetch_materializations(key, limit=100, cursor=context.cursor, ascending=True)
        requests = []
        for record in result.records:
            run_id = record.run_id
            meta = record.asset_materialization.metadata if record.asset_materialization else {}
            if not partitioned:
                statuses = meta.get("files_by_status")
                if statuses and statuses.value.get("loaded"):
                    requests.append(dg.RunRequest(run_key=f"{run_id}:{source}", asset_selection=[dg.AssetKey(["raw", source])]))
                continue
            touched = meta.get("partitions_touched")
            for start, end in contiguous_ranges(list(touched.value) if touched else []):
                requests.append(dg.RunRequest(run_key=f"{run_id}:{start}:{end}", tags={RANGE_START: start, RANGE_END: end}))
        if result.records:
            context.update_cursor(result.cursor)
        return requests or dg.SkipReason(f"no new bronze/{source} materialization touching a partition")

    return _sensor
