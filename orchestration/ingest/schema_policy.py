"""Apply a contract's schemaEvolution policy (dlt's vocabulary) to the changes a delivery carries.

freeze quarantines the whole delivery; discard_row sends the rows that carry the change to
ops.dead_letter; discard_value nulls the offending values and records each in ops.dead_letter
(severity warning: the row itself loads); evolve accepts the change and records a new version.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from contracts.loader import line_index
from contracts.model import Contract
from orchestration import catalog
from orchestration.quality import dead_letter
from orchestration.ingest.schema_changes import PATTERNS, Change, Verdict, contract_type
from orchestration.warehouse import ident, literal


@dataclass
class Decision:
    quarantine: list[Change] = field(default_factory=list)
    discard_rows: list[Change] = field(default_factory=list)
    discard_values: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def _misfit(self, contract: Contract, change: Change) -> str:
        v = f"NULLIF(trim(CAST({ident(change.column)} AS VARCHAR)), '')"
        expected = contract_type(contract, change.column)
        return f"({v} IS NOT NULL AND NOT regexp_full_match({v}, {literal(PATTERNS[expected])}))"

    def _row_condition(self, contract: Contract, change: Change) -> str:
        if change.kind == "column_added":  # _extra holds exactly the added columns: does the row carry a value in one?
            return "coalesce(len(list_filter(json_extract_string(_extra, '$.*'), lambda v: v IS NOT NULL)) > 0, false)"
        if change.kind == "primary_key_changed":
            key = ", ".join(ident(k) for k in contract.primary_key)
            return f"(count(*) OVER (PARTITION BY {key})) > 1"
        return self._misfit(contract, change)

    def select_sql(self, contract: Contract) -> str:
        """The rows and values of the delivery that go to bronze."""
        replace = ", ".join(f"CASE WHEN {self._misfit(contract, c)} THEN NULL ELSE {ident(c.column)} END AS {ident(c.column)}"
                            for c in self.discard_values)
        star = f"* REPLACE ({replace})" if replace else "*"
        if not self.discard_rows:
            return f"SELECT {star} FROM _mapped"
        flags = ", ".join(f"{self._row_condition(contract, c)} AS _drop{i}" for i, c in enumerate(self.discard_rows))
        keep = " AND ".join(f"NOT _drop{i}" for i in range(len(self.discard_rows)))
        drops = ", ".join(f"_drop{i}" for i in range(len(self.discard_rows)))
        rep = f" REPLACE ({replace})" if replace else ""
        return f"SELECT * EXCLUDE ({drops}){rep} FROM (SELECT *, {flags} FROM _mapped) WHERE {keep}"

    def discarded_sql(self, contract: Contract) -> list[tuple[str, str, str, str]]:
        """(rule id, reason, severity, SELECT of _mapped rows) for every discard to record."""
        out = []
        for c in self.discard_rows:
            where = self._row_condition(contract, c)
            rows = (f"SELECT * FROM (SELECT *, {where} AS _hit FROM _mapped) WHERE _hit" if "OVER" in where
                    else f"SELECT * FROM _mapped WHERE {where}")
            out.append((f"{contract.name}_schema_{c.kind}", f"{c.describe()}; schemaEvolution discard_row sent the row "
                        f"here; {fix_hint(contract, c)}", "error", rows))
        for c in self.discard_values:
            out.append((f"{contract.name}_{c.column}_value_discarded",
                        f"{c.describe()}; schemaEvolution.dataType discard_value loaded {c.column} as NULL "
                        f"(the delivered value is in the payload); {fix_hint(contract, c)}", "warning",
                        f"SELECT * FROM _mapped WHERE {self._misfit(contract, c)}"))
        return out


def decide(contract: Contract, verdict: Verdict, missing: list[str]) -> Decision:
    d = Decision(changes=list(verdict.changes))
    added = [c for c in verdict.changes if c.kind == "column_added"]
    for c in verdict.changes:
        if c.kind == "column_removed" and c.column in missing:
            d.quarantine.append(c)  # a required column cannot be made up: no policy loads the file
        elif c.policy_key is None or (c.policy_key == "dataType" and not c.breaking):
            if c.kind not in ("renamed",):
                d.notes.append(c.describe())
        elif c.kind == "column_added":
            continue  # grouped below, one note for all added columns
        else:
            m = contract.evolution_mode(c.policy_key)
            if m == "freeze" or (c.kind == "column_removed" and m != "evolve"):
                d.quarantine.append(c)  # NULL in place of a column the source stopped sending would be a wrong value
            elif m == "discard_row":
                d.discard_rows.append(c)
                d.notes.append(f"{c.describe()}; rows carrying it dead-lettered (schemaEvolution.{c.policy_key} = {m})")
            elif m == "discard_value" and c.policy_key == "dataType":
                d.discard_values.append(c)
                d.notes.append(f"{c.describe()}; values that do not fit loaded as NULL and dead-lettered as warnings "
                               f"(schemaEvolution.{c.policy_key} = {m})")
            else:
                d.notes.append(f"{c.describe()}; accepted (schemaEvolution.{c.policy_key} = {m})")
    if added:
        m = contract.evolution_mode("columns")
        names = [c.column for c in added]
        # one change for all of them: one reason and one dead letter per row, however many columns were added
        group = added[0] if len(added) == 1 else Change(
            "column_added", None, f"{len(names)} delivered columns the contract does not name: {names}", False, "columns")
        d.changes = [c for c in d.changes if c.kind != "column_added"] + [group]
        if m == "freeze":
            d.quarantine.append(group)
        elif m == "discard_row":
            d.discard_rows.append(group)
            d.notes.append(f"unexpected column(s) {names}: rows carrying them dead-lettered (schemaEvolution.columns = {m})")
        else:
            d.notes.append(f"unexpected column(s) {names} kept in _extra only (schemaEvolution.columns = {m})")
    return d


def record_discards(con, contract: Contract, decision: Decision, run_id: str) -> None:
    for rule_id, reason, severity, rows_sql in decision.discarded_sql(contract):
        dead_letter.record_rows(con, contract, rows_sql, rule_id, reason, severity, run_id)


# ---------------------------------------------------------------------------- messages


@functools.lru_cache(maxsize=32)
def _contract_text(path: str, mtime_ns: int, size: int) -> tuple[dict, dict]:
    """(line index, document) of a contract file, parsed once per version of the file."""
    text = Path(path).read_text(encoding="utf-8")
    return line_index(text), yaml.safe_load(text)


def contract_line(contract: Contract, change: Change | None) -> str:
    """file:line of the contract entry to edit for this change."""
    stat = Path(contract.path).stat()
    lines, doc = _contract_text(str(contract.path), stat.st_mtime_ns, stat.st_size)
    loc: tuple = ("schema", 0, "properties")
    names = [p.get("name") for p in doc["schema"][0].get("properties", [])]
    if change is not None and change.column in names and change.kind not in ("column_added",):
        loc = ("schema", 0, "properties", names.index(change.column))
    elif change is not None and change.policy_key and change.kind == "column_added":
        i, _ = _custom_at_dicts(doc.get("customProperties"), "schemaEvolution")
        if i is not None:
            loc = ("customProperties", i, "value")
    while loc not in lines and loc:
        loc = loc[:-1]
    return f"{catalog.shown_path(contract)}:{lines.get(loc, 1)}"


def _custom_at_dicts(props, name):
    for i, p in enumerate(props or ()):
        if p.get("property") == name:
            return i, p.get("value")
    return None, None


def fix_hint(contract: Contract, change: Change) -> str:
    where = contract_line(contract, change)
    if change.kind in ("column_removed", "rename_suggested"):
        return f"if the column was renamed, add the delivered name to its sourceNames at {where}"
    if change.kind == "column_added":
        return f"add the column to the contract or relax schemaEvolution.columns at {where}"
    if change.kind == "timezone_changed":
        return f"fix the export's timestamps, or change the column's physicalType at {where}"
    if change.kind == "primary_key_changed":
        return f"fix the duplicates at the source, or change the primary key at {where}"
    return f"fix the export, or change the column's logicalType at {where}"


def replay_command(contract: Contract, path: str) -> str:
    return f"plumbline deliveries retry --source {contract.name} --file {path}"


def quarantine_reason(contract: Contract, path: str, decision: Decision) -> str:
    parts = [f"{c.describe()} — {fix_hint(contract, c)}" for c in decision.quarantine]
    quarantined = set(decision.quarantine)
    others = [c.describe() for c in decision.changes if c not in quarantined]
    return (f"quarantined: {contract.name} delivery {path} carries a schema change the contract does not accept "
            f"(schemaEvolution freeze or a missing required column): " + "; ".join(parts)
            + (f". Other changes: {'; '.join(others)}" if others else "")
            + f". Once the contract is fixed, replay with `{replay_command(contract, path)}`")
