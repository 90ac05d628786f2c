"""`plumbline contracts diff`: every change between two versions of a contract, graded for the
consumers of its table (dbt's contract breaking changes, datacontract-cli's consumer view):
anything that removes, narrows or re-keys what consumers read is breaking; additions, widenings
and stronger guarantees are not. Each change names the columns of the old table it touches, so the
command can name the downstream impact of each breaking one (orchestration.lineage.impact)."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.model import Contract, Coverage, Rule

# (old, new) type pairs where every old value reads the same in the new type.
_INT_WIDTH = {"TINYINT": 1, "SMALLINT": 2, "INTEGER": 3, "BIGINT": 4}
_NUM_WIDTH = {"FLOAT": 1, "DOUBLE": 2}


@dataclass(frozen=True)
class ContractChange:
    kind: str
    where: str  # column, rule id or contract-level key
    detail: str
    breaking: bool
    columns: tuple[str, ...] = ()  # the old table's columns it touches: whose downstream impact to name

    def line(self) -> str:
        return f"{'BREAKING' if self.breaking else 'ok      '}  {self.kind:<24} {self.where:<28} {self.detail}"


def _widens(old_logical: str, old_type: str, new_logical: str, new_type: str) -> bool:
    if new_logical == "string":
        return True
    if old_logical == new_logical == "integer":
        return _INT_WIDTH[new_type] >= _INT_WIDTH[old_type]
    if old_logical == "integer" and new_logical == "number":
        return True
    if old_logical == new_logical == "number":
        return _NUM_WIDTH.get(new_type, 0) >= _NUM_WIDTH.get(old_type, 3) if "DECIMAL" not in new_type + old_type else new_type == old_type
    return (old_logical, new_logical) == ("date", "timestamp")


def _type_changes(name: str, old, new) -> list[ContractChange]:
    if (old.logical_type, old.duckdb_type) == (new.logical_type, new.duckdb_type):
        return []
    before, after = f"{old.logical_type} {old.duckdb_type}", f"{new.logical_type} {new.duckdb_type}"
    if old.logical_type == new.logical_type == "timestamp":
        return [ContractChange("timezone_changed", name, f"{before} -> {after}: offset-aware and naive times differ", True,
                               (old.name,))]
    if _widens(old.logical_type, old.duckdb_type, new.logical_type, new.duckdb_type):
        return [ContractChange("type_widened", name, f"{before} -> {after}", False, (old.name,))]
    return [ContractChange("type_changed", name, f"{before} -> {after}", True, (old.name,))]


def _rule_change(old: Rule, new: Rule) -> list[ContractChange]:
    out = []
    where = new.id
    cols = (old.column,) if old.column else ()
    if old.kind != new.kind or old.column != new.column:
        return [ContractChange("rule_changed", where, f"{old.kind} on {old.column} -> {new.kind} on {new.column}", True, cols)]
    if old.values != new.values:
        added = sorted(set(map(str, new.values)) - set(map(str, old.values)))
        removed = sorted(set(map(str, old.values)) - set(map(str, new.values)))
        if added:
            out.append(ContractChange("allowed_values_added", where, f"new values {added}: consumers may see them", True, cols))
        if removed:
            out.append(ContractChange("allowed_values_removed", where, f"values {removed} no longer allowed", False, cols))
    looser = (new.minimum is None and old.minimum is not None) or (new.minimum is not None and old.minimum is not None and new.minimum < old.minimum) \
        or (new.maximum is None and old.maximum is not None) or (new.maximum is not None and old.maximum is not None and new.maximum > old.maximum)
    if (old.minimum, old.maximum) != (new.minimum, new.maximum):
        out.append(ContractChange("range_changed", where, f"[{old.minimum}, {old.maximum}] -> [{new.minimum}, {new.maximum}]", looser,
                                  cols))
    if old.pattern != new.pattern:
        out.append(ContractChange("pattern_changed", where, f"{old.pattern!r} -> {new.pattern!r}", True, cols))
    if old.severity != new.severity:
        weaker = old.severity == "error"
        out.append(ContractChange("severity_changed", where, f"{old.severity} -> {new.severity}", weaker, cols))
    return out


def _span(coverage: Coverage | None) -> str:
    return f"{coverage.start}..{coverage.end or 'open'}" if coverage else "every partition"


def diff(old: Contract, new: Contract) -> list[ContractChange]:
    out: list[ContractChange] = []
    old_cols = {c.name: c for c in old.columns}
    new_cols = {c.name: c for c in new.columns}
    renamed_from = {}
    for name, col in new_cols.items():
        if name not in old_cols:
            was = next((s for s in col.source_names if s in old_cols and s not in new_cols), None)
            if was:
                renamed_from[was] = name
                out.append(ContractChange("column_renamed", name, f"was {was!r}: consumers must read the new name", True, (was,)))
            else:
                out.append(ContractChange("column_added", name, "required" if col.required else "optional", False))
    for name in old_cols:
        if name not in new_cols and name not in renamed_from:
            out.append(ContractChange("column_removed", name, "consumers reading it break", True, (name,)))
    for name, col in new_cols.items():
        old_col = old_cols.get(name) or old_cols.get(next((o for o, n in renamed_from.items() if n == name), ""))
        if old_col is None:
            continue
        out += _type_changes(name, old_col, col)
        if old_col.required != col.required:
            out.append(ContractChange("nullability_changed", name, f"required {old_col.required} -> {col.required}",
                                      old_col.required and not col.required, (old_col.name,)))
        added_sources = sorted(set(col.source_names) - set(old_col.source_names))
        if added_sources:
            out.append(ContractChange("source_names_added", name, f"also read from {added_sources} (a declared rename)", False))
        if old_col.source_timezone != col.source_timezone:
            out.append(ContractChange("source_timezone_changed", name, f"naive delivered times read in "
                                      f"{old_col.source_timezone or 'UTC'} -> {col.source_timezone or 'UTC'}", False))
        if set(map(str, old_col.null_sentinels)) != set(map(str, col.null_sentinels)):
            out.append(ContractChange("null_sentinels_changed", name,
                                      f"{list(old_col.null_sentinels)} -> {list(col.null_sentinels)}", False))
        removed_sources = sorted(set(old_col.source_names) - set(col.source_names))
        if removed_sources:
            out.append(ContractChange("source_names_removed", name, f"no longer read from {removed_sources}", False))
    if old.primary_key != new.primary_key:
        out.append(ContractChange("primary_key_changed", "primaryKey", f"{list(old.primary_key)} -> {list(new.primary_key)}", True,
                                  tuple(old.primary_key)))
    old_rules = {r.id: r for r in old.rules}
    new_rules = {r.id: r for r in new.rules}
    for rid, rule in new_rules.items():
        if rid not in old_rules:
            out.append(ContractChange("rule_added", rid, f"{rule.kind} on {rule.column or 'table'} ({rule.severity})", False))
        else:
            out += _rule_change(old_rules[rid], rule)
    for rid, rule in old_rules.items():
        if rid not in new_rules:
            out.append(ContractChange("rule_removed", rid, f"{rule.kind} on {rule.column or 'table'}: a guarantee dropped",
                                      rule.severity == "error", (rule.column,) if rule.column else ()))
    if old.partitioning != new.partitioning:
        out.append(ContractChange("partitioning_changed", "partitioning", f"{old.partitioning} -> {new.partitioning}", True,
                                  ("event_date",) if old.partitioning else ()))
    if old.coverage != new.coverage:  # which partitions the source fills: what the UI says is empty on purpose
        out.append(ContractChange("coverage_changed", "sourceCoverage", f"{_span(old.coverage)} -> {_span(new.coverage)}", False))
    for key in sorted(set(old.schema_evolution) | set(new.schema_evolution)):
        if old.schema_evolution.get(key) != new.schema_evolution.get(key):
            out.append(ContractChange("policy_changed", f"schemaEvolution.{key}",
                                      f"{old.schema_evolution.get(key)} -> {new.schema_evolution.get(key)}", False))
    return out


def impacted_columns(changes: list[ContractChange]) -> list[str]:
    """The old table's columns touched by breaking changes, each once, in the order the changes come."""
    return list(dict.fromkeys(c for change in changes if change.breaking for c in change.columns))


def major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def verdict(old: Contract, new: Contract, changes: list[ContractChange]) -> tuple[bool, str]:
    """(acceptable, message): a breaking change needs the major version raised."""
    breaking = [c for c in changes if c.breaking]
    if not breaking:
        return True, f"{len(changes)} change(s), none breaking"
    if major(new.version) > major(old.version):
        return True, f"{len(breaking)} breaking change(s), accepted: major version raised {old.version} -> {new.version}"
    return False, (f"{len(breaking)} breaking change(s) but the version went {old.version} -> {new.version}: "
                   f"raise the major version in {new.path} (or undo the breaking changes)")
