"""Schema-change detection and the schemaEvolution policies, on real flights of one day delivered
through bronze into a real DuckDB warehouse: each change is detected at the delivery that carries
it, classified, graded, and handled as the contract's policy says; no wrong value reaches raw."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from contracts.loader import CONTRACTS_DIR, line_index, load_contract
from orchestration.ops import deliveries
from orchestration.quality import schema_checks
from scenarios.test_bad_input import (csv_bytes, day_rows, dead_rows, file_name, ingest, landed_row, landing, raw_count,
                                  rel)

DAY1, DAY2 = (3, 4), (3, 5)


def variant(tmp_path: Path, name: str = "flights", **changes) -> object:
    """The shipped contract with edits: evolution={key: mode}, drop_custom=[(column, property)]."""
    doc = yaml.safe_load((CONTRACTS_DIR / f"{name}.yaml").read_text())
    for key, mode in changes.get("evolution", {}).items():
        for p in doc["customProperties"]:
            if p["property"] == "schemaEvolution":
                p["value"][key] = mode
    for column, prop in changes.get("drop_custom", []):
        for col in doc["schema"][0]["properties"]:
            if col["name"] == column:
                col["customProperties"] = [p for p in col.get("customProperties", []) if p["property"] != prop]
    folder = tmp_path / f"contracts-{abs(hash(json.dumps(changes, sort_keys=True)))}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_contract(path)


def deliver(home: Path, day: tuple[int, int], frame: pd.DataFrame) -> str:
    name = file_name(*day, "csv")
    (landing(home) / name).write_bytes(csv_bytes(frame))
    return rel(name)


def kinds(reason: str | None) -> set[str]:
    words = (reason or "").replace(";", " ").split()
    return {w for w in words if w in {
        "column_added", "column_removed", "type_widened", "type_changed", "timezone_changed", "nullability_changed",
        "renamed", "rename_suggested", "primary_key_changed", "allowed_values_changed"}}


def text_delays(frame: pd.DataFrame, share: float = 0.3) -> tuple[pd.DataFrame, list[int]]:
    """dep_delay turns to text: a share of the present values become 'late'."""
    out = frame.copy()
    out["dep_delay"] = out["dep_delay"].astype(object)
    present = out.index[out["dep_delay"].notna()]
    bad = [int(i) for i in present[:: int(1 / share)]]
    out.loc[bad, "dep_delay"] = "late"
    return out, bad


def test_an_unchanged_delivery_reports_no_change_and_one_version(plumbline_home, warehouse_con, tmp_path):
    contract = variant(tmp_path)
    for day in (DAY1, DAY2):
        deliver(plumbline_home, day, day_rows(*day))
    landed, _ = ingest(warehouse_con, contract)
    assert all(f.status == "loaded" and f.reason is None for f in landed.values()), landed
    versions = warehouse_con.execute("SELECT files, first_file, last_file, partitions FROM ops.schema_versions").fetchall()
    assert versions == [(2, rel(file_name(*DAY1, "csv")), rel(file_name(*DAY2, "csv")), '["2013-03-04","2013-03-05"]')]


@pytest.mark.parametrize("mode", ["freeze", "discard_row", "discard_value", "evolve"])
def test_numeric_column_turned_text_follows_the_datatype_policy(plumbline_home, warehouse_con, tmp_path, mode):
    contract = variant(tmp_path, evolution={"dataType": mode})
    frame, bad = text_delays(day_rows(*DAY1))
    path = deliver(plumbline_home, DAY1, frame)
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, path)
    assert "type_changed dep_delay: integer -> string; contract expects integer, 320 of 959 values do not fit" in f["reason"]
    assert "(breaking)" in f["reason"]
    if mode == "freeze":
        assert f["status"] == "quarantined" and f["bronze_path"] is None
        line = line_index(Path(contract.path).read_text()).get(("schema", 0, "properties",
                                                                   contract.column_names.index("dep_delay")))
        assert f"{contract.path}:{line}" in f["reason"]
        assert f"plumbline deliveries retry --source flights --file {path}" in f["reason"]
        assert warehouse_con.execute("SELECT count(*) FROM raw.flights").fetchone()[0] == 0
        return
    assert f["status"] == "loaded"
    dead = dead_rows(warehouse_con, f["file_id"])
    raw = warehouse_con.execute("SELECT dep_delay FROM raw.flights WHERE _source_file = ? ORDER BY _source_row",
                                [f["file_id"]]).fetchall()
    if mode == "discard_row":
        assert sorted(d["row_offset"] for d in dead) == bad
        assert {d["rule_id"] for d in dead} == {"flights_schema_type_changed"} and "discard_row" in dead[0]["reason"]
        assert len(raw) == len(frame) - len(bad)
    elif mode == "discard_value":
        assert sorted(d["row_offset"] for d in dead) == bad
        assert {(d["rule_id"], d["severity"]) for d in dead} == {("flights_dep_delay_value_discarded", "warning")}
        assert json.loads(dead[0]["payload"])["dep_delay"] == "late"
        assert len(raw) == len(frame) and [raw[i][0] for i in bad] == [None] * len(bad)
    else:  # evolve: accepted as delivered; the contract's type rule still refuses each bad value
        assert {d["rule_id"] for d in dead} == {"flights_dep_delay_type"} and sorted(d["row_offset"] for d in dead) == bad
        assert len(raw) == len(frame) - len(bad)
    clean = [None if pd.isna(v) else int(v) for i, v in day_rows(*DAY1)["dep_delay"].items() if i not in bad]
    assert [r[0] for r in raw if r[0] is not None] == [v for v in clean if v is not None]


def test_a_few_bad_numbers_are_bad_rows_not_a_type_change(plumbline_home, warehouse_con, tmp_path):
    frame, bad = text_delays(day_rows(*DAY1), share=0.005)
    path = deliver(plumbline_home, DAY1, frame)
    ingest(warehouse_con, variant(tmp_path))
    f = landed_row(warehouse_con, path)
    assert f["status"] == "loaded" and "type_changed" not in (f["reason"] or "")
    assert {d["rule_id"] for d in dead_rows(warehouse_con, f["file_id"])} == {"flights_dep_delay_type"}


@pytest.mark.parametrize("mode", ["freeze", "discard_row", "discard_value"])
def test_added_column_follows_the_columns_policy(plumbline_home, warehouse_con, tmp_path, mode):
    contract = variant(tmp_path, evolution={"columns": mode})
    frame = day_rows(*DAY1)
    frame["terminal"] = [f"T{i % 8 + 1}" if i % 2 else None for i in range(len(frame))]
    path = deliver(plumbline_home, DAY1, frame)
    ingest(warehouse_con, contract)
    f = landed_row(warehouse_con, path)
    assert "column_added terminal" in f["reason"] or "unexpected column(s) ['terminal']" in f["reason"]
    if mode == "freeze":
        assert f["status"] == "quarantined" and "(non-breaking)" in f["reason"]
        assert raw_count(warehouse_con, f["file_id"]) == 0
    elif mode == "discard_row":
        dead = dead_rows(warehouse_con, f["file_id"])
        assert sorted(d["row_offset"] for d in dead) == list(range(1, len(frame), 2))
        assert raw_count(warehouse_con, f["file_id"]) == len(frame) - len(dead)
    else:
        assert f["status"] == "loaded" and raw_count(warehouse_con, f["file_id"]) == len(frame)


def test_undeclared_rename_is_quarantined_with_a_suggestion_then_loads_once_declared(plumbline_home, warehouse_con, tmp_path):
    before = variant(tmp_path, drop_custom=[("tailnum", "sourceNames")])
    deliver(plumbline_home, DAY1, day_rows(*DAY1))
    ingest(warehouse_con, before)
    renamed = day_rows(*DAY2).rename(columns={"tailnum": "tail_number"})
    path = deliver(plumbline_home, DAY2, renamed)
    ingest(warehouse_con, before)
    f = landed_row(warehouse_con, path)
    assert f["status"] == "quarantined"
    assert {"column_removed", "column_added", "rename_suggested"} <= kinds(f["reason"])
    assert "add 'tail_number' to its sourceNames" in f["reason"]
    assert warehouse_con.execute("SELECT count(*) FROM raw.flights WHERE event_date = '2013-03-05'").fetchone()[0] == 0
    # the blocking check of the partition the delivery touches fails and says what to do
    (check, _) = schema_checks.results(warehouse_con, before, ["2013-03-05"])
    assert not check.passed and path in check.description and "deliveries retry" in check.description
    # a partition it does not touch is not blocked: the asset-level check only warns that one is held back
    (other, _) = schema_checks.results(warehouse_con, before, ["2013-03-04"])
    assert other.severity == dg.AssetCheckSeverity.WARN and path in other.description

    fixed = variant(tmp_path)  # the shipped contract declares sourceNames: [tail_number]
    assert deliveries.release(warehouse_con, "flights", path) == [path]
    ingest(warehouse_con, fixed)
    f = landed_row(warehouse_con, path)
    assert f["status"] == "loaded" and "column_removed" not in (f["reason"] or "")
    got = [r[0] for r in warehouse_con.execute(
        "SELECT tailnum FROM raw.flights WHERE event_date = '2013-03-05' ORDER BY _source_row").fetchall()]
    assert got == [None if pd.isna(v) else v for v in day_rows(*DAY2)["tailnum"]]


def naive_local(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    local = pd.to_datetime(out["time_hour"], utc=True).dt.tz_convert("America/New_York")
    out["time_hour"] = local.dt.strftime("%Y-%m-%d %H:%M:%S")
    return out


def test_naive_timestamps_are_quarantined_unless_the_contract_names_their_zone(plumbline_home, warehouse_con, tmp_path):
    deliver(plumbline_home, DAY1, day_rows(*DAY1))
    path = deliver(plumbline_home, DAY2, naive_local(day_rows(*DAY2)))
    ingest(warehouse_con, variant(tmp_path, drop_custom=[("time_hour", "sourceTimezone")]))
    f = landed_row(warehouse_con, path)
    assert f["status"] == "quarantined" and "timezone_changed time_hour: offset-aware to naive" in f["reason"]
    assert "(breaking)" in f["reason"]
    deliveries.release(warehouse_con, "flights", path)
    ingest(warehouse_con, variant(tmp_path))  # shipped: sourceTimezone America/New_York
    f = landed_row(warehouse_con, path)
    assert f["status"] == "loaded" and "timezone_changed" in f["reason"] and "(non-breaking)" in f["reason"]
    got = warehouse_con.execute("SELECT strftime(time_hour, '%Y-%m-%dT%H:%M:%SZ') FROM raw.flights "
                                "WHERE event_date = '2013-03-05' ORDER BY _source_row").fetchall()
    assert [r[0] for r in got] == list(day_rows(*DAY2)["time_hour"])


@pytest.mark.parametrize("mode", ["freeze", "evolve"])
def test_a_key_no_longer_unique_follows_the_primary_key_policy(plumbline_home, warehouse_con, tmp_path, mode):
    frame = day_rows(*DAY1)
    frame = pd.concat([frame, frame.iloc[[3, 7]]], ignore_index=True)
    path = deliver(plumbline_home, DAY1, frame)
    _, accounts = ingest(warehouse_con, variant(tmp_path, evolution={"primaryKey": mode}))
    f = landed_row(warehouse_con, path)
    assert "primary_key_changed: declared key" in f["reason"] and "2 rows repeat a key" in f["reason"]
    if mode == "freeze":
        assert f["status"] == "quarantined" and raw_count(warehouse_con, f["file_id"]) == 0
    else:
        assert f["status"] == "loaded" and accounts["2013-03-04"].superseded == 2
        assert raw_count(warehouse_con, f["file_id"]) == len(frame) - 2


def test_nulls_in_a_required_column_and_new_categories_are_reported(plumbline_home, warehouse_con, tmp_path):
    frame = day_rows(*DAY1)
    frame.loc[[1, 2], "carrier"] = None
    frame.loc[[5], "origin"] = "SWF"
    path = deliver(plumbline_home, DAY1, frame)
    ingest(warehouse_con, variant(tmp_path))
    f = landed_row(warehouse_con, path)
    assert f["status"] == "loaded"  # row rules dead-letter these rows one by one
    assert "nullability_changed carrier: required, but 2 of" in f["reason"]
    assert "allowed_values_changed origin: new values ['SWF']" in f["reason"]
    assert {d["row_offset"] for d in dead_rows(warehouse_con, f["file_id"])} == {1, 2, 5}


def test_the_previous_version_is_by_delivery_time_not_arrival(plumbline_home, warehouse_con, tmp_path):
    contract = variant(tmp_path)
    later = deliver(plumbline_home, DAY2, naive_local(day_rows(*DAY2)))
    ingest(warehouse_con, contract)
    earlier = deliver(plumbline_home, DAY1, day_rows(*DAY1))
    ingest(warehouse_con, contract)
    versions = warehouse_con.execute("SELECT first_file, files FROM ops.schema_versions ORDER BY first_delivered_at").fetchall()
    assert versions == [(earlier, 1), (later, 1)]
    (_, diff) = schema_checks.results(warehouse_con, contract, ["2013-03-05"])
    assert not diff.passed and "time_hour: timestamptz -> timestamp" in json.dumps(diff.metadata["versions"].value)


def halves(frame: pd.DataFrame, rows: list[int] | None = None) -> pd.DataFrame:
    """dep_delay written as x.5 in the given rows (every present value when rows is None)."""
    out = frame.copy()
    out["dep_delay"] = out["dep_delay"].astype(object)
    present = [int(i) for i in out.index[out["dep_delay"].notna()]]
    for i in present if rows is None else rows:
        out.loc[i, "dep_delay"] = f"{int(frame.loc[i, 'dep_delay'])}.5"
    return out


def test_one_fraction_among_integers_is_a_bad_row_not_a_type_change(plumbline_home, warehouse_con, tmp_path):
    frame = day_rows(*DAY1)
    bad = int(frame.index[frame["dep_delay"].notna()][10])
    path = deliver(plumbline_home, DAY1, halves(frame, [bad]))
    _, accounts = ingest(warehouse_con, variant(tmp_path, evolution={"dataType": "freeze"}))
    f = landed_row(warehouse_con, path)
    assert f["status"] == "loaded" and "type_changed" not in (f["reason"] or ""), f["reason"]
    dead = dead_rows(warehouse_con, f["file_id"])
    assert [(d["row_offset"], d["rule_id"]) for d in dead] == [(bad, "flights_dep_delay_type")]
    assert json.loads(dead[0]["payload"])["dep_delay"] == f"{int(frame.loc[bad, 'dep_delay'])}.5"
    assert raw_count(warehouse_con, f["file_id"]) == len(frame) - 1
    assert (accounts["2013-03-04"].accepted, accounts["2013-03-04"].dead_lettered) == (len(frame) - 1, 1)


def test_every_delay_turned_fractional_is_a_type_change(plumbline_home, warehouse_con, tmp_path):
    frame = day_rows(*DAY1)
    path = deliver(plumbline_home, DAY1, halves(frame))
    ingest(warehouse_con, variant(tmp_path, evolution={"dataType": "freeze"}))
    f = landed_row(warehouse_con, path)
    present = int(frame["dep_delay"].notna().sum())
    assert f["status"] == "quarantined" and raw_count(warehouse_con, f["file_id"]) == 0
    assert (f"type_changed dep_delay: integer -> number; contract expects integer, {present} of {present} values "
            "do not fit (breaking)") in f["reason"]


def wide(frame: pd.DataFrame, columns: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """frame plus unexpected columns, `columns` in all: integers, decimals, text and dates in turn."""
    n = len(frame)
    makers = {"integer": lambda i: [str(i * 7 + r) for r in range(n)],
              "number": lambda i: [f"{i}.{r:02d}" for r in range(n)],
              "string": lambda i: [f"gate {chr(65 + (i + r) % 26)}" for r in range(n)],
              "date": lambda i: [f"2013-{1 + (i + r) % 12:02d}-{1 + r % 28:02d}" for r in range(n)]}
    kinds = {f"extra_{i:03d}": list(makers)[i % len(makers)] for i in range(columns - frame.shape[1])}
    extra = pd.DataFrame({name: makers[kind](i) for i, (name, kind) in enumerate(kinds.items())})
    return pd.concat([frame.reset_index(drop=True), extra], axis=1), kinds


@pytest.mark.parametrize("mode", ["discard_value", "freeze", "discard_row"])
def test_a_delivery_of_600_columns_is_judged_column_by_column_and_does_not_hold_the_next(
        plumbline_home, warehouse_con, tmp_path, mode):
    contract = variant(tmp_path, evolution={"columns": mode})
    frame, kinds = wide(day_rows(*DAY1, 40), 600)
    frame["dep_delay"] = frame["dep_delay"].astype(object)
    frame.loc[3, "dep_delay"] = "late"  # one bad value among the 600 columns: a bad row, found
    wide_path = deliver(plumbline_home, DAY1, frame)
    next_path = deliver(plumbline_home, DAY2, day_rows(*DAY2, 40))
    ingest(warehouse_con, contract)

    f = landed_row(warehouse_con, wide_path)
    observed = {c["name"]: c for c in json.loads(f["observed_schema"])}
    assert len(observed) == 600
    assert {n: observed[n]["type"] for n in kinds} == kinds
    assert {n: observed[n]["type"] for n in contract.column_names} == {
        n: {"time_hour": "timestamptz"}.get(n, contract.column(n).logical_type) for n in contract.column_names}
    assert observed["dep_delay"]["misfit"] == 1 and observed["extra_001"]["non_null"] == 40
    assert (observed["extra_002"]["min"], observed["extra_002"]["max"]) == (min(frame["extra_002"]), max(frame["extra_002"]))
    assert landed_row(warehouse_con, next_path)["status"] == "loaded"
    dead = [(d["row_offset"], d["rule_id"]) for d in dead_rows(warehouse_con, f["file_id"])]
    grouped = f"column_added: {len(kinds)} delivered columns the contract does not name: {list(kinds)} (non-breaking)"
    if mode == "freeze":  # one change for all the added columns, said once
        assert f["status"] == "quarantined" and grouped in f["reason"] and f["reason"].count("column_added") == 1
        assert dead == [] and raw_count(warehouse_con, f["file_id"]) == 0
        return
    assert f["status"] == "loaded" and f"unexpected column(s) {list(kinds)}" in f["reason"]
    if mode == "discard_row":  # every row carries added columns: each dead-lettered once, naming them all
        assert dead == [(r, "flights_schema_column_added") for r in range(40)]
        assert grouped in dead_rows(warehouse_con, f["file_id"])[0]["reason"]
        assert raw_count(warehouse_con, f["file_id"]) == 0
        return
    assert dead == [(3, "flights_dep_delay_type")]
    assert raw_count(warehouse_con, f["file_id"]) == 39
    extras = warehouse_con.execute("SELECT _extra FROM read_parquet(?) ORDER BY _row_offset",
                                   [str(plumbline_home / f["bronze_path"])]).fetchall()  # bronze keeps them
    assert [json.loads(e[0]) for e in extras] == [{n: frame.loc[r, n] for n in kinds} for r in range(40)]
