"""Benchmark: the contract's Great Expectations checks of raw.flights over the whole year, three ways,
side by side on the same staged rows:

  whole frame   the previous path: every delivered row of the rebuilt partitions fetched into pandas
                (the rule columns) and validated by Great Expectations (SUMMARY, 5 examples)
  distinct      plumbline's path (orchestration.quality.checks): DuckDB groups the delivered rows by
                each rule column's value, Great Expectations judges each distinct value once, and a
                value it finds unexpected counts for every row that delivered it
  bare          one DuckDB query counting the rows that break each rule (no Great Expectations)

    .venv/bin/python bench/checks.py --home DIR [--repeat 3] [--bad-every 997]

DIR is a synced home (`PLUMBLINE_HOME=DIR plumbline feed --profile demo && PLUMBLINE_HOME=DIR
plumbline sync`); the script works on a copy of its warehouse and rebuilds raw.flights' year there
(not timed) to stage the delivered rows as a run does. With --bad-every N it then breaks every Nth
staged row (dep_time 2500, carrier 'zz', tailnum 'N?', dest 'ZZZ'; marked as dead-lettered) so the
paths are compared on bad days too. The whole-frame and distinct paths must give the same count and
the same examples for every rule; the script checks it. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def whole_frame(con, contract, rules, keys, references):
    """The previous path: (rule id -> (unexpected rows, examples)), every row through pandas."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from orchestration.quality.checks import EXAMPLES, _plain
    from orchestration.warehouse import ident, key_list

    cols = ", ".join(ident(c) for c in sorted({r.column for r in rules if r.column}))
    frame = con.execute(f"SELECT {cols} FROM _stage WHERE _failed <> '' UNION ALL "
                        f"SELECT {cols} FROM {contract.table} WHERE event_date IN {key_list(keys)}").df()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (context.data_sources.add_pandas("bench").add_dataframe_asset("d").add_batch_definition_whole_dataframe("d")
             .get_batch(batch_parameters={"dataframe": frame}))
    expectations = []
    for r in rules:
        meta, kw = {"rule_id": r.id}, {"column": r.column}
        if r.kind == "range":
            expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(min_value=r.minimum, max_value=r.maximum, meta=meta, **kw))
        elif r.kind == "allowed_values":
            expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(value_set=list(r.values), meta=meta, **kw))
        elif r.kind == "pattern":
            expectations.append(gx.expectations.ExpectColumnValuesToMatchRegex(regex=r.pattern, meta=meta, **kw))
        elif r.kind == "not_null":
            expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(meta=meta, **kw))
        elif r.kind == "foreign_key":
            expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(value_set=references[r.id], meta=meta, **kw))
    suite = context.suites.add(gx.ExpectationSuite(name="whole", expectations=expectations))
    out = {}
    for res in batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}).results:
        info = res.result or {}
        out[res.expectation_config.meta["rule_id"]] = (int(info.get("unexpected_count") or 0),
                                                       [_plain(v) for v in info.get("partial_unexpected_list") or []])
    return out, len(frame)


def distinct(con, contract, rules, keys, references):
    from orchestration.quality import checks

    values, rows = checks._distinct_values(con, contract, rules, keys)
    outcomes = checks._validate(contract, rules, values, references, {})
    return {r.id: (outcomes[r.id].unexpected, outcomes[r.id].examples) for r in rules}, rows, len(values)


