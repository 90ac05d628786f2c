"""Contract quality rules as Dagster asset checks, judged by Great Expectations on the rows each
partition was DELIVERED (typed, before dead-lettering), so a rule stays red when it rejected rows.

A raw rebuild (orchestration.rebuild.partitions) leaves the typed delivered rows of the partitions it built
in the temp table `_stage`, with `_failed` naming the error rules each row broke. For each rule:

- passed: no delivered row of the rebuilt partitions breaks it, and the asset holds no open dead
  letter of it (nor, for row_count, a built partition with too few rows);
- WARN: rows broke it (error rules dead-lettered them) within the tolerance, or other partitions
  of the asset still hold its open dead letters: the count, the partitions and example values;
- ERROR: in a rebuilt partition the rule rejected more than `rejectTolerance` of the delivered
  rows, or a row that breaks an error rule reached the table. Only error rules block (the spec).
Warning and info rules never reject a row: broken, they are a WARN with the count.

A partitioned asset also gets contract_by_partition (day_verdicts): each rebuilt partition judged on
its own dead letters and row count, one result per partition (orchestration.quality.partition_checks).

Great Expectations judges the distinct delivered values of each rule's column, grouped in DuckDB,
each weighted by the rows that delivered it (_distinct_values): the verdicts and counts of judging
every row, without copying every row into pandas.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dagster as dg

from contracts.model import Contract, Rule
from orchestration import catalog, names
from orchestration.names import ACCOUNTING, CONFORMANCE
from orchestration.quality import dead_letter, partition_checks, verdicts
from orchestration.quality.references import REFERENCED, in_reference
from orchestration.rebuild.conform import rule_condition
from orchestration.warehouse import SNAPSHOT_PARTITION, ident, key_list, literal, table_exists

if TYPE_CHECKING:
    import pandas as pd

# pandas and Great Expectations load inside the functions that judge the rules: the code location
# imports this module, and only the steps that check a partition need them.

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.ERROR)

EXAMPLES = 5
LISTED = 20  # partitions named in a check's metadata
DAY_EXAMPLES = 3  # values named in a partition's verdict, per rule


def checked_rules(contract: Contract) -> list[Rule]:
    """The rules that get their own asset check (type/required fold into schema_conformance)."""
    return [r for r in contract.rules if r.kind not in ("type", "required")]


def _rejects(contract: Contract, rule: Rule) -> bool:
    return rule in contract.rejecting_rules()


def _scope(contract: Contract, rule: Rule) -> str:
    """What a rule's check judges, in words for its description."""
    if rule.kind == "row_count":
        return "judged on the accepted rows of every built partition of the asset (ops.partition_accounting)"
    if _rejects(contract, rule):
        return (f"judged by Great Expectations on every delivered row of the partitions a run rebuilds, before "
                f"dead-lettering, and on the asset's open dead letters: WARN when it rejected rows, ERROR when it "
                f"rejected more than {contract.tolerance(rule):.2%} of a rebuilt partition's rows (rejectTolerance)")
    return ("judged by Great Expectations on every delivered row of the partitions a run rebuilds; "
            "it rejects nothing, so rows that break it are loaded and the check is a WARN with their count")


def check_specs(contract: Contract, asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(ACCOUNTING, asset=asset_key, blocking=True,
                          description="delivered = accepted + dead-lettered + superseded duplicates, recounted for "
                                      "each partition the run rebuilt"),
        dg.AssetCheckSpec(CONFORMANCE, asset=asset_key, blocking=False,
                          description="every delivered value parses as its contract type and required values are present "
                                      "(failing rows go to ops.dead_letter); judged on the partitions a run rebuilds and "
                                      "on the asset's open dead letters, ERROR over rejectTolerance"),
    ]
    for r in checked_rules(contract):
        specs.append(dg.AssetCheckSpec(r.id, asset=asset_key, blocking=r.blocks,
                                       description=f"[{r.severity}] {r.description}; {_scope(contract, r)} ({catalog.shown_path(contract)})"))
    return specs


