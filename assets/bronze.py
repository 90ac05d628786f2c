"""bronze.<source>: every delivery in the landing zone taken once per content hash."""

from collections import Counter

import dagster as dg

from assets import policy
from contracts.model import Contract
from orchestration.ingest import bronze
from orchestration import catalog, names, settings
from orchestration.warehouse_resource import Warehouse


def bronze_asset(contract: Contract) -> dg.AssetsDefinition:
    @dg.asset(
        key=["bronze", contract.name],
        group_name="bronze",
        description=(f"Deliveries of {contract.name} from landing/{contract.name}/, each kept once per content "
                     "hash as an immutable parquet file of text columns, with a row in ops.landed_files. "
                     "Unreadable or refused files get a status and a reason and never stop the others."),
        kinds={"duckdb", "parquet"},
        code_version=catalog.code_version(contract),
        tags={names.SOURCE_TAG: contract.name},
        metadata={"dagster/column_schema": catalog.bronze_schema(contract)},
        **policy.warehouse_writer(),
    )
    def _bronze(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        with warehouse.connect() as con:
            landed = bronze.ingest_source(con, contract, context.run.run_id, log=context.log.info)
        statuses = Counter(f.status for f in landed)
        touched = sorted({d for f in landed if f.status == "loaded" for d in f.event_dates})
        problems = [f"{f.path}: {f.status}: {f.reason}" for f in landed if f.status not in ("loaded", "empty")]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(f.rows for f in landed if f.status == "loaded"),
            "dagster/column_schema": catalog.bronze_schema(contract),
            "files_seen": len(landed),
            "files_by_status": dg.MetadataValue.json(dict(statuses)),
            names.PARTITIONS_TOUCHED: dg.MetadataValue.json(touched),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            # The files this run read (identical re-sends and unsafe paths were not): lineage inputs.
            names.DELIVERIES: dg.MetadataValue.json([
                {"path": str(settings.landing_dir() / f.path), "file_id": f.file_id, "status": f.status, "rows": f.rows}
                for f in landed if f.status not in ("duplicate",) and f.file_id != "-"]),
        })

    return _bronze
