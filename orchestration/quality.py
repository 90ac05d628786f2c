"""Contract quality rules run by Great Expectations on what a materialization loaded, reported as
Dagster asset checks (error rules block downstream; warning and info rules only report).

Row rules already decided dead-lettering in SQL (orchestration.conform); here Great Expectations
validates the table that resulted, and each check's metadata carries both: what the table holds
and how many rows the rule sent to the dead-letter queue.
"""

from __future__ import annotations

import logging
import os

import dagster as dg
import pandas as pd

from contracts.model import Contract, Rule
from orchestration import catalog

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.ERROR)

CONFORMANCE = "schema_conformance"  # type and required rules, folded into one check
ACCOUNTING = "accounting"
EXAMPLES = 5


def checked_rules(contract: Contract) -> list[Rule]:
    """The rules that get their own asset check (type/required fold into schema_conformance)."""
    return [r for r in contract.rules if r.kind not in ("type", "required")]


def check_specs(contract: Contract, asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(ACCOUNTING, asset=asset_key, blocking=True,
                          description="delivered = accepted + dead-lettered + superseded duplicates, per partition"),
        dg.AssetCheckSpec(CONFORMANCE, asset=asset_key, blocking=False,
                          description="every delivered value parses as its contract type and required values are present "
                                      "(failing rows go to ops.dead_letter)"),
    ]
    for r in checked_rules(contract):
        specs.append(dg.AssetCheckSpec(r.id, asset=asset_key, blocking=r.blocks,
                                       description=f"[{r.severity}] {r.description} ({catalog.shown_path(contract)})"))
    return specs


def _expectation(rule: Rule, reference_values: dict):
    import great_expectations as gx

    meta = {"rule_id": rule.id}
    if rule.kind == "range":
        return gx.expectations.ExpectColumnValuesToBeBetween(column=rule.column, min_value=rule.minimum, max_value=rule.maximum, meta=meta)
    if rule.kind == "allowed_values":
        return gx.expectations.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.values), meta=meta)
    if rule.kind == "pattern":
        return gx.expectations.ExpectColumnValuesToMatchRegex(column=rule.column, regex=rule.pattern, meta=meta)
    if rule.kind == "not_null":
        return gx.expectations.ExpectColumnValuesToNotBeNull(column=rule.column, meta=meta)
    if rule.kind == "row_count":
        return gx.expectations.ExpectTableRowCountToBeBetween(min_value=int(rule.threshold) + 1, meta=meta)
    if rule.kind == "foreign_key":
        return gx.expectations.ExpectColumnValuesToBeInSet(column=rule.column, value_set=reference_values.get(rule.id, []), meta=meta)
    raise ValueError(f"no expectation for rule kind {rule.kind}")


def validate(contract: Contract, frame: pd.DataFrame, reference_values: dict, dead_lettered: dict[str, int]) -> list[dg.AssetCheckResult]:
    """Run every checked rule on `frame`; dead_lettered maps rule id -> rows it rejected in this run."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    rules = checked_rules(contract)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (context.data_sources.add_pandas("plumbline").add_dataframe_asset(contract.name)
             .add_batch_definition_whole_dataframe("materialized").get_batch(batch_parameters={"dataframe": frame}))
    suite = gx.ExpectationSuite(name=f"{contract.name}_{contract.version}")
    for r in rules:
        suite.add_expectation(_expectation(r, reference_values))
    suite = context.suites.add(suite)
    outcome = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES})
    by_rule = {r.expectation_config.meta["rule_id"]: r for r in outcome.results}

    results = []
    for rule in rules:
        res = by_rule[rule.id]
        info = res.result or {}
        unexpected = int(info.get("unexpected_count") or 0)
        severity = dg.AssetCheckSeverity.ERROR if rule.severity == "error" else dg.AssetCheckSeverity.WARN
        examples = [None if pd.isna(v) else (v if isinstance(v, (int, float, str)) else str(v))
                    for v in info.get("partial_unexpected_list") or []]
        metadata = {
            "rule": rule.description,
            "contract_severity": rule.severity,
            "rows_checked": len(frame),
            "unexpected_rows_in_table": unexpected,
            "dead_lettered_rows": dead_lettered.get(rule.id, 0),
            "examples": dg.MetadataValue.json(examples),
            "engine": "great_expectations",
        }
        if "observed_value" in info:
            metadata["observed_value"] = str(info["observed_value"])
        if res.exception_info and res.exception_info.get("raised_exception"):
            metadata["error"] = str(res.exception_info.get("exception_message"))
        results.append(dg.AssetCheckResult(check_name=rule.id, passed=bool(res.success), severity=severity, metadata=metadata))
    return results