@dataclass(frozen=True)
class _Day:
    """One rebuilt partition's findings, for its own verdict (day_verdicts)."""

    dead_lettered: int
    reasons: list                      # the first dead letters' reasons (value, rule, why)
    loaded: dict[str, int]             # rule that rejects nothing -> delivered rows breaking it
    loaded_examples: dict[str, list]   # that rule -> example values


@dataclass(frozen=True)
class Observed:
    """What the checks judge, read from the warehouse once per materialization."""

    delivered: dict[str, int]                  # rebuilt partition -> delivered rows
    rejected: dict[str, dict[str, int]]        # rule id -> rebuilt partition -> rows it rejected
    open_elsewhere: dict[str, dict[str, int]]  # rule id -> other partition -> open dead letters
    accepted: dict[str, int]                   # every built partition -> accepted rows
    values: pd.DataFrame                       # the distinct delivered values of each rule column (_distinct_values)
    rows_checked: int                          # delivered rows of the rebuilt partitions
    references: dict[str, list | None]         # foreign key rule id -> the values it may point at
    days: dict[str, _Day]                      # rebuilt partition -> what broke in it (partition verdicts)


def observe(con, contract: Contract, accounts) -> Observed:
    """Read what the checks need right after partitions.rebuild() built `accounts`, while its temp
    table _stage is still there; judge() then runs without holding the warehouse."""
    import pandas as pd

    snapshot = contract.partitioning is None
    keys = [a.partition for a in accounts]
    rejected: dict[str, dict[str, int]] = {}
    if accounts:
        for p, rule, n in con.execute(
                f"""SELECT p, rule, count(*) FROM (
                    SELECT {_partition('_event_date', snapshot)} AS p, unnest(string_split(_failed, ',')) AS rule
                    FROM _stage WHERE _failed <> '') GROUP BY ALL""").fetchall():
            rejected.setdefault(rule, {})[p] = n
    elsewhere: dict[str, dict[str, int]] = {}
    if not snapshot:  # a snapshot is rebuilt whole: no other partition holds dead letters
        elsewhere = dead_letter.open_rule_counts_outside(con, contract.name, keys)
    accepted = dict(con.execute(
        "SELECT strftime(partition_date, '%Y-%m-%d'), accepted FROM ops.partition_accounting WHERE source = ?",
        [contract.name]).fetchall())
    values, rows = _distinct_values(con, contract, checked_rules(contract), keys) if keys else (pd.DataFrame(), 0)
    days = _days(con, contract, accounts) if accounts and not snapshot else {}
    return Observed({a.partition: a.delivered for a in accounts}, rejected, elsewhere, accepted, values, rows,
                    _references(con, contract), days)


def judge(contract: Contract, seen: Observed) -> list[dg.AssetCheckResult]:
    """Every contract rule's check (Great Expectations) and schema_conformance."""
    rules = checked_rules(contract)
    outcomes = _validate(contract, rules, seen.values, seen.references, seen.accepted)
    out = [_result(contract, rule, outcomes.get(rule.id, _Outcome(0, [])), seen, seen.rows_checked) for rule in rules]
    out.append(_conformance(contract, seen))
    return out


def _partition(column: str, snapshot: bool) -> str:
    return f"{literal(SNAPSHOT_PARTITION)}" if snapshot else f"strftime({column}, '%Y-%m-%d')"


_TABLE_ROWS = 1 << 48  # a table row's position: its rowid after every staged row's


