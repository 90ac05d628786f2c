"""raw.<source>: contract-enforced tables rebuilt partition by partition from bronze."""

import dagster as dg

from assets import policy
from contracts.model import Contract
from orchestration import catalog, names
from orchestration.rebuild import partition_metadata, partitions, restatements
from orchestration.quality import checks, dead_letter, partition_checks, schema_checks
from orchestration.warehouse import SNAPSHOT_PARTITION, key_list, literal
from orchestration.warehouse_resource import Warehouse


def raw_asset(contract: Contract) -> dg.AssetsDefinition:
    key = dg.AssetKey(["raw", contract.name])
    part_def = catalog.partitions_def(contract)
    kind = "daily partitions by event date" if part_def else "a snapshot (latest delivery of each key wins)"

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["bronze", contract.name])],
        group_name="raw",
        description=(f"{contract.description} Contract-enforced ({catalog.shown_path(contract)}, v{contract.version}) as {kind}: "
                     "casts and sentinels, row rules (failures to ops.dead_letter), dedup by primary key "
                     f"{list(contract.primary_key)} with the latest delivery winning; each rebuild is one transaction."),
        kinds={"duckdb"},
        code_version=catalog.code_version(contract),
        check_specs=[*checks.check_specs(contract, key), restatements.check_spec(contract, key),
                     *schema_checks.check_specs(key), *([checks.day_spec(contract, key, part_def)] if part_def else [])],
        metadata={"dagster/column_schema": catalog.column_schema(contract, part_def is not None),
                  "dagster/table_name": f"warehouse.{contract.table}"},
        tags={names.SOURCE_TAG: contract.name},
        **policy.warehouse_writer(part_def),
    )
    def _raw(context: dg.AssetExecutionContext, warehouse: Warehouse):
        keys = list(context.partition_keys) if part_def else None
        with warehouse.connect() as con:
            rebuilt = partitions.rebuild(con, contract, keys, context.run.run_id)
            accounts = rebuilt.accounts
            observed = checks.observe(con, contract, accounts)  # reads the staged rows rebuild() left in _stage
            accounting_ok, accounting_meta = _verify_accounting(con, contract, accounts)
            restatement_check = restatements.check_result(con, contract, [a.partition for a in accounts], rebuilt.restated)
            schema_results = schema_checks.results(con, contract, keys)
        results = checks.judge(contract, observed)
        results += schema_results
        results.append(dg.AssetCheckResult(
            check_name=checks.ACCOUNTING, passed=accounting_ok, metadata=accounting_meta,
            description=(f"delivered = accepted + dead-lettered + superseded holds in each of {len(accounts)} rebuilt partition(s)"
                         if accounting_ok else f"the recount disagrees in {len(accounting_meta['broken'].value)} partition(s), "
                         "first " + str(accounting_meta["broken"].value[0]))))
        results.append(restatement_check)
        restated = {r["partition"]: r for r in rebuilt.restated}
        partition_metadata.record(context, {a.partition: _account_metadata(a, restated.get(a.partition)) for a in accounts})
        yield dg.MaterializeResult(
            metadata={"dagster/column_schema": catalog.column_schema(contract, part_def is not None),
                      "contract_version": contract.version},
            check_results=results,
        )
        if part_def:  # after the materialization: each partition's verdict points at its new materialization
            yield from partition_checks.verdicts(context, names.CONTRACT_BY_PARTITION, checks.day_verdicts(contract, observed))

    return _raw


def _account_metadata(a: partitions.PartitionAccount, restated: dict | None) -> dict:
    """One partition's own figures: rows delivered, accepted, dead-lettered, superseded; its bronze files; its restatement."""
    return {"dagster/row_count": a.accepted, names.DELIVERED: a.delivered, names.DEAD_LETTERED: a.dead_lettered,
            names.SUPERSEDED: a.superseded, **partition_metadata.built_from(a.built_from), **restatements.metadata(restated)}


def _verify_accounting(con, contract: Contract, accounts) -> tuple[bool, dict]:
    """Recount each partition independently: rows in the table, open dead letters, staged rows."""
    broken = []
    keys = [a.partition for a in accounts] if contract.partitioning else None
    # one grouped query each for every partition, not two queries per partition
    group, where = ("strftime(event_date, '%Y-%m-%d')", f"event_date IN {key_list(keys)}") if keys is not None else (literal(SNAPSHOT_PARTITION), "TRUE")
    tables = dict(con.execute(f"SELECT {group}, count(*) FROM {contract.table} WHERE {where} GROUP BY ALL").fetchall())
    deads = dead_letter.counted_by_partition(con, contract.name, keys)
    for a in accounts:
        in_table, dead = tables.get(a.partition, 0), deads.get(a.partition, 0)
        if a.delivered != a.accepted + a.dead_lettered + a.superseded or in_table != a.accepted or dead != a.dead_lettered:
            broken.append({"partition": a.partition, "delivered": a.delivered, "accepted": a.accepted, "in_table": in_table,
                           "dead_lettered": a.dead_lettered, "open_dead_letters": dead, "superseded": a.superseded})
    meta = {"partitions_checked": len(accounts), "broken": dg.MetadataValue.json(broken[:20])}
    return not broken, meta
