"""Schema-change detection: what a delivery's schema looks like, how it differs from its contract
and from the source's previous schema version, and how bad each difference is for consumers.

Bronze calls `examine` on every delivery before anything is written; the verdict says which policy
(contract customProperty schemaEvolution) applies to each change. ops.schema_versions keeps every
version seen, ordered by delivery time so that any order of arrival gives the same history.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from dataclasses import dataclass, field

from contracts.model import Contract
from orchestration.warehouse import delivered_ident, literal

# A column changes type when more than this share (and at least this many) of its non-null values
# no longer fit; fewer misfits are bad rows, dead-lettered one by one by the contract's type rules.
TYPE_CHANGE_SHARE = 0.05
TYPE_CHANGE_MIN = 10
# Types and value profiles are read from every k-th row, so at most about this many rows: a type
# change is a share of the values, which a sample shows; keys and categories are checked on all rows.
SAMPLE_ROWS = 50_000

# Patterns that name a delivered text value's type; a column's type is the narrowest all fit.
_TS = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
PATTERNS = {
    "boolean": r"^(true|false|TRUE|FALSE|True|False)$",
    "integer": r"^[+-]?\d+(\.0*)?$",  # 3.0: a whole number written by a float column
    "number": r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$",
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "timestamptz": _TS + r"\s*(Z|[+-]\d{2}(:?\d{2})?)$",
    "timestamp": _TS + r"$",
}
TYPE_ORDER = ("boolean", "integer", "number", "date", "timestamptz", "timestamp")
# (previous, delivered) pairs that only widen: every old value still reads the same.
WIDENINGS = {("integer", "number"), ("date", "timestamp"), ("date", "timestamptz")} | {
    (t, "string") for t in TYPE_ORDER}


def contract_type(contract: Contract, column: str) -> str:
    """The observed-type name a contract column expects."""
    col = contract.column(column)
    if col.logical_type == "timestamp":
        return "timestamp" if col.duckdb_type == "TIMESTAMP" else "timestamptz"
    return {"time": "string"}.get(col.logical_type, col.logical_type)


def fits(observed: str, expected: str, source_timezone: str | None = None) -> bool:
    """Can every value of the observed type be read as the expected type without changing it?"""
    return (observed in ("null", expected) or expected == "string" or (observed, expected) == ("integer", "number")
            or (observed, expected, bool(source_timezone)) == ("timestamp", "timestamptz", True))


@dataclass(frozen=True)
class Change:
    kind: str  # column_added | column_removed | type_widened | type_changed | timezone_changed |
    #            nullability_changed | renamed | rename_suggested | primary_key_changed | allowed_values_changed
    column: str | None
    detail: str
    breaking: bool
    policy_key: str | None = None  # which schemaEvolution entry decides; None: row rules handle it
    before: str | None = None
    after: str | None = None

    def describe(self) -> str:
        grade = "breaking" if self.breaking else "non-breaking"
        return f"{self.kind}{' ' + self.column if self.column else ''}: {self.detail} ({grade})"


@dataclass
class Verdict:
    schema: list[dict]  # [{name, type, delivered_type, non_null, misfit, min, max, distinct}]
    schema_hash: str
    changes: list[Change] = field(default_factory=list)


# ---------------------------------------------------------------------------- observing


def observe(con, table: str, delivered: list[dict], expected: dict[str, str], nulls: dict[str, list[str]] | None = None,
            profiles: dict[int, tuple] | None = None) -> list[dict]:
    """Per column the type its values fit, and a value profile (min, max, distinct) used to suggest
    renames. expected: delivered name -> contract type, whose misfits are counted for
    discard_value/discard_row; nulls: delivered name -> text the contract reads as null
    (nullSentinels such as "NA"); profiles: already computed for a batch (FileStats.profiles)."""
    if not delivered:
        return []
    if profiles is None:
        profiles = _profiles(con, table, delivered, nulls or {})
    out = []
    for i, col in enumerate(delivered):
        n, miss, lo, hi, distinct = profiles.get(i, (0, dict.fromkeys(PATTERNS, 0), None, None, 0))
        exp = expected.get(col["name"])
        misfit = 0 if exp in (None, "string") or n == 0 else (miss["number"] if exp == "number" else miss.get(exp, 0))
        out.append({"name": col["name"], "type": judge(n, miss, exp), "delivered_type": col.get("type"), "non_null": n,
                    "misfit": misfit, "min": lo, "max": hi, "distinct": distinct})
    return out


def few(misfits: int, n: int) -> bool:
    """A handful of values off a type are bad rows (each dead-lettered by a type rule), not a new type."""
    return (misfits <= TYPE_CHANGE_SHARE * n or misfits < TYPE_CHANGE_MIN) and 2 * misfits < n


def judge(n: int, miss: dict[str, int], expected: str | None) -> str:
    """The column's type from its values: the contract's type when all but a few values fit it,
    else the narrowest type all fit, else the one all but a few fit, else string."""
    if n == 0:
        return expected or "null"  # a week of missing gusts is not a schema change
    if expected == "string" or (expected in miss and few(miss[expected], n)):
        return expected
    exact = next((t for t in TYPE_ORDER if miss[t] == 0), None)
    if exact is not None:
        return exact
    best = min(TYPE_ORDER, key=lambda t: (miss[t], TYPE_ORDER.index(t)))
    return best if few(miss[best], n) else "string"


def _profiles(con, table: str, delivered: list[dict], nulls: dict[str, list[str]]) -> dict[int, tuple]:
    """column position -> (non-null count, misses per pattern, min, max, approximate distinct).

    One pass over (column, value) pairs grouped by column: a query with aggregates per column costs
    the planner time quadratic in the number of columns (minutes at a few hundred)."""
    values = ", ".join(f"CAST({delivered_ident(c['name'])} AS VARCHAR) AS c{i}" for i, c in enumerate(delivered))
    rows = con.execute(_profile_sql(f"SELECT {values} FROM {sample(con, table)}", delivered, nulls)).fetchall()
    return _profile_rows(rows)


def _profile_sql(values_sql: str, delivered: list[dict], nulls: dict[str, list[str]], by: str | None = None) -> str:
    """The profile query over `values_sql` (columns c0.., and `by` when grouped by file too)."""
    text = "NULLIF(trim(v), '')"
    sentinels = [f"(col = 'c{i}' AND {text} IN ({', '.join(literal(t) for t in nulls[c['name']])}))"
                 for i, c in enumerate(delivered) if nulls.get(c["name"])]
    value = f"CASE WHEN {' OR '.join(sentinels)} THEN NULL ELSE {text} END" if sentinels else text
    # each distinct value is matched once and counts for its n rows (values repeat: codes, hours, dates)
    misses = [f"coalesce(sum(n) FILTER (WHERE NOT regexp_full_match(v, {literal(p)})), 0)" for p in PATTERNS.values()]
    on = "COLUMNS(*)" if by is None else f"COLUMNS(* EXCLUDE ({by}))"
    group = "col" if by is None else f"{by}, col"
    return f"""
        SELECT {group}, coalesce(sum(n), 0), {', '.join(misses)}, min(v), max(v), approx_count_distinct(v)
        FROM (SELECT {group}, v, count(v) AS n
              FROM (SELECT {group}, {value} AS v
                    FROM (UNPIVOT ({values_sql}) ON {on} INTO NAME col VALUE v))
              GROUP BY ALL)
        GROUP BY {group}"""


def _profile_rows(rows) -> dict[int, tuple]:
    width = len(PATTERNS)
    return {int(r[0][1:]): (r[1], dict(zip(PATTERNS, r[2:2 + width])), *r[2 + width:]) for r in rows}


@dataclass
class FileStats:
    """What examine reads from a delivery's rows, computed for a whole batch at once (orchestration.ingest.batch)."""
    rows: int = 0
    profiles: dict[int, tuple] = field(default_factory=dict)
    duplicates: int = 0
    new_values: dict[str, list[str]] = field(default_factory=dict)  # rule id -> up to 10 new values, sorted