# Every checked row rule is a column-map rule: whether a row breaks it depends on that row's value in
# one column alone. So Great Expectations judges each distinct delivered value of a rule's column once
# (grouped where the rows are, in DuckDB), and a value it finds unexpected counts for every row that
# delivered it: the same verdicts and counts as on a frame of every row, at the cost of the distinct values.
def _distinct_values(con, contract: Contract, rules: list[Rule], keys: list[str]) -> tuple[pd.DataFrame, int]:
    """(one row per distinct value of each rule column: _column, the value under its own column name
    (the other columns NULL), _rows that delivered it, _first: the positions of its first EXAMPLES rows,
    _shown: the value as DuckDB returned it; the number of delivered rows)."""
    import pandas as pd

    columns = sorted({r.column for r in rules if r.column})
    where = "TRUE" if contract.partitioning is None else f"event_date IN {key_list(keys)}"
    if not columns:
        return pd.DataFrame(), con.execute(f"SELECT (SELECT count(*) FROM _stage WHERE _failed <> '') + "
                                           f"(SELECT count(*) FROM {contract.table} WHERE {where})").fetchall()[0][0]
    cols = ", ".join(ident(c) for c in columns)
    # The delivered rows of the rebuilt partitions, typed: the dead-lettered ones and the accepted ones
    # (a superseded duplicate is represented by the row that won), placed in the order they are read (the
    # staged rows, then the table's, each in rowid order); one grouping set per rule column, so one scan
    # yields every column's distinct values.
    grouped = con.execute(f"""
        WITH delivered AS (SELECT {cols}, rowid AS _pos FROM _stage WHERE _failed <> ''
                           UNION ALL SELECT {cols}, rowid + {_TABLE_ROWS} AS _pos FROM {contract.table} WHERE {where})
        SELECT {cols}, grouping({cols}) AS _set, count(*) AS _rows, min(_pos, {EXAMPLES}) AS _first
        FROM delivered GROUP BY GROUPING SETS ({", ".join(f"({ident(c)})" for c in columns)})
        ORDER BY _set, _first""").to_arrow_table()
    if not grouped.num_rows:
        return pd.DataFrame(), 0
    width = len(columns)
    # grouping() sets a bit for each column NOT grouped: the set of column i has every bit but bit (width - 1 - i)
    position_of = {((1 << width) - 1) ^ (1 << (width - 1 - i)): i for i in range(width)}
    sets = grouped.column("_set").to_pylist()
    own = [position_of[s] for s in sets]
    frame = grouped.select(columns).to_pandas()
    frame.insert(0, "_value", range(len(frame)))  # names a value in Great Expectations' unexpected_index_list
    frame["_column"] = [columns[i] for i in own]
    frame["_rows"] = grouped.column("_rows").to_pandas()
    frame["_first"] = pd.Series(grouped.column("_first").to_pylist(), dtype=object)
    values = [grouped.column(c).to_pylist() for c in columns]
    frame["_shown"] = pd.Series([values[i][n] for n, i in enumerate(own)], dtype=object)
    # each grouping set counts every delivered row once
    return frame, int(sum(n for s, n in zip(sets, frame["_rows"]) if s == sets[0]))


def _references(con, contract: Contract) -> dict[str, list | None]:
    """rule id -> the values a foreign key may point at (None: the referenced table is not there yet)."""
    out = {}
    for rule in contract.rules:
        if rule.kind == "foreign_key":
            table, column = rule.reference
            out[rule.id] = ([r[0] for r in con.execute(f"SELECT DISTINCT {ident(column)} FROM raw.{ident(table)}").fetchall()]
                            if table_exists(con, "raw", table) else None)
    return out


def _expectation(rule: Rule):
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    meta = {"rule_id": rule.id}
    if rule.kind == "row_count":  # over a frame of one row per built partition
        return gx.expectations.ExpectColumnValuesToBeBetween(column="accepted", min_value=rule.threshold, strict_min=True, meta=meta)
    # A row rule judges the distinct values of its own column. The frame stacks every rule column's, each
    # NULL in the others' rows: the rules skip NULLs, but not_null must see its own column's rows only.
    own = {"column": rule.column, "meta": meta}
    if rule.kind == "not_null":
        own["row_condition"] = Column("_column") == rule.column
    if rule.kind == "range":
        return gx.expectations.ExpectColumnValuesToBeBetween(min_value=rule.minimum, max_value=rule.maximum, **own)
    if rule.kind == "allowed_values":
        return gx.expectations.ExpectColumnValuesToBeInSet(value_set=list(rule.values), **own)
    if rule.kind == "pattern":
        return gx.expectations.ExpectColumnValuesToMatchRegex(regex=rule.pattern, **own)
    if rule.kind == "not_null":
        return gx.expectations.ExpectColumnValuesToNotBeNull(**own)
    if rule.kind == "foreign_key":
        return in_reference()(referenced=rule.id, **own)
    raise ValueError(f"no expectation for rule kind {rule.kind}")


