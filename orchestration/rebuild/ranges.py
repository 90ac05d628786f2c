"""Partition ranges as Dagster runs them: the run tags that make one run materialize a range of
daily partitions (with BackfillPolicy.single_run), and partition keys grouped into such ranges.
Shared by `plumbline sync` and backfill, and by the sensors that launch the same runs."""

from __future__ import annotations

import datetime as dt

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def contiguous_ranges(keys: list[str]) -> list[tuple[str, str]]:
    """['2013-01-01','2013-01-02','2013-01-05'] -> [('2013-01-01','2013-01-02'), ('2013-01-05','2013-01-05')]"""
    out: list[tuple[str, str]] = []
    for k in sorted(keys):
        day = dt.date.fromisoformat(k)
        if out and dt.date.fromisoformat(out[-1][1]) + dt.timedelta(days=1) == day:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out