def batch_stats(con, contract: Contract, table: str, by: str, delivered: list[dict], mapping: dict[str, str],
                nulls: dict[str, list[str]]) -> dict[str, FileStats]:
    """Per file (column `by` of `table`, whose columns are c0.. in delivered order) the numbers examine
    reads, each from one query grouped by file; the files must be whole (no sample: every row counts)."""
    pos = {c["name"]: i for i, c in enumerate(delivered)}
    out: dict[str, FileStats] = {}
    for f, n in con.execute(f"SELECT {by}, count(*) FROM {table} GROUP BY ALL").fetchall():
        out[f] = FileStats(rows=n)
    values = ", ".join(f"CAST(c{i} AS VARCHAR) AS c{i}" for i in range(len(delivered)))
    for r in con.execute(_profile_sql(f"SELECT {by}, {values} FROM {table}", delivered, nulls, by)).fetchall():
        out[r[0]].profiles.update(_profile_rows([r[1:]]))
    key = contract.primary_key
    if key and all(k in mapping for k in key):
        cols = ", ".join(f"c{pos[mapping[k]]}" for k in key)
        for f, dup in con.execute(f"SELECT {by}, sum(n - 1) FROM (SELECT {by}, count(*) AS n FROM {table} "
                                  f"GROUP BY {by}, {cols} HAVING count(*) > 1) GROUP BY ALL").fetchall():
            out[f].duplicates = int(dup)
    for rule in contract.rules:
        if rule.kind == "allowed_values" and rule.column in mapping:
            allowed = ", ".join(literal(str(v)) for v in rule.values)
            for f, v in con.execute(
                    f"SELECT DISTINCT {by}, CAST(c{pos[mapping[rule.column]]} AS VARCHAR) AS v FROM {table} "
                    f"WHERE v IS NOT NULL AND v NOT IN ({allowed}) ORDER BY 1, 2").fetchall():
                found = out[f].new_values.setdefault(rule.id, [])
                if len(found) < 10:
                    found.append(v)
    return out