@dataclass(frozen=True)
class _Outcome:
    unexpected: int                 # rows (row_count: partitions) that break the rule
    examples: list                  # example values (row_count: the partitions)
    error: str | None = None        # Great Expectations could not evaluate the rule
    observed: str | None = None
    recorded: bool = field(default=False, compare=False)  # its verdicts are Great Expectations' from an earlier run


def _validate(contract: Contract, rules: list[Rule], frame: pd.DataFrame, references: dict,
              accepted: dict[str, int]) -> dict[str, _Outcome]:
    """Run the rules with Great Expectations: row rules on the distinct delivered values of their columns
    (each weighted by the rows that delivered it), row_count on one row per partition. When Great
    Expectations has judged every one of a frame's values under the same rules before, its recorded
    verdicts answer instead (orchestration.quality.verdicts)."""
    import pandas as pd

    counts = pd.DataFrame({"partition": list(accepted), "accepted": list(accepted.values())})
    judged = [r for r in rules if r.kind != "row_count" and not (r.kind == "foreign_key" and references.get(r.id) is None)]
    # Great Expectations copies its frame for each metric: it gets the values and their names, not their weights
    values = frame.drop(columns=["_rows", "_first", "_shown"], errors="ignore")
    batches = [("delivered", values, judged, ["_value"]),
               ("partitions", counts, [r for r in rules if r.kind == "row_count"], ["partition"])]
    names_of = {r.id: verdicts.fingerprint(r, references.get(r.id), _JUDGES) for r in rules}
    kept = verdicts.Verdicts(names_of.values())
    out = {}
    for name, data, batch_rules, index in batches:
        if not batch_rules:
            continue
        if data.empty:  # nothing delivered or built: nothing breaks the rule
            out.update({r.id: _Outcome(0, []) for r in batch_rules})
            continue
        own = {r.id: _own_values(data, r) for r in batch_rules}
        recalled = {r.id: kept.lookup(names_of[r.id], [k for _, k in own[r.id]]) for r in batch_rules}
        if all(v is not None for v in recalled.values()):
            for r in batch_rules:
                out[r.id] = _outcome(name, frame, data, [p for (p, _), bad in zip(own[r.id], recalled[r.id]) if bad],
                                     recorded=True)
            continue
        for rule_id, (positions, error, observed) in _expect(contract, name, data, batch_rules, index, references).items():
            out[rule_id] = _outcome(name, frame, data, positions, error, observed)
            if error is None and observed is None:
                hit = set(positions)
                kept.record(names_of[rule_id], {k: p in hit for p, k in own[rule_id]})
    kept.save()
    return out


def _own_values(data: pd.DataFrame, rule: Rule) -> list[tuple[int, str]]:
    """(position, value key) of the rows whose value Great Expectations judges for the rule: the rows of its
    column's own grouping set (the other sets' rows are NULL in it), or every partition for row_count."""
    column = "accepted" if rule.kind == "row_count" else rule.column
    dtype = str(data[column].dtype)
    cells = data[column].tolist()
    rows = range(len(data)) if rule.kind == "row_count" else (i for i, c in enumerate(data["_column"].tolist()) if c == rule.column)
    return [(i, verdicts.value_key(dtype, cells[i])) for i in rows]


def _outcome(name: str, frame: pd.DataFrame, data: pd.DataFrame, positions: list[int], error: str | None = None,
             observed: str | None = None, recorded: bool = False) -> _Outcome:
    """What a rule's unexpected rows (positions in the validated frame) come to."""
    if name == "partitions":
        count, examples = len(positions), sorted(str(data["partition"].iloc[p]) for p in positions)
    else:
        count, examples = _weighed(frame, positions)
    return _Outcome(count, examples, error, observed, recorded)


