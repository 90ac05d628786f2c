"""The decorator arguments every asset shares: each one writes the warehouse. Owners and the layer tag
are applied to every asset in one place too, by orchestration/definitions.py."""

import dagster as dg

WAREHOUSE_POOL = "warehouse"  # DuckDB takes one writer per file: orchestration/dagster.yaml limits the pool to one step


# Pool and backfill policy sit on the op, which no public Dagster API replaces once the asset is defined (AssetSpec has neither).
def warehouse_writer(partitions_def: dg.PartitionsDefinition | None = None) -> dict:
    """An asset that writes the warehouse waits for the warehouse pool; a range of its partitions is one run."""
    return dict(pool=WAREHOUSE_POOL, partitions_def=partitions_def,
                backfill_policy=dg.BackfillPolicy.single_run() if partitions_def is not None else None)
