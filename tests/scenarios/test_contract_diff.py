"""`plumbline contracts diff` and `plumbline contracts lint` against a table of change cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contracts.loader import CONTRACTS_DIR, load_contract
from orchestration.ops.cli import main
from contracts.diff import diff


def prop(doc, name):
    return next(p for p in doc["schema"][0]["properties"] if p["name"] == name)


def custom(doc_or_prop, name, value):
    props = doc_or_prop.setdefault("customProperties", [])
    for p in props:
        if p["property"] == name:
            p["value"] = value
            return
    props.append({"property": name, "vendor": "plumbline", "value": value})


def rule(doc, column, rule_id):
    return next(q for q in prop(doc, column)["quality"] if q["id"] == rule_id)


def _add_column(d):
    d["schema"][0]["properties"].append({"name": "terminal", "logicalType": "string"})


def _remove_column(d):
    d["schema"][0]["properties"].remove(prop(d, "air_time"))


def _rename_column(d):
    p = prop(d, "tailnum")
    p["name"] = "tail_number"
    custom(p, "sourceNames", ["tailnum"])
    for q in p.get("quality", []):
        q["id"] = q["id"].replace("tailnum", "tail_number")
    for r in p.get("relationships", []):
        r["id"] = r["id"].replace("tailnum", "tail_number")


def _widen_integer(d):
    prop(d, "flight")["physicalType"] = "BIGINT"


def _integer_to_number(d):
    p = prop(d, "dep_delay")
    p["logicalType"], p["physicalType"] = "number", "DOUBLE"


def _narrow_integer(d):
    prop(d, "flight")["physicalType"] = "SMALLINT"


def _to_string(d):
    p = prop(d, "air_time")  # not a restatement key measure: those must stay numeric
    p["logicalType"], p["physicalType"] = "string", "VARCHAR"
    p.pop("quality", None)
    p.pop("logicalTypeOptions", None)
    p.pop("customProperties", None)


def _timezone(d):
    prop(d, "time_hour")["physicalType"] = "TIMESTAMP"


def _optional_to_required(d):
    prop(d, "tailnum")["required"] = True


def _required_to_optional(d):
    prop(d, "dest")["required"] = False


def _key_change(d):
    p = prop(d, "dest")
    p.update(required=True, primaryKey=True, primaryKeyPosition=7)


def _allowed_values_added(d):
    rule(d, "origin", "flights_origin_nyc")["arguments"]["validValues"] = ["EWR", "JFK", "LGA", "SWF"]


def _allowed_values_removed(d):
    rule(d, "origin", "flights_origin_nyc")["arguments"]["validValues"] = ["EWR", "JFK"]


def _range_loosened(d):
    prop(d, "dep_delay")["logicalTypeOptions"]["maximum"] = 3000


def _range_tightened(d):
    prop(d, "dep_delay")["logicalTypeOptions"]["maximum"] = 1500


def _rule_removed(d):
    p = prop(d, "dep_delay")
    p["quality"] = []
    del p["logicalTypeOptions"]  # the range itself: without it, the rule would still be generated from it


def _severity_lowered(d):
    rule(d, "origin", "flights_origin_nyc")["severity"] = "warning"


def _source_name_added(d):
    custom(prop(d, "carrier"), "sourceNames", ["carrier_code"])


def _source_timezone_removed(d):
    prop(d, "time_hour").pop("customProperties")


def _text_sentinel_added(d):
    custom(prop(d, "arr_delay"), "nullSentinels", [-999, "NA"])


def _policy_changed(d):
    for p in d["customProperties"]:
        if p["property"] == "schemaEvolution":
            p["value"]["columns"] = "freeze"


def _partitioning_changed(d):
    for p in d["customProperties"]:
        if p["property"] == "partitioning":
            p["value"]["timezone"] = "UTC"


# (case, edit, expected (kind, where, breaking) set)
CASES = [
    ("add_column", _add_column, {("column_added", "terminal", False)}),
    ("remove_column", _remove_column, {("column_removed", "air_time", True),
                                        ("rule_removed", "flights_air_time_range", True),
                                        ("rule_removed", "flights_air_time_type", True)}),
    ("rename_column", _rename_column, {("column_renamed", "tail_number", True),
                                        ("source_names_added", "tail_number", False),
                                        ("source_names_removed", "tail_number", False),
                                        ("rule_added", "flights_tail_number_pattern", False),
                                        ("rule_removed", "flights_tailnum_pattern", True),
                                        ("rule_added", "flights_tail_number_in_planes", False),
                                        ("rule_removed", "flights_tailnum_in_planes", False)}),
    ("widen_integer", _widen_integer, {("type_widened", "flight", False)}),
    ("integer_to_number", _integer_to_number, {("type_widened", "dep_delay", False)}),
    ("narrow_integer", _narrow_integer, {("type_changed", "flight", True)}),
    ("to_string", _to_string, {("type_widened", "air_time", False),
                               ("rule_removed", "flights_air_time_range", True),
                               ("rule_removed", "flights_air_time_type", True)}),
    ("timezone", _timezone, {("timezone_changed", "time_hour", True)}),
    ("optional_to_required", _optional_to_required, {("nullability_changed", "tailnum", False),
                                                      ("rule_added", "flights_tailnum_required", False)}),
    ("required_to_optional", _required_to_optional, {("nullability_changed", "dest", True),
                                                      ("rule_removed", "flights_dest_required", True)}),
    ("key_change", _key_change, {("primary_key_changed", "primaryKey", True)}),
    ("allowed_values_added", _allowed_values_added, {("allowed_values_added", "flights_origin_nyc", True)}),
    ("allowed_values_removed", _allowed_values_removed, {("allowed_values_removed", "flights_origin_nyc", False)}),
    ("range_loosened", _range_loosened, {("range_changed", "flights_dep_delay_range", True)}),
    ("range_tightened", _range_tightened, {("range_changed", "flights_dep_delay_range", False)}),
    ("rule_removed", _rule_removed, {("rule_removed", "flights_dep_delay_range", True)}),
    ("severity_lowered", _severity_lowered, {("severity_changed", "flights_origin_nyc", True)}),
    ("source_name_added", _source_name_added, {("source_names_added", "carrier", False)}),
    ("source_timezone_removed", _source_timezone_removed, {("source_timezone_changed", "time_hour", False)}),
    ("text_sentinel_added", _text_sentinel_added, {("null_sentinels_changed", "arr_delay", False)}),
    ("policy_changed", _policy_changed, {("policy_changed", "schemaEvolution.columns", False)}),
    ("partitioning_changed", _partitioning_changed, {("partitioning_changed", "partitioning", True)}),
]


def write(tmp_path: Path, name: str, doc: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "flights.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def shipped():
    return yaml.safe_load((CONTRACTS_DIR / "flights.yaml").read_text())


@pytest.mark.parametrize("case,edit,expected", CASES, ids=[c[0] for c in CASES])
def test_diff_grades_each_change(tmp_path, shipped, case, edit, expected, capsys):
    old = write(tmp_path, "old", shipped)
    edit(shipped)
    new = write(tmp_path, "new", shipped)
    got = {(c.kind, c.where, c.breaking) for c in diff(load_contract(old), load_contract(new))}
    assert got == expected
    breaking = any(b for _, _, b in expected)
    assert main(["contracts", "diff", str(old), str(new)]) == (1 if breaking else 0)
    out = capsys.readouterr().out
    assert ("BREAKING" in out) == breaking and "raise the major version" in out if breaking else "none breaking" in out
    if breaking:  # the same change with the major version raised is accepted
        shipped["version"] = "2.0.0"
        major = write(tmp_path, "major", shipped)
        assert main(["contracts", "diff", str(old), str(major)]) == 0
        assert "accepted: major version raised" in capsys.readouterr().out


def test_identical_contracts_have_no_changes(tmp_path, shipped, capsys):
    old = write(tmp_path, "old", shipped)
    assert diff(load_contract(old), load_contract(old)) == []
    assert main(["contracts", "diff", str(old), str(old)]) == 0
    assert "0 change(s), none breaking" in capsys.readouterr().out


def test_lint_passes_the_shipped_contracts_and_names_the_broken_line(tmp_path, shipped, capsys):
    assert main(["contracts", "lint"]) == 0
    assert "5 contract(s), 0 failing" in capsys.readouterr().out
    for p in shipped["customProperties"]:
        if p["property"] == "schemaEvolution":
            p["value"]["primaryKey"] = "discard_everything"
    bad = write(tmp_path, "bad", shipped)
    assert main(["contracts", "lint", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:" in out and "schemaEvolution.primaryKey = 'discard_everything'" in out and "1 failing" in out
    del prop(shipped, "origin")["required"]  # a key column must be required
    assert main(["contracts", "lint", str(write(tmp_path, "bad2", shipped))]) == 1
    assert "must be required" in capsys.readouterr().out