def _expect(contract: Contract, name: str, data: pd.DataFrame, rules: list[Rule], index: list[str],
            references: dict) -> dict[str, tuple[list[int], str | None, str | None]]:
    """Great Expectations' validation of one frame: rule id -> (positions of its unexpected rows, the
    error it raised, the value it observed)."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"{contract.name}_{contract.version}_{name}",
                                expectations=[_expectation(r) for r in rules])
    fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": index, "return_unexpected_index_query": False}
    with _GX_LOCK:  # the batches of one asset share an id: one validation at a time in a process
        REFERENCED.update((rid, allowed) for rid, allowed in references.items() if allowed is not None)
        try:
            results = _batches()[name].get_batch(batch_parameters={"dataframe": data}).validate(suite, result_format=fmt)
        finally:
            REFERENCED.clear()
    position_of = {p: i for i, p in enumerate(data["partition"].tolist())} if name == "partitions" else None
    out = {}
    for res in results.results:
        info = res.result or {}
        raised = res.exception_info and res.exception_info.get("raised_exception")
        unexpected = info.get("unexpected_index_list") or []
        positions = ([position_of[i["partition"]] for i in unexpected] if position_of is not None
                     else [int(i["_value"]) for i in unexpected])
        out[res.expectation_config.meta["rule_id"]] = (
            positions, str(res.exception_info.get("exception_message")) if raised else None,
            str(info["observed_value"]) if "observed_value" in info else None)
    return out


_GX_LOCK = threading.Lock()
_JUDGES = (_expectation, in_reference)  # the code behind a verdict: part of its name in the recorded verdicts


@functools.cache
def _batches() -> dict:
    """(frame name -> its batch definition) in one Great Expectations context for the process: building a
    context and its data source costs more than validating a frame, and a validation leaves them unchanged."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("plumbline")
    return {name: source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            for name in ("delivered", "partitions")}


def _weighed(frame: pd.DataFrame, values: list[int]) -> tuple[int, list]:
    """(delivered rows holding the unexpected values, the values of the first EXAMPLES such rows in delivery order)."""
    hit = frame.iloc[values]
    firsts = sorted((pos, value) for value, positions in zip(hit["_shown"], hit["_first"]) for pos in positions)
    return int(hit["_rows"].sum()), [_plain(v) for _, v in firsts[:EXAMPLES]]


def _plain(v):
    import pandas as pd

    return None if pd.isna(v) else (v.item() if hasattr(v, "item") else v if isinstance(v, (int, float, str)) else str(v))


def _share(n: int, of: int) -> str:
    if not of:
        return "n/a"
    return "<0.01%" if 0 < n / of < 0.0001 else f"{n / of:.2%}"


