"""raw.<source>: contract-enforced tables rebuilt partition by partition from bronze."""

import dagster as dg

from contracts.model import Contract
from orchestration import catalog, partition_metadata, partitions, quality, restatements, schema_checks
from orchestration.warehouse import SNAPSHOT_PARTITION, Warehouse, ident, table_exists


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
        owners=catalog.owners(contract),
        kinds={"duckdb"},
        code_version=catalog.code_version(contract),
        partitions_def=part_def,
        backfill_policy=dg.BackfillPolicy.single_run() if part_def else None,
        check_specs=[*quality.check_specs(contract, key), restatements.check_spec(contract, key),
                     *schema_checks.check_specs(key)],
        freshness_policy=catalog.freshness_policy(contract),
        metadata={"dagster/column_schema": catalog.column_schema(contract, part_def is not None),
                  "dagster/table_name": f"warehouse.{contract.table}"},
        tags={"plumbline/source": contract.name, "plumbline/layer": "raw"},
        pool="warehouse",
    )
    def _raw(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        keys = list(context.partition_keys) if part_def else None
        with warehouse.connect() as con:
            rebuilt = partitions.rebuild(con, contract, keys, context.run.run_id)
            accounts = rebuilt.accounts
            frame, dead, references = _observe(con, contract, keys)
            accounting_ok, accounting_meta = _verify_accounting(con, contract, accounts)
            restatement_check = restatements.check_result(con, contract, [a.partition for a in accounts], rebuilt.restated)
            schema_results = schema_checks.results(con, contract, keys)
        for a in accounts:
            context.log.debug(f"{contract.table} {a.partition}: delivered {a.delivered}, accepted {a.accepted}, "
                             f"dead-lettered {a.dead_lettered}, superseded {a.superseded}")
        checks = quality.validate(contract, frame, references, dead)
        checks += schema_results
        checks.append(dg.AssetCheckResult(check_name=quality.ACCOUNTING, passed=accounting_ok, metadata=accounting_meta))
        conformance = {r: n for r, n in dead.items() if r.endswith(("_type", "_required"))}
        checks.append(dg.AssetCheckResult(
            check_name=quality.CONFORMANCE, passed=not conformance, severity=dg.AssetCheckSeverity.WARN,
            metadata={"dead_lettered_by_rule": dg.MetadataValue.json(conformance),
                      "dead_lettered_rows": sum(conformance.values())}))
        checks.append(restatement_check)
        restated = {r["partition"]: r for r in rebuilt.restated}
        partition_metadata.record(context, {a.partition: _account_metadata(a, restated.get(a.partition)) for a in accounts})
        return dg.MaterializeResult(
            metadata={"dagster/column_schema": catalog.column_schema(contract, part_def is not None),
                      "contract_version": contract.version},
            check_results=checks,
        )

    return _raw


def _account_metadata(a: partitions.PartitionAccount, restated: dict | None) -> dict:
    """One partition's own figures: rows delivered, accepted, dead-lettered, superseded; its bronze files; its restatement."""
    return {"dagster/row_count": a.accepted, "delivered": a.delivered, "dead_lettered": a.dead_lettered,
            "superseded": a.superseded, **partition_metadata.built_from(a.built_from), **restatements.metadata(restated)}


def _observe(con, contract: Contract, keys):
    """The rows this run loaded, dead-letter counts by rule, and the values foreign keys point at."""
    where = "TRUE" if keys is None else "event_date IN (" + ", ".join("?::DATE" for _ in keys) + ")"
    params = keys or []
    frame = con.execute(f"SELECT * EXCLUDE (_source_file, _source_row) FROM {contract.table} WHERE {where}", params).df()
    dl_where = "partition_date IS NULL" if keys is None else "partition_date IN (" + ", ".join("?::DATE" for _ in keys) + ")"
    dead = dict(con.execute(
        f"SELECT rule_id, count(*) FROM ops.dead_letter WHERE source = ? AND status = 'open' AND {dl_where} GROUP BY ALL",
        [contract.name, *params]).fetchall())
    references = {}
    for rule in contract.rules:
        if rule.kind == "foreign_key":
            table, column = rule.reference
            exists = table_exists(con, "raw", table)
            references[rule.id] = [r[0] for r in con.execute(
                f"SELECT DISTINCT {ident(column)} FROM raw.{ident(table)}").fetchall()] if exists else []
    return frame, dead, references


# Open contract-rule rejects, and every line the reader rejected (those never become rows).
COUNTED_DEAD_LETTERS = "((stage = 'raw' AND status = 'open') OR stage = 'read')"


def _verify_accounting(con, contract: Contract, accounts) -> tuple[bool, dict]:
    """Recount each partition independently: rows in the table, open dead letters, staged rows."""
    broken = []
    for a in accounts:
        if contract.partitioning:
            in_table = con.execute(f"SELECT count(*) FROM {contract.table} WHERE event_date = ?::DATE", [a.partition]).fetchone()[0]
            dead = con.execute("SELECT count(DISTINCT (file_id, row_offset, stage)) FROM ops.dead_letter WHERE source = ? "
                               f"AND {COUNTED_DEAD_LETTERS} AND partition_date = ?::DATE", [contract.name, a.partition]).fetchone()[0]
        else:
            in_table = con.execute(f"SELECT count(*) FROM {contract.table}").fetchone()[0]
            dead = con.execute("SELECT count(DISTINCT (file_id, row_offset, stage)) FROM ops.dead_letter WHERE source = ? "
                               f"AND {COUNTED_DEAD_LETTERS} AND partition_date IS NULL", [contract.name]).fetchone()[0]
        if a.delivered != a.accepted + a.dead_lettered + a.superseded or in_table != a.accepted or dead != a.dead_lettered:
            broken.append({"partition": a.partition, "delivered": a.delivered, "accepted": a.accepted, "in_table": in_table,
                           "dead_lettered": a.dead_lettered, "open_dead_letters": dead, "superseded": a.superseded})
    meta = {"partitions_checked": len(accounts), "broken": dg.MetadataValue.json(broken[:20])}
    return not broken, meta
