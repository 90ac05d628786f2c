"""Materialization metadata per partition, the one way every asset records its figures.

A range run (BackfillPolicy.single_run) is one step over many partitions, and Dagster emits one
materialization event per partition. What an asset returns in MaterializeResult is copied onto
every one of them, so figures go here instead: `record` puts each partition's own metadata on its
own event (context.add_asset_metadata with the partition key), and `run_totals` adds them up again
for readers that describe the whole step, such as lineage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from orchestration import names
from orchestration.names import BRONZE_FILES, BUILT_FROM

# Figures that add up across partitions (every row belongs to exactly one partition).
ADDITIVE = ("dagster/row_count", names.DELIVERED, names.DEAD_LETTERED, names.SUPERSEDED)


def record(context: dg.AssetExecutionContext, by_partition: Mapping[str, Mapping[str, Any]]) -> None:
    """Give each partition's materialization event its own metadata. Every partition the step
    materializes needs an entry: a partition left out would show no figures rather than wrong ones,
    and a run-wide number must not stand in for it. An unpartitioned asset passes its one entry."""
    if context.assets_def.partitions_def is None:
        [metadata] = by_partition.values()
        context.add_asset_metadata(dict(metadata))
        return
    targeted = set(context.partition_keys)
    if set(by_partition) != targeted:
        missing, extra = sorted(targeted - set(by_partition)), sorted(set(by_partition) - targeted)
        raise ValueError(f"{context.assets_def.key.to_user_string()}: no metadata for partition(s) {missing[:5]}, "
                         f"metadata for partition(s) not materialized {extra[:5]}")
    for key, metadata in by_partition.items():
        context.add_asset_metadata(dict(metadata), partition_key=key)


def built_from(files: Sequence[str]) -> dict:
    """A partition's bronze files, counted and named (their ids), so a run's files can be counted once."""
    return {BRONZE_FILES: len(files), BUILT_FROM: dg.MetadataValue.json(sorted(files))}


def run_totals(materializations: Sequence[dg.AssetMaterialization]) -> dict:
    """The metadata of one step over every partition it materialized: shared entries as they are,
    additive figures summed, bronze files counted once however many partitions they touch."""
    if not materializations:
        return {}
    total = dict(materializations[0].metadata)
    if len(materializations) == 1:
        return total
    for key in ADDITIVE:
        values = [m.metadata[key].value for m in materializations if key in m.metadata]
        if values:
            total[key] = dg.MetadataValue.int(int(sum(values)))
    files = [m.metadata[BUILT_FROM].value for m in materializations if BUILT_FROM in m.metadata]
    if files:
        ids = sorted({f for group in files for f in group})
        total[BRONZE_FILES] = dg.MetadataValue.int(len(ids))
        total[BUILT_FROM] = dg.MetadataValue.json(ids)
    return total