def _listed(parts: dict[str, int]) -> str:
    names = sorted(parts)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _result(contract: Contract, rule: Rule, outcome: _Outcome, seen: Observed, rows_checked: int) -> dg.AssetCheckResult:
    tolerance = contract.tolerance(rule)
    error_rule = rule.severity == "error"
    keys = set(seen.delivered)
    metadata = {names.RULE: rule.description, "contract_severity": rule.severity, "engine": "great_expectations",
                "verdicts": "recorded in an earlier validation" if outcome.recorded else "judged in this run",
                "examples": dg.MetadataValue.json(outcome.examples)}
    if rule.kind == "row_count":
        in_run = [p for p in outcome.examples if p in keys]
        elsewhere = {p: seen.accepted[p] for p in outcome.examples if p not in keys}
        broken = {p: seen.accepted[p] for p in in_run}
        metadata.update({"partitions_checked": len(seen.accepted), "partitions_breaking": len(outcome.examples)})
        what = f"more than {rule.threshold:g} accepted rows"
        if outcome.error:
            reason = f"could not be evaluated: {outcome.error}"
        elif broken:
            reason = f"{len(broken)} rebuilt partition(s) hold no {what}: " + ", ".join(f"{p} ({n})" for p, n in sorted(broken.items())[:3])
        elif elsewhere:
            reason = f"{len(elsewhere)} other built partition(s) of the asset hold no {what}: {_listed(elsewhere)}"
        else:
            reason = f"every one of {len(seen.accepted)} built partition(s) holds {what}"
        failed_now = bool(broken) or bool(outcome.error)
        return _check(rule, passed=not (failed_now or elsewhere), error=error_rule and failed_now, reason=reason, metadata=metadata)

    if rule.kind == "foreign_key" and seen.references.get(rule.id) is None:
        table = rule.reference[0]
        reason = f"not judged: raw.{table} is not loaded yet, so no value can be looked up; materialize raw/{table}"
        return _check(rule, passed=False, error=False, reason=reason, metadata=metadata)
    rejects = _rejects(contract, rule)
    rejected = seen.rejected.get(rule.id, {}) if rejects else {}
    elsewhere = seen.open_elsewhere.get(rule.id, {})
    over = sorted((p, n, seen.delivered.get(p, 0)) for p, n in rejected.items() if n > tolerance * seen.delivered.get(p, 0))
    # rows that break the rule and are in the table: by design for warning/info rules, a defect for error rules
    loaded = max(outcome.unexpected - sum(rejected.values()), 0)
    metadata.update({
        "rows_checked": rows_checked, "rows_breaking": outcome.unexpected, names.DEAD_LETTERED_ROWS: sum(rejected.values()),
        "reject_tolerance": tolerance,
        "over_tolerance": dg.MetadataValue.json([{"partition": p, "rejected": n, "delivered": d, "share": round(n / d, 6) if d else None}
                                                 for p, n, d in over[:LISTED]]),
        "open_dead_letters_elsewhere": sum(elsewhere.values()),
        "partitions_elsewhere": dg.MetadataValue.json(sorted(elsewhere)[:LISTED]),
    })
    if outcome.observed is not None:
        metadata["observed_value"] = outcome.observed
    parts = []
    if outcome.error:
        parts.append(f"could not be evaluated: {outcome.error}")
    if over:
        p, n, d = over[0]
        parts.append(f"rejected {n} of {d} delivered rows ({_share(n, d)}) of {p}, over the tolerance {tolerance:.2%}"
                     + (f" (and {len(over) - 1} more partition(s))" if len(over) > 1 else ""))
    elif rejected:
        parts.append(f"{sum(rejected.values())} delivered row(s) broke it and were dead-lettered, within the tolerance "
                     f"{tolerance:.2%} ({_listed(rejected)})")
    if loaded and rejects:
        parts.append(f"{loaded} row(s) that break it were loaded")
    elif loaded:
        parts.append(f"{loaded} of {rows_checked} delivered row(s) break it ({_share(loaded, rows_checked)}); "
                     f"{rule.severity} rules reject nothing, so they were loaded")
    if elsewhere:
        parts.append(f"{sum(elsewhere.values())} open dead letter(s) remain in {len(elsewhere)} other partition(s): {_listed(elsewhere)}")
    if any(v is not None for v in outcome.examples):  # a not_null rule's examples are all None
        parts.append(f"e.g. {', '.join(map(repr, outcome.examples[:3]))}")
    passed = not (outcome.error or rejected or loaded or elsewhere)
    if passed:
        parts = [f"none of {rows_checked} delivered row(s) breaks it and no open dead letter of it remains in the asset"]
    error = rule.severity == "error" and bool(outcome.error or over or loaded)
    return _check(rule, passed=passed, error=error, reason="; ".join(parts), metadata=metadata)


def _check(rule: Rule, *, passed: bool, error: bool, reason: str, metadata: dict) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if error else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(check_name=rule.id, passed=passed, severity=severity, description=reason, metadata=metadata)


