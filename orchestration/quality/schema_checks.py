"""The raw assets' schema checks: a blocking check that fails on partitions a quarantined delivery
touches, and a warning check that reports how the schema versions feeding a partition differ from
the source's previous version."""

from __future__ import annotations

import json

import dagster as dg

from contracts.model import Contract
from orchestration import names
from orchestration.rebuild import partitions
from orchestration.ingest import schema_changes
from orchestration.warehouse import SNAPSHOT_PARTITION

def check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(names.SCHEMA_CHANGES, asset=asset_key, blocking=True,
                          description="no delivery for the partitions a run builds is quarantined by a breaking schema "
                                      "change (ERROR naming the source, file, change, contract line and replay command); "
                                      "WARN while a quarantined delivery holds back other partitions of the asset"),
        dg.AssetCheckSpec(names.SCHEMA_VERSION_DIFF, asset=asset_key, blocking=False,
                          description="the delivered schema versions of these partitions, and how each differs from "
                                      "the source's previous version (ops.schema_versions)"),
    ]


def results(con, contract: Contract, keys: list[str] | None) -> list[dg.AssetCheckResult]:
    wanted = set(keys) if keys is not None else {SNAPSHOT_PARTITION}
    quarantined = partitions.quarantined_files(con, contract.name)
    held = [(path, sorted(wanted.intersection(dates) if keys is not None else wanted), reason)
            for _, path, dates, reason in quarantined if keys is None or wanted.intersection(dates)]
    # the asset as it stands: deliveries that hold back partitions this run did not build
    elsewhere = [(path, sorted(dates), reason) for _, path, dates, reason in quarantined
                 if keys is not None and not wanted.intersection(dates)]
    if held:
        reason = f"{len(held)} delivery(ies) of {contract.name} quarantined: " + " | ".join(r for _, _, r in held[:3])
    elif elsewhere:
        reason = (f"no quarantined delivery touches these partitions, but {len(elsewhere)} still hold back other partitions "
                  f"of the asset: " + " | ".join(f"{p} ({', '.join(d[:3])})" for p, d, _ in elsewhere[:3]))
    else:
        reason = f"no delivery of {contract.name} is quarantined"
    quarantine = dg.AssetCheckResult(
        check_name=names.SCHEMA_CHANGES, passed=not (held or elsewhere),
        severity=dg.AssetCheckSeverity.ERROR if held else dg.AssetCheckSeverity.WARN, description=reason,
        metadata={"quarantined": dg.MetadataValue.json([{"file": p, "partitions": d[:10], "reason": r} for p, d, r in held[:20]]),
                  "quarantined_elsewhere": dg.MetadataValue.json(
                      [{"file": p, "partitions": d[:10], "reason": r} for p, d, r in elsewhere[:20]])})
    return [quarantine, _version_diff(con, contract, wanted, keys is None)]


def _version_diff(con, contract: Contract, wanted: set[str], snapshot: bool) -> dg.AssetCheckResult:
    history = schema_changes.versions(con, contract.name)
    feeding = [v for v in history if snapshot or wanted.intersection(json.loads(v["partitions"]))]
    rows, changed = [], False
    for v in feeding:
        i = history.index(v)
        diff = schema_changes.diff_schemas(json.loads(history[i - 1]["observed_schema"]), json.loads(v["observed_schema"])) if i else []
        changed |= bool(diff)
        rows.append({"version": v["schema_hash"], "first_file": v["first_file"], "files": v["files"],
                     "previous": history[i - 1]["schema_hash"] if i else None, "difference": diff})
    changes = sorted({c for r in rows for c in r["difference"]})
    reason = (f"{len(feeding)} schema version(s) feed these partitions, changed from the version before: "
              + ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "") if changed else
              f"{len(feeding)} schema version(s) feed these partitions, none differs from the version before it")
    return dg.AssetCheckResult(
        check_name=names.SCHEMA_VERSION_DIFF, passed=not changed, severity=dg.AssetCheckSeverity.WARN, description=reason,
        metadata={"versions": dg.MetadataValue.json(rows[:20]), "versions_feeding": len(feeding)})