def bare(con, contract, rules, keys, references):
    """One DuckDB query: rows breaking each rule (NULLs pass every rule but not_null)."""
    from orchestration.warehouse import ident, key_list, literal

    def broken(r) -> str:
        c = ident(r.column)
        if r.kind == "range":
            parts = ([f"{c} < {literal(r.minimum)}"] if r.minimum is not None else []) + \
                    ([f"{c} > {literal(r.maximum)}"] if r.maximum is not None else [])
            return " OR ".join(parts)
        if r.kind == "allowed_values":
            return f"{c} NOT IN ({', '.join(literal(v) for v in r.values)})"
        if r.kind == "pattern":
            return f"NOT regexp_matches({c}, {literal(r.pattern)})"
        if r.kind == "not_null":
            return f"{c} IS NULL"
        table, column = r.reference
        return f"{c} NOT IN (SELECT {ident(column)} FROM raw.{ident(table)})"

    cols = ", ".join(ident(c) for c in sorted({r.column for r in rules if r.column}))
    counts = ", ".join(f"count(*) FILTER (WHERE {broken(r)})" for r in rules)
    row = con.execute(f"SELECT {counts} FROM (SELECT {cols} FROM _stage WHERE _failed <> '' UNION ALL "
                      f"SELECT {cols} FROM {contract.table} WHERE event_date IN {key_list(keys)})").fetchall()[0]
    return {r.id: n for r, n in zip(rules, row)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True, help="a synced PLUMBLINE_HOME (read; its warehouse is copied)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bad-every", type=int, default=0, help="break every Nth staged row (0: the data as delivered)")
    args = ap.parse_args()
    os.environ["PLUMBLINE_HOME"] = str(args.home.resolve())
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

    from orchestration import catalog
    from orchestration.quality import checks
    from orchestration.rebuild import partitions
    from orchestration.warehouse_resource import Warehouse

    work = Path(tempfile.mkdtemp(prefix="plumbline-bench-checks-"))
    shutil.copyfile(args.home / "warehouse.duckdb", work / "warehouse.duckdb")
    contract = catalog.contracts()["flights"]
    rules = [r for r in checks.checked_rules(contract) if r.kind != "row_count"]
    try:
        with Warehouse(path=str(work / "warehouse.duckdb")).connect() as con:
            keys = [str(p) for (p,) in con.execute("SELECT DISTINCT strftime(event_date, '%Y-%m-%d') FROM raw.flights ORDER BY 1").fetchall()]
            partitions.rebuild(con, contract, keys, "bench-checks")  # stages the year's rows in _stage, as a run does
            if args.bad_every:
                con.execute(f"""UPDATE _stage SET dep_time = 2500, carrier = 'zz', tailnum = 'N?', dest = 'ZZZ',
                                _failed = 'flights_dep_time_clock' WHERE _row_offset % {args.bad_every} = 0""")
            references = checks._references(con, contract)
            figures = {"whole": [], "distinct": [], "bare": []}
            cpu = {"whole": [], "distinct": [], "bare": []}

            def timed(name, fn):
                t, c = time.perf_counter(), time.process_time()
                out = fn(con, contract, rules, keys, references)
                figures[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                return out

            for _ in range(args.repeat):
                old, rows = timed("whole", whole_frame)
                new, new_rows, values = timed("distinct", distinct)
                sql = timed("bare", bare)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    same = rows == new_rows and all(old[r.id] == new[r.id] for r in rules)
    for r in rules:
        flag = "" if old[r.id] == new[r.id] else "   <-- DIFFERS"
        print(f"{r.id:32s} whole {old[r.id][0]:>7} distinct {new[r.id][0]:>7} bare {sql[r.id]:>7}  e.g. {new[r.id][1][:3]}{flag}")
    base = statistics.median(figures["bare"])
    print(f"\n{rows:,} delivered rows of {len(keys)} partitions, {len(rules)} row rules, {values:,} distinct values judged; "
          f"whole frame and distinct agree on every count and example: {same}\n")
    print("| path | wall s (median of %d) | vs bare | CPU s |" % args.repeat)
    print("|---|---:|---:|---:|")
    for name, label in (("bare", "bare: one DuckDB query of the same rules"),
                        ("whole", "before: Great Expectations on every row (pandas)"),
                        ("distinct", "after: Great Expectations on the distinct values (DuckDB groups)")):
        m = statistics.median(figures[name])
        print(f"| {label} | {m:.3f} | {m / base:.1f}x | {statistics.median(cpu[name]):.2f} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