def _conformance(contract: Contract, seen: Observed) -> dg.AssetCheckResult:
    """Type and required rules, judged in SQL (a value that does not parse has no typed value to validate)."""
    generated = [r for r in contract.rules if r.kind in ("type", "required")]
    rejected = {r.id: seen.rejected[r.id] for r in generated if seen.rejected.get(r.id)}
    elsewhere = {r.id: sum(seen.open_elsewhere[r.id].values()) for r in generated if seen.open_elsewhere.get(r.id)}
    by_id = {r.id: r for r in generated}
    over = sorted((rid, p, n, seen.delivered.get(p, 0)) for rid, parts in rejected.items() for p, n in parts.items()
                  if n > contract.tolerance(by_id[rid]) * seen.delivered.get(p, 0))
    parts = []
    if over:
        rid, p, n, d = over[0]
        parts.append(f"{rid} rejected {n} of {d} delivered rows ({_share(n, d)}) of {p}, over the tolerance "
                     f"{contract.tolerance(by_id[rid]):.2%}")
    if rejected:
        parts.append(f"{sum(sum(v.values()) for v in rejected.values())} delivered row(s) dead-lettered by "
                     + ", ".join(f"{rid} ({sum(v.values())})" for rid, v in sorted(rejected.items())))
    if elsewhere:
        parts.append(f"{sum(elsewhere.values())} open dead letter(s) of these rules remain in other partitions")
    reason = "; ".join(parts) or "every delivered value parses as its type and every required value is present"
    return dg.AssetCheckResult(
        check_name=CONFORMANCE, passed=not (rejected or elsewhere),
        severity=dg.AssetCheckSeverity.ERROR if over else dg.AssetCheckSeverity.WARN, description=reason,
        metadata={names.DEAD_LETTERED_BY_RULE: dg.MetadataValue.json({rid: sum(v.values()) for rid, v in rejected.items()}),
                  names.DEAD_LETTERED_ROWS: sum(sum(v.values()) for v in rejected.values()),
                  "open_dead_letters_elsewhere_by_rule": dg.MetadataValue.json(elsewhere),
                  "reject_tolerance": contract.reject_tolerance})


def day_spec(contract: Contract, asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition) -> dg.AssetCheckSpec:
    return partition_checks.spec(
        names.CONTRACT_BY_PARTITION, asset_key, partitions_def,
        f"Each partition a run rebuilds, judged on its own delivered rows against {catalog.shown_path(contract)}: fails "
        "when rows of it were dead-lettered (ERROR over rejectTolerance) or it holds too few rows (row_count), naming "
        "the rules, counts and first rejected values of that day. Rows that break warning and info rules are loaded "
        "by design: counted and named, they never fail a day (the rule's own check warns)")


def _days(con, contract: Contract, accounts) -> dict[str, _Day]:
    """Per rebuilt partition: its first dead-letter reasons, and the delivered rows (dead-lettered or
    accepted) that break each rule that rejects nothing, by the same SQL conditions that reject rows."""
    reasons = {p: r for p, r in con.execute(
        f"""SELECT strftime(_event_date, '%Y-%m-%d'), list(_reason ORDER BY _file_path, _row_offset)[1:{DAY_EXAMPLES}]
            FROM _stage WHERE _failed <> '' AND _event_date IS NOT NULL GROUP BY ALL""").fetchall()}
    conditions = {r.id: (r.column, c) for r in checked_rules(contract)
                  if r.column and r.severity != "error" and (c := _loaded_condition(con, contract, r))}
    loaded: dict[str, dict[str, int]] = {}
    examples: dict[str, dict[str, list]] = {}
    if conditions:
        columns = sorted({col for col, _ in conditions.values()})
        typed = ", ".join(f"{ident(c)} AS {ident('t_' + c)}" for c in columns)
        keys = [a.partition for a in accounts]
        measures = ", ".join(f"count(*) FILTER (WHERE {cond}), list_sort(list_distinct(list({ident('t_' + col)}) "
                             f"FILTER (WHERE {cond})))[1:{DAY_EXAMPLES}]" for col, cond in conditions.values())
        for row in con.execute(f"""
                WITH delivered AS (
                    SELECT strftime(_event_date, '%Y-%m-%d') AS _p, {typed} FROM _stage WHERE _failed <> ''
                    UNION ALL SELECT strftime(event_date, '%Y-%m-%d'), {typed} FROM {contract.table} WHERE event_date IN {key_list(keys)})
                SELECT _p, {measures} FROM delivered WHERE _p IS NOT NULL GROUP BY _p""").fetchall():
            for i, rid in enumerate(conditions):
                if row[1 + 2 * i]:
                    loaded.setdefault(row[0], {})[rid] = row[1 + 2 * i]
                    examples.setdefault(row[0], {})[rid] = [_plain(v) for v in row[2 + 2 * i]]
    return {a.partition: _Day(a.dead_lettered, reasons.get(a.partition, []), loaded.get(a.partition, {}),
                              examples.get(a.partition, {})) for a in accounts}