def sample(con, table: str) -> str:
    """A deterministic sample of a delivery: every k-th row by row offset (all rows of a small file)."""
    rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    k = max(1, -(-rows // SAMPLE_ROWS))
    return table if k == 1 else f"(SELECT * FROM {table} WHERE _row_offset % {k} = 0)"


def schema_hash(schema: list[dict]) -> str:
    shape = [(c["name"], c["type"]) for c in schema]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- comparing


def previous_schema(con, contract: Contract, delivered_at, path: str) -> list[dict] | None:
    """The schema of the latest accepted delivery of the source delivered before this one."""
    rows = con.execute(
        """SELECT observed_schema FROM ops.landed_files
           WHERE source = ? AND status = 'loaded' AND observed_schema IS NOT NULL
             AND (delivered_at, path) < (?::TIMESTAMPTZ, ?)
           ORDER BY delivered_at DESC, path DESC LIMIT 1""",
        [contract.name, delivered_at, path]).fetchall()
    if not rows:
        return None
    schema = json.loads(rows[0][0])
    return schema if schema and "non_null" in schema[0] else None


def _type_change(column: str, before: str, after: str, expected: str, misfit: int, n: int, tz: str | None) -> Change:
    breaking = not fits(after, expected, tz)
    if {before, after} == {"timestamptz", "timestamp"}:
        kind, what = "timezone_changed", ("offset-aware to naive" if after == "timestamp" else "naive to offset-aware")
    elif (before, after) in WIDENINGS and not breaking:  # wider than the contract reads is a change, not a widening
        kind, what = "type_widened", f"{before} -> {after}"
    else:
        kind, what = "type_changed", f"{before} -> {after}"
    detail = f"{what}; contract expects {expected}" + (f", {misfit} of {n} values do not fit" if breaking else "")
    return Change(kind, column, detail, breaking, "dataType", before, after)


def compare(contract: Contract, schema: list[dict], mapping: dict[str, str], missing: list[str], extra: list[str],
            previous: list[dict] | None) -> list[Change]:
    """Every difference of a delivery's schema from its contract and from the previous version."""
    by_name = {c["name"]: c for c in schema}
    prev = {c["name"]: c for c in previous or ()}
    changes = []
    absent = [c.name for c in contract.columns if c.name not in mapping]
    for name in absent:
        required = name in missing
        changes.append(Change("column_removed", name, "required column missing from the delivery" if required
                              else "optional column missing; loaded as NULL", True, "columns"))
    for name in extra:
        changes.append(Change("column_added", name, "delivered column the contract does not name", False, "columns"))
    for name, delivered in mapping.items():
        if delivered != name:
            changes.append(Change("renamed", name, f"delivered as {delivered!r} (declared in sourceNames)", False))
    # a removed and an added column with matching value profiles are probably one column renamed
    for name in absent:
        before = prev.get(mapping.get(name, name)) or prev.get(name)
        for added in extra:
            a = by_name[added]
            if before and a["type"] == before["type"] and _overlaps(before, a):
                changes.append(Change("rename_suggested", name, f"{added!r} has the value profile {name!r} had; "
                                      f"if it is the same column, add {added!r} to its sourceNames", False))
    for name, delivered in mapping.items():
        obs = by_name[delivered]
        expected, tz = contract_type(contract, name), contract.column(name).source_timezone
        before = prev.get(delivered, {}).get("type") or prev.get(name, {}).get("type") or expected
        if obs["type"] != "null" and before != "null" and obs["type"] != before:
            changes.append(_type_change(name, before, obs["type"], expected, obs["misfit"], obs["non_null"], tz))
        elif not fits(obs["type"], expected, tz):
            changes.append(_type_change(name, expected, obs["type"], expected, obs["misfit"], obs["non_null"], tz))
    return changes


def _overlaps(a: dict, b: dict) -> bool:
    if a.get("min") is None or b.get("min") is None:
        return False
    if a["type"] in ("integer", "number"):
        lo = max(float(a["min"]), float(b["min"]))
        return lo <= min(float(a["max"]), float(b["max"]))
    return max(a["min"], b["min"]) <= min(a["max"], b["max"])


def row_checks(con, contract: Contract, table: str, mapping: dict[str, str], schema: list[dict],
               stats: FileStats | None = None) -> list[Change]:
    """Changes only the values show: required columns with nulls, a key no longer unique, new categories."""
    by_name = {c["name"]: c for c in schema}
    changes = []
    if stats is not None:
        rows, sampled = stats.rows, ""
    else:
        rows = con.execute(f"SELECT count(*) FROM {sample(con, table)}").fetchall()[0][0]
        sampled = "" if sample(con, table) == table else f" (every k-th row, {rows} rows)"
    for col in contract.columns:
        if col.required and col.name in mapping and by_name[mapping[col.name]]["non_null"] < rows:
            n = rows - by_name[mapping[col.name]]["non_null"]
            changes.append(Change("nullability_changed", col.name, f"required, but {n} of {rows} values are null{sampled}", True))
    key = contract.primary_key
    if key and all(k in mapping for k in key):
        cols = ", ".join(delivered_ident(mapping[k]) for k in key)
        dup = stats.duplicates if stats is not None else con.execute(f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {table} GROUP BY {cols} "
                          "HAVING count(*) > 1)").fetchall()[0][0]
        if dup:
            changes.append(Change("primary_key_changed", None, f"declared key {list(key)} is not unique: "
                                  f"{dup} rows repeat a key within the delivery", True, "primaryKey"))
    for rule in contract.rules:
        if rule.kind == "allowed_values" and rule.column in mapping:
            allowed = ", ".join(literal(str(v)) for v in rule.values)
            new = stats.new_values.get(rule.id, []) if stats is not None else [r[0] for r in con.execute(
                f"SELECT DISTINCT CAST({delivered_ident(mapping[rule.column])} AS VARCHAR) AS v FROM {table} "
                f"WHERE v IS NOT NULL AND v NOT IN ({allowed}) ORDER BY 1 LIMIT 10").fetchall()]
            if new:
                changes.append(Change("allowed_values_changed", rule.column, f"new values {new} (rule {rule.id})",
                                      rule.severity == "error"))
    return changes


def null_texts(contract: Contract, mapping: dict[str, str]) -> dict[str, list[str]]:
    """delivered name -> the texts its contract column reads as null (nullSentinels)."""
    return {mapping[c.name]: [v for v in c.null_sentinels if isinstance(v, str)] for c in contract.columns if c.name in mapping}


NOT_READ = object()  # examine's `previous` when the caller has not looked it up


def examine(con, contract: Contract, table: str, delivered_schema: list[dict], mapping, missing, extra,
            delivered_at, path: str, stats: FileStats | None = None, previous=NOT_READ) -> Verdict:
    """stats: the delivery's numbers computed with its batch (batch_stats); None reads them from `table`.
    previous: the previous_schema the caller already knows (NOT_READ: read from ops.landed_files)."""
    expected = {mapping[c]: contract_type(contract, c) for c in mapping}
    schema = observe(con, table, delivered_schema, expected, null_texts(contract, mapping),
                     stats.profiles if stats is not None else None)
    if previous is NOT_READ:
        previous = previous_schema(con, contract, delivered_at, path)
    changes = compare(contract, schema, mapping, missing, extra, previous)
    changes += row_checks(con, contract, table, mapping, schema, stats)
    return Verdict(schema, schema_hash(schema), changes)


# ---------------------------------------------------------------------------- versions


# Set while a batch lands in one transaction: its versions are collected and merged by record_collected.
_COLLECTED: contextvars.ContextVar[list | None] = contextvars.ContextVar("versions", default=None)


def record_version(con, contract: Contract, verdict: Verdict, path: str, delivered_at, dates, status: str) -> None:
    """Upsert the delivery's schema version: first/last delivery by delivery time, partitions touched."""
    shape = json.dumps([{"name": c["name"], "type": c["type"]} for c in verdict.schema])
    row = (contract.name, verdict.schema_hash, shape, path, delivered_at, path, delivered_at,
           0 if status == "quarantined" else 1, json.dumps(sorted(dates)), 1 if status == "quarantined" else 0)
    collected = _COLLECTED.get()
    if collected is not None:
        collected.append(row)
    else:
        _merge(con, [row])


@contextlib.contextmanager
def collecting():
    """record_version calls inside are only collected; record_collected merges them."""
    token = _COLLECTED.set([])
    try:
        yield
    finally:
        _COLLECTED.reset(token)


def record_collected(con) -> None:
    """Merge the collected versions as one record_version per file in order would, in at most two statements:
    each version's first file alone, then the rest folded (earliest and latest by delivery, sums, partitions
    united), which is exact when the files' delivery times are known (after its first file a version's times
    are known: least and greatest skip a NULL); else each file is merged in turn."""
    by_hash: dict[tuple, list[tuple]] = {}
    for r in _COLLECTED.get():
        by_hash.setdefault(r[:2], []).append(r)
    firsts, rests, in_turn = [], [], []
    for key, group in by_hash.items():
        if any(r[4] is None for r in group):
            in_turn += group
            continue
        firsts.append(group[0])
        if len(group) > 1:
            rest = group[1:]
            first = min(rest, key=lambda r: (r[4], r[3]))
            last = max(rest, key=lambda r: (r[6], r[5]))
            dates = sorted({d for r in rest for d in json.loads(r[8])})
            rests.append((*key, group[0][2], first[3], first[4], last[5], last[6], sum(r[7] for r in rest),
                          json.dumps(dates), sum(r[9] for r in rest)))
    _merge(con, firsts)
    _merge(con, rests)
    for r in in_turn:
        _merge(con, [r])


def _merge(con, rows: list[tuple]) -> None:
    """The upsert of record_version for rows of distinct versions, in one statement."""
    if not rows:
        return
    one = """SELECT ? AS source, ? AS schema_hash, ?::JSON AS observed_schema, ? AS first_file,
                    ?::TIMESTAMPTZ AS first_delivered_at, ? AS last_file, ?::TIMESTAMPTZ AS last_delivered_at,
                    ?::BIGINT AS files, ?::JSON AS partitions, ?::BIGINT AS quarantined_files"""
    # MERGE, not ON CONFLICT: the same upsert on DuckLake, which has no primary keys.
    con.execute(
        f"""MERGE INTO ops.schema_versions AS v
           USING ({" UNION ALL ".join([one] * len(rows))}) AS n
           ON v.source = n.source AND v.schema_hash = n.schema_hash
           WHEN MATCHED THEN UPDATE SET
             first_file = CASE WHEN (n.first_delivered_at, n.first_file) < (v.first_delivered_at, v.first_file)
                               THEN n.first_file ELSE v.first_file END,
             first_delivered_at = least(v.first_delivered_at, n.first_delivered_at),
             last_file = CASE WHEN (n.last_delivered_at, n.last_file) > (v.last_delivered_at, v.last_file)
                              THEN n.last_file ELSE v.last_file END,
             last_delivered_at = greatest(v.last_delivered_at, n.last_delivered_at),
             files = v.files + n.files,
             partitions = to_json(list_sort(list_distinct(
                 flatten([CAST(v.partitions AS VARCHAR[]), CAST(n.partitions AS VARCHAR[])])))),
             quarantined_files = v.quarantined_files + n.quarantined_files
           WHEN NOT MATCHED THEN INSERT VALUES (n.source, n.schema_hash, n.observed_schema, n.first_file,
             n.first_delivered_at, n.last_file, n.last_delivered_at, n.files, n.partitions, n.quarantined_files)""",
        [v for row in rows for v in row])


def versions(con, source: str) -> list[dict]:
    cols = ["schema_hash", "observed_schema", "first_file", "last_file", "files", "partitions", "quarantined_files"]
    rows = con.execute(f"SELECT {', '.join(cols)} FROM ops.schema_versions WHERE source = ? "
                       "ORDER BY first_delivered_at, first_file", [source]).fetchall()
    return [dict(zip(cols, r)) for r in rows]


def diff_schemas(before: list[dict], after: list[dict]) -> list[str]:
    """Column-level difference between two recorded versions, for the per-partition check."""
    b = {c["name"]: c["type"] for c in before}
    a = {c["name"]: c["type"] for c in after}
    out = [f"added {n} ({a[n]})" for n in a if n not in b] + [f"removed {n} ({b[n]})" for n in b if n not in a]
    out += [f"{n}: {b[n]} -> {a[n]}" for n in a if n in b and a[n] != b[n]]
    return out
