"""The decorator arguments every asset shares (each one writes the warehouse), and the automation
conditions core and marts follow. Owners, the layer tag, freshness and those conditions are applied
to every asset in one place, by orchestration/definitions.py."""

import dagster as dg

WAREHOUSE_POOL = "warehouse"  # DuckDB takes one writer per file: orchestration/dagster.yaml limits the pool to one step


# Pool and backfill policy sit on the op, which no public Dagster API replaces once the asset is defined (AssetSpec has neither).
def warehouse_writer(partitions_def: dg.PartitionsDefinition | None = None) -> dict:
    """An asset that writes the warehouse waits for the warehouse pool; a range of its partitions is one run."""
    return dict(pool=WAREHOUSE_POOL, partitions_def=partitions_def,
                backfill_policy=dg.BackfillPolicy.single_run() if partitions_def is not None else None)


AC = dg.AutomationCondition


def follows_snapshots(snapshots: list[dg.AssetKey]) -> dg.AutomationCondition:
    """Every built partition is rebuilt when a dimension snapshot it joins changed in a run that did
    not rebuild it too. Partitioned inputs are left out on purpose: the rebuild jobs rebuild raw and
    everything downstream of it in one run, for exactly the partitions a delivery made stale."""
    changed = AC.any_deps_match(AC.newly_updated() & ~AC.executed_with_root_target()).allow(dg.AssetSelection.assets(*snapshots))
    return (changed.since_last_handled() & ~AC.missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()
            ).with_label("a dimension snapshot changed")


# A partition whose input is requested on the same tick is requested with it, in the same run.
FOLLOWS_REQUESTED_INPUTS = (AC.any_deps_match(AC.will_be_requested()) & ~AC.missing() & ~AC.in_progress()
                            ).with_label("its input is being rebuilt")
