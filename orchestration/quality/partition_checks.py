"""One verdict per partition, as a partitioned Dagster asset check, so the check's partitions view
says which days are bad and why.

A partitioned asset's range runs (BackfillPolicy.single_run) build many partitions in one step, and
an AssetCheckResult there carries no partition. So an asset with partitions gets one extra check
whose spec has the asset's partitions_def; after the materialization the asset yields verdicts():
one AssetCheckEvaluation per partition of the run (that day's counts, rules and examples), each
aimed at that partition's new materialization so the instance keeps it as the partition's current
status, and one AssetCheckResult that sums them up. A run of a single partition yields only that
partition's verdict as the AssetCheckResult: Dagster attaches the partition to it itself.

One check per asset, not one per rule: a year's range run adds one event per partition (365), not
one per rule and partition (about 12,000 for flights and weather, three times the year's event log).
The asset's other checks stay asset-level and keep their verdicts and metadata.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import dagster as dg
# The pointer from an evaluation to the materialization it judged; Dagster exports no public name for it.
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

LISTED = 10  # bad partitions named in the summary


@dataclass(frozen=True)
class Verdict:
    """One partition's verdict: passed, or failed (ERROR or WARN) with why and that day's figures."""

    passed: bool
    description: str
    error: bool = False
    metadata: dict = field(default_factory=dict)

    @property
    def severity(self) -> dg.AssetCheckSeverity:
        return dg.AssetCheckSeverity.ERROR if self.error else dg.AssetCheckSeverity.WARN


def spec(name: str, asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition, description: str) -> dg.AssetCheckSpec:
    # never blocking: the asset-level checks it restates day by day already gate what runs downstream
    with warnings.catch_warnings():  # a partitions_def on a check spec is a preview in Dagster 1.13, used on purpose
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset_key, partitions_def=partitions_def, blocking=False,
                                 description=f"{description} (one result per partition: the check's partitions show which days are bad)")


def verdicts(context: dg.AssetExecutionContext, name: str, by_partition: Mapping[str, Verdict]) -> Iterator:
    """Yield after the asset's MaterializeResult: each partition's verdict aimed at its new
    materialization, then the summary (in a run of one partition, that partition's verdict)."""
    if not by_partition:
        return
    if context.has_partition_key:  # Dagster gives this run's AssetCheckResult the partition
        v = by_partition[context.partition_key]
        yield dg.AssetCheckResult(check_name=name, passed=v.passed, severity=v.severity, description=v.description,
                                  metadata=v.metadata)
        return
    key = context.asset_key
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=list(by_partition)), limit=len(by_partition)).records
    latest = {}
    for r in records:  # newest first: this run's materialization of each partition
        latest.setdefault(r.partition_key, r)
    for partition, v in sorted(by_partition.items()):
        r = latest.get(partition)
        yield dg.AssetCheckEvaluation(
            asset_key=key, check_name=name, passed=v.passed, severity=v.severity, description=v.description,
            metadata=v.metadata, partition=partition, blocking=False,
            target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                storage_id=r.storage_id, run_id=r.run_id, timestamp=r.timestamp) if r else None)
    yield summary(name, by_partition)


def summary(name: str, by_partition: Mapping[str, Verdict]) -> dg.AssetCheckResult:
    bad = sorted(p for p, v in by_partition.items() if not v.passed)
    first = f"; {bad[0]}: {by_partition[bad[0]].description}" if bad else ""
    return dg.AssetCheckResult(
        check_name=name, passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR if any(by_partition[p].error for p in bad) else dg.AssetCheckSeverity.WARN,
        description=(f"{len(bad)} of {len(by_partition)} partition(s) of this run failed: "
                     + ", ".join(bad[:LISTED]) + (f" and {len(bad) - LISTED} more" if len(bad) > LISTED else "") + first
                     if bad else f"every one of {len(by_partition)} partition(s) of this run passed"),
        metadata={"partitions_checked": len(by_partition), "partitions_failed": len(bad),
                  "failed_partitions": dg.MetadataValue.json(bad[:100])})
