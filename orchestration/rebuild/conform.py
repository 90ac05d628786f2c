"""Compile a contract into the SQL that turns delivered text into typed, checked rows.

Layers, each a SELECT list over the previous one:
  normalized  n_<col>: the delivered text, with the contract's null sentinels turned into NULL
  typed       t_<col>: the contract type, or NULL when the text does not parse
  verdict     _failed / _reason: the ids and human reasons of every error rule the row breaks
  staged      <col> typed, provenance, verdict, and the delivered text as JSON for failing rows
Names are validated identifiers (contracts.loader) and are quoted; values are SQL literals.
"""

from __future__ import annotations

from contracts.model import Column, Contract, Rule
from orchestration.quality.dead_letter import SHOWN_VALUE_CHARS
from orchestration.warehouse import ident, literal

NUMERIC = {"integer", "number"}
# A time that names its offset; without one, only a declared sourceTimezone says what it means.
OFFSET_SUFFIX = r"(Z|z|[+-]\d{2}(:?\d{2})?|\s(UTC|GMT))\s*$"


def normalized_expr(col: Column) -> str:
    src = ident(col.name)
    text = f"NULLIF({src}, '')" if col.logical_type != "string" else src
    if not col.null_sentinels:
        return text
    numeric = col.logical_type in NUMERIC
    numbers = [v for v in col.null_sentinels if numeric and not isinstance(v, str)]
    texts = [str(v) for v in col.null_sentinels if not (numeric and not isinstance(v, str))]
    tests = []
    if numbers:
        tests.append(f"TRY_CAST({text} AS DOUBLE) IN ({', '.join(literal(float(v)) for v in numbers)})")
    if texts:
        tests.append(f"{text} IN ({', '.join(literal(v) for v in texts)})")
    return f"CASE WHEN {' OR '.join(tests)} THEN NULL ELSE {text} END"


def typed_expr(col: Column) -> str:
    n = ident("n_" + col.name)
    if col.logical_type == "string":
        return n
    if col.source_timezone and col.duckdb_type == "TIMESTAMPTZ":
        # a time without an offset is local to the source's zone, not UTC
        naive = f"NOT regexp_matches({n}, {literal(OFFSET_SUFFIX)})"
        return (f"CASE WHEN {naive} THEN timezone({literal(col.source_timezone)}, TRY_CAST({n} AS TIMESTAMP)) "
                f"ELSE TRY_CAST({n} AS TIMESTAMPTZ) END")
    return f"TRY_CAST({n} AS {col.duckdb_type})"


def type_failure(col: Column) -> str:
    """True when a present value does not parse exactly (12.7 is not an integer, NaN is not a number)."""
    n, t = ident("n_" + col.name), ident("t_" + col.name)
    if col.logical_type == "integer":
        return f"({n} IS NOT NULL AND ({t} IS NULL OR TRY_CAST({n} AS DOUBLE) IS DISTINCT FROM {t}))"
    if col.logical_type == "number":
        return f"({n} IS NOT NULL AND ({t} IS NULL OR NOT isfinite({t})))"
    if _needs_offset(col):  # read in UTC it would be a wrong time with no warning
        return f"({n} IS NOT NULL AND ({t} IS NULL OR NOT regexp_matches({n}, {literal(OFFSET_SUFFIX)})))"
    return f"({n} IS NOT NULL AND {t} IS NULL)"


def _needs_offset(col: Column) -> bool:
    return col.duckdb_type == "TIMESTAMPTZ" and not col.source_timezone


def rule_condition(rule: Rule, contract: Contract) -> str | None:
    """SQL that is true when a row breaks a row rule (NULLs pass value rules: `required` covers them)."""
    if rule.kind == "type":
        return type_failure(contract.column(rule.column))
    c = ident("t_" + rule.column)
    if rule.kind == "required":
        return f"{ident('n_' + rule.column)} IS NULL"
    if rule.kind == "not_null":
        return f"{c} IS NULL"
    if rule.kind == "range":
        parts = []
        if rule.minimum is not None:
            parts.append(f"{c} < {literal(rule.minimum)}")
        if rule.maximum is not None:
            parts.append(f"{c} > {literal(rule.maximum)}")
        return f"({' OR '.join(parts)})"
    if rule.kind == "allowed_values":
        return f"{c} NOT IN ({', '.join(literal(v) for v in rule.values)})"
    if rule.kind == "pattern":
        return f"NOT regexp_full_match({c}, {literal(rule.pattern)})"
    return None


def rule_reason(rule: Rule, contract: Contract) -> str:
    """A SQL string expression explaining the failure, with the offending value."""
    if rule.column is None:
        return literal(f"{rule.description} [{rule.id}]")
    n = ident("n_" + rule.column)
    # A reason quotes at most SHOWN_VALUE_CHARS of a value, with its length; the payload keeps all of it.
    shown = (f"CASE WHEN length({n}) > {SHOWN_VALUE_CHARS} THEN left({n}, {SHOWN_VALUE_CHARS}) || '''… (' || "
             f"length({n}) || ' characters)' ELSE {n} || '''' END")
    value = f"coalesce('''' || {shown}, 'null')"
    if rule.kind in ("type", "required"):
        col = contract.column(rule.column)
        parse = ("does not parse as a timestamp with a UTC offset (add Z or +HH:MM, or declare the column's "
                 "sourceTimezone in the contract)") if _needs_offset(col) else f"does not parse as {col.logical_type}"
        what = {"type": parse, "required": "is missing (required)"}[rule.kind]
    else:
        what = f"breaks '{rule.description}'"
    return f"{literal(rule.column + ' ')} || {value} || {literal(f' {what} [{rule.id}]')}"


def stage_select(contract: Contract, source_sql: str) -> str:
    """SELECT over `source_sql` (bronze rows) yielding typed columns, provenance and the verdict."""
    cols = contract.columns
    normalized = ", ".join(f"{normalized_expr(c)} AS {ident('n_' + c.name)}" for c in cols)
    typed = ", ".join(f"{typed_expr(c)} AS {ident('t_' + c.name)}" for c in cols)
    rules = [(r, rule_condition(r, contract)) for r in contract.rejecting_rules()]
    failed = ", ".join(f"CASE WHEN {cond} THEN {literal(r.id)} END" for r, cond in rules)
    reasons = ", ".join(f"CASE WHEN {cond} THEN {rule_reason(r, contract)} END" for r, cond in rules)
    out = ", ".join(f"{ident('t_' + c.name)} AS {ident(c.name)}" for c in cols)
    # The payload keeps the text as delivered (before sentinels), and only failing rows pay for it.
    payload = ", ".join(f"{literal(c.name)}, {ident(c.name)}" for c in cols)
    return f"""
    WITH src AS ({source_sql}),
    normalized AS (SELECT *, {normalized} FROM src),
    typed AS (SELECT *, {typed} FROM normalized),
    verdict AS (SELECT *, concat_ws(',', {failed}) AS _failed FROM typed)
    SELECT _file_id, _file_path, _row_offset, _event_date, _delivered_at, {out}, _failed,
           CASE WHEN _failed <> '' THEN concat_ws('; ', {reasons}) END AS _reason,
           CASE WHEN _failed <> '' THEN json_object({payload}, '_extra', _extra::JSON) END AS _payload
    FROM verdict
    """