def _loaded_condition(con, contract: Contract, rule: Rule) -> str | None:
    """SQL true when a row breaks a rule that rejects nothing (None: it cannot be judged yet)."""
    if rule.kind != "foreign_key":
        return rule_condition(rule, contract)
    table, column = rule.reference
    if not table_exists(con, "raw", table):
        return None
    c = ident("t_" + rule.column)
    return f"({c} IS NOT NULL AND {c} NOT IN (SELECT {ident(column)} FROM raw.{ident(table)} WHERE {ident(column)} IS NOT NULL))"


def day_verdicts(contract: Contract, seen: Observed) -> dict[str, partition_checks.Verdict]:
    """Each rebuilt partition's own verdict: its dead letters (per rule, against the tolerance) and its
    row count. Rows that break rules rejecting nothing are named, not failed: a source breaks some every
    day (flights to BQN, SJU, STT and PSE, which airports lacks), and would leave no day green.
    Other partitions' dead letters play no part."""
    by_id = {r.id: r for r in contract.rules}
    row_count = next((r for r in contract.rules if r.kind == "row_count"), None)
    out = {}
    for p, delivered in seen.delivered.items():
        day = seen.days[p]
        rejected = {rid: parts[p] for rid, parts in sorted(seen.rejected.items()) if p in parts}
        over = [rid for rid, n in rejected.items() if n > contract.tolerance(by_id[rid]) * delivered]
        accepted = seen.accepted.get(p, 0)
        short = row_count is not None and not accepted > row_count.threshold
        parts = []
        if rejected or day.dead_lettered:  # lines that could not be read are dead-lettered by no rule
            parts.append(f"{day.dead_lettered} of {delivered} delivered row(s) dead-lettered" + (": " + ", ".join(
                f"{rid} {n}" + (f" ({_share(n, delivered)}, over the tolerance {contract.tolerance(by_id[rid]):.2%})"
                                if rid in over else "") for rid, n in rejected.items()) if rejected else " (unreadable lines)"))
        if day.reasons:
            parts.append("e.g. " + " | ".join(day.reasons))
        if short:
            parts.append(f"{accepted} accepted row(s), not more than {row_count.threshold:g} ({row_count.id})")
        passed = not (rejected or day.dead_lettered or short)
        if passed:
            parts = [f"none of {delivered} delivered row(s) was dead-lettered"]
        if day.loaded:
            parts.append("loaded, breaking rules that reject nothing: " + ", ".join(
                f"{rid} ({by_id[rid].severity}) {n} (e.g. {', '.join(map(repr, day.loaded_examples[rid]))})"
                for rid, n in sorted(day.loaded.items())))
        out[p] = partition_checks.Verdict(
            passed=passed, error=bool(over) or (short and row_count.severity == "error"), description="; ".join(parts),
            metadata={names.DELIVERED: delivered, "accepted": accepted, names.DEAD_LETTERED: day.dead_lettered,
                      "rejected_by_rule": dg.MetadataValue.json(rejected), "over_tolerance": dg.MetadataValue.json(over),
                      "breaking_loaded_by_rule": dg.MetadataValue.json(day.loaded),
                      "examples": dg.MetadataValue.json({"dead_letters": day.reasons, **day.loaded_examples})})
    return out
