"""plumbline's contracts are valid ODCS v3, and a broken contract fails loading with an error that
names the file, the path inside the YAML, its line and what is wrong."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from contracts.loader import CONTRACTS_DIR, ContractError, _json_schema, load_contract, load_contracts

CONTRACT_FILES = sorted(CONTRACTS_DIR.glob("*.yaml"))
IDS = [f.stem for f in CONTRACT_FILES]


def odcs_validator(api_version: str) -> jsonschema.Draft201909Validator:
    """The JSON schema of the ODCS version a contract declares (the package's own for v3.2.0)."""
    schema = _json_schema(api_version)
    if api_version == "v3.2.0":
        assert schema == json.loads(importlib.resources.files("open_data_contract_standard").joinpath("schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2019-09/schema"
    jsonschema.Draft201909Validator.check_schema(schema)
    # Formats checked too (dates, URIs), so a malformed value cannot pass as a plain string.
    return jsonschema.Draft201909Validator(schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER)


def test_there_are_contracts():
    assert {"flights", "weather", "planes", "airlines", "airports"} <= set(IDS)


# ------------------------------------------------------------------------------ valid contracts


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=IDS)
def test_contract_validates_against_the_odcs_json_schema(path):
    data = yaml.safe_load(path.read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in odcs_validator(data["apiVersion"]).iter_errors(data)]
    assert not errors, errors


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=IDS)
def test_contract_loads_with_the_odcs_model(path):
    model = OpenDataContractStandard.model_validate(yaml.safe_load(path.read_text()))
    assert model.kind == "DataContract"
    assert model.apiVersion.startswith("v3.")
    assert model.name == path.stem
    assert len(model.schema_) == 1


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=IDS)
def test_contract_loads_with_the_plumbline_loader(path):
    contract = load_contract(path)
    assert contract.name == path.stem
    assert contract.table == f"raw.{path.stem}"
    assert contract.primary_key
    assert contract.owners
    ids = {r.id for r in contract.rules}
    for col in contract.columns:
        assert (f"{contract.name}_{col.name}_required" in ids) is col.required
        assert (f"{contract.name}_{col.name}_type" in ids) is (col.logical_type != "string")
    for rule in contract.rules:
        assert rule.severity in ("error", "warning", "info"), rule.id


def test_load_contracts_reads_the_whole_folder():
    contracts = load_contracts()
    assert sorted(contracts) == sorted(IDS)
    for c in contracts.values():
        for rule in c.rules:
            if rule.kind == "foreign_key":
                source, column = rule.reference
                assert column in contracts[source].column_names, rule.id


# ------------------------------------------------------------------------------ broken contracts


def base() -> dict:
    return yaml.safe_load((CONTRACTS_DIR / "flights.yaml").read_text())


def prop(d: dict, name: str) -> tuple[int, dict]:
    return next((i, p) for i, p in enumerate(d["schema"][0]["properties"]) if p["name"] == name)


def custom(d: dict, name: str) -> tuple[int, dict]:
    return next((i, p) for i, p in enumerate(d["customProperties"]) if p["property"] == name)


@dataclass
class Broken:
    """A mutation of flights.yaml; it returns the expected YAML path and a token on the reported line."""

    name: str
    mutate: Callable[[dict], tuple[str, str]]
    problem: str  # a phrase the message must contain


def _wrong_logical_type(d):
    i, p = prop(d, "dep_time")
    p["logicalType"] = "integr"
    return f"schema[0].properties[{i}].logicalType", "logicalType: integr"


def _unsupported_logical_type(d):
    i, p = prop(d, "dep_time")
    p["logicalType"] = "array"  # valid ODCS, but plumbline has no column type for it
    del p["logicalTypeOptions"]  # an integer's options, which the schema refuses on an array
    return f"schema[0].properties[{i}].logicalType", "logicalType: array"


def _physical_type_mismatch(d):
    i, p = prop(d, "dep_time")
    p["physicalType"] = "VARCHAR"
    return f"schema[0].properties[{i}].physicalType", "physicalType: VARCHAR"


def _missing_id(d):
    del d["id"]
    return "", "apiVersion"


def _unknown_top_level_key(d):
    d["owner"] = "flight-data"
    return "", "apiVersion"


def _quality_rule_without_id(d):
    i, p = prop(d, "dep_time")
    del p["quality"][0]["id"]
    return f"schema[0].properties[{i}].quality[0]", "type: custom"


def _rule_id_not_a_check_name(d):
    i, p = prop(d, "dep_time")
    p["quality"][0]["id"] = "flights-dep-time-clock"
    return f"schema[0].properties[{i}].quality[0].id", "flights-dep-time-clock"


def _primary_key_not_required(d):
    i, p = prop(d, "carrier")
    p["required"] = False
    return f"schema[0].properties[{i}].required", "required: false"


def _primary_key_without_position(d):
    i, p = prop(d, "carrier")
    del p["primaryKeyPosition"]
    return f"schema[0].properties[{i}].primaryKeyPosition", "name: carrier"


def _event_date_names_missing_column(d):
    i, c = custom(d, "partitioning")
    c["value"]["eventDate"] = ["year", "month", "dayofmonth"]
    return f"customProperties[{i}].value.eventDate", "eventDate"


def _partition_start_missing(d):
    i, c = custom(d, "partitioning")
    del c["value"]["start"]
    return f"customProperties[{i}].value.start", "value:"


def _unknown_timezone(d):
    i, c = custom(d, "partitioning")
    c["value"]["timezone"] = "New York"
    return f"customProperties[{i}].value.timezone", "timezone: New York"


def _invalid_evolution_mode(d):
    i, c = custom(d, "schemaEvolution")
    c["value"]["columns"] = "ignore"
    return f"customProperties[{i}].value.columns", "columns: ignore"


def _unknown_evolution_key(d):
    i, c = custom(d, "schemaEvolution")
    c["value"]["column"] = "freeze"
    return f"customProperties[{i}].value.column", "column: freeze"


def _lateness_not_a_duration(d):
    i, c = custom(d, "allowedLateness")
    c["value"] = "30 days"
    return f"customProperties[{i}].value", "value: 30 days"


def _coverage_past_the_partitions(d):
    d["customProperties"].append({"property": "sourceCoverage", "vendor": "plumbline", "value": {"end": "2014-01-01"},
                                  "description": "the source ends with the year"})
    return f"customProperties[{len(d['customProperties']) - 1}].value", "value:"


def _coverage_without_why(d):
    d["customProperties"].append({"property": "sourceCoverage", "vendor": "plumbline", "value": {"end": "2013-12-30"}})
    return f"customProperties[{len(d['customProperties']) - 1}].description", "sourceCoverage"


def _unimplemented_dedup_winner(d):
    i, c = custom(d, "deduplication")
    c["value"]["winner"] = "first_delivery"
    return f"customProperties[{i}].value", "value:"


def _pattern_not_a_regex(d):
    i, p = prop(d, "carrier")
    p["quality"][0]["arguments"]["pattern"] = "^[A-Z0-9{2}$"
    return f"schema[0].properties[{i}].quality[0].arguments.pattern", "pattern:"


def _valid_values_not_a_list(d):
    i, p = prop(d, "origin")
    p["quality"][0]["arguments"]["validValues"] = "EWR"
    return f"schema[0].properties[{i}].quality[0].arguments.validValues", "validValues: EWR"


def _invalid_values_without_arguments(d):
    i, p = prop(d, "origin")
    del p["quality"][0]["arguments"]
    return f"schema[0].properties[{i}].quality[0].arguments", "id: flights_origin_nyc"


def _unsupported_metric(d):
    i, p = prop(d, "origin")
    p["quality"][0]["metric"] = "duplicateValues"
    return f"schema[0].properties[{i}].quality[0]", "id: flights_origin_nyc"


def _unknown_severity(d):
    i, p = prop(d, "origin")
    p["quality"][0]["severity"] = "fatal"
    return f"schema[0].properties[{i}].quality[0].severity", "severity: fatal"


def _unknown_relationship_severity(d):
    i, p = prop(d, "carrier")
    p["relationships"][0]["customProperties"][0]["value"] = "critical"
    return f"schema[0].properties[{i}].relationships[0].customProperties[0].value", "value: critical"


def _duplicated_rule_id(d):
    first, _ = prop(d, "dep_time")
    i, p = prop(d, "sched_dep_time")
    p["quality"][0]["id"] = "flights_dep_time_clock"
    return f"schema[0].properties[{i}].quality[0]", "id: flights_dep_time_clock"


def _duplicated_generated_rule_id(d):
    i, p = prop(d, "dep_time")
    p["quality"][0]["id"] = "flights_year_required"  # collides with the id plumbline generates for year
    return f"schema[0].properties[{i}].quality[0]", "id: flights_year_required"


def _duplicated_column(d):
    i, p = prop(d, "dest")  # declared after origin, so the second declaration is reported
    p["name"] = "origin"
    return f"schema[0].properties[{i}].name", "name: origin"


def _reserved_column_name(d):
    i, p = prop(d, "tailnum")
    p["name"] = "_extra"
    return f"schema[0].properties[{i}].name", "name: _extra"


def _null_sentinels_not_a_list(d):
    i, p = prop(d, "dep_delay")
    p["customProperties"][0]["value"] = -999
    return f"schema[0].properties[{i}].customProperties[0].value", "value: -999"


def _unknown_source_timezone(d):
    i, p = prop(d, "time_hour")
    p["customProperties"][0]["value"] = "Mars/Olympus"
    return f"schema[0].properties[{i}].customProperties[0].value", "value:"


def _boolean_sentinel_on_numeric_column(d):
    # text sentinels ("NA") are allowed on numeric columns since a feed may send numbers as text
    i, p = prop(d, "dep_delay")
    p["customProperties"][0]["value"] = [-999, True]
    return f"schema[0].properties[{i}].customProperties[0].value", "value:"


BROKEN = [
    Broken("wrong_logical_type", _wrong_logical_type, "is not one of"),
    Broken("unsupported_logical_type", _unsupported_logical_type, "logicalType must be one of"),
    Broken("physical_type_mismatch", _physical_type_mismatch, "does not fit logicalType integer"),
    Broken("missing_id", _missing_id, "'id' is a required property"),
    Broken("unknown_top_level_key", _unknown_top_level_key, "'owner' was unexpected"),
    Broken("quality_rule_without_id", _quality_rule_without_id, "every quality rule needs an id"),
    Broken("rule_id_not_a_check_name", _rule_id_not_a_check_name, "only letters, digits and _"),
    Broken("primary_key_not_required", _primary_key_not_required, "must be required: true"),
    Broken("primary_key_without_position", _primary_key_without_position, "needs primaryKeyPosition"),
    Broken("event_date_names_missing_column", _event_date_names_missing_column, "dayofmonth"),
    Broken("partition_start_missing", _partition_start_missing, "partitioning.start"),
    Broken("unknown_timezone", _unknown_timezone, "not an IANA time zone"),
    Broken("invalid_evolution_mode", _invalid_evolution_mode, "schemaEvolution.columns = 'ignore'"),
    Broken("unknown_evolution_key", _unknown_evolution_key, "schemaEvolution.column is unknown"),
    Broken("lateness_not_a_duration", _lateness_not_a_duration, "not an ISO-8601 duration"),
    Broken("unimplemented_dedup_winner", _unimplemented_dedup_winner, "only winner: latest_delivery"),
    Broken("coverage_past_the_partitions", _coverage_past_the_partitions, "must lie within the partitions 2013-01-01..2013-12-31"),
    Broken("coverage_without_why", _coverage_without_why, "sourceCoverage needs a description"),
    Broken("pattern_not_a_regex", _pattern_not_a_regex, "not a valid regular expression"),
    Broken("valid_values_not_a_list", _valid_values_not_a_list, "validValues must be a list"),
    Broken("invalid_values_without_arguments", _invalid_values_without_arguments, "invalidValues needs arguments"),
    Broken("unsupported_metric", _unsupported_metric, "'duplicateValues' is not supported"),
    Broken("unknown_severity", _unknown_severity, "severity 'fatal' must be one of"),
    Broken("unknown_relationship_severity", _unknown_relationship_severity, "severity 'critical' must be one of"),
    Broken("duplicated_rule_id", _duplicated_rule_id, "'flights_dep_time_clock' is already used at schema[0].properties[3].quality[0]"),
    Broken("duplicated_generated_rule_id", _duplicated_generated_rule_id, "'flights_year_required' is already used"),
    Broken("duplicated_column", _duplicated_column, "'origin' is declared twice"),
    Broken("reserved_column_name", _reserved_column_name, "reserved for plumbline"),
    Broken("null_sentinels_not_a_list", _null_sentinels_not_a_list, "nullSentinels must be a list"),
    Broken("unknown_source_timezone", _unknown_source_timezone, "sourceTimezone 'Mars/Olympus' is not an IANA time zone"),
    Broken("boolean_sentinel_on_numeric_column", _boolean_sentinel_on_numeric_column, "nullSentinels must be a list of str or int or float"),
]


def assert_names_everything(err: ContractError, file: Path, path: str, token: str, problem: str) -> None:
    message = str(err)
    assert err.file == str(file) and str(file) in message
    assert err.path == path
    assert f"'{path or '<root>'}'" in message
    assert problem in message, message
    assert err.line is not None, message
    assert f"{file}:{err.line}:" in message
    line_text = file.read_text().splitlines()[err.line - 1]
    assert token in line_text, (err.line, line_text, message)


@pytest.mark.parametrize("case", BROKEN, ids=[b.name for b in BROKEN])
def test_broken_contract_is_rejected_with_file_path_line_and_problem(tmp_path, case):
    d = base()
    path, token = case.mutate(d)
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    with pytest.raises(ContractError) as info:
        load_contract(file)
    assert_names_everything(info.value, file, path, token, case.problem)


def test_bad_yaml_syntax_is_rejected_at_its_line(tmp_path):
    text = (CONTRACTS_DIR / "flights.yaml").read_text()
    assert "\ndomain: aviation\n" in text
    file = tmp_path / "flights.yaml"
    file.write_text(text.replace("\ndomain: aviation\n", "\ndomain: aviation: nyc\n", 1))
    with pytest.raises(ContractError) as info:
        load_contract(file)
    assert_names_everything(info.value, file, "", "domain: aviation: nyc", "not valid YAML")


def test_broken_copies_are_otherwise_valid(tmp_path):
    """The unmodified dump loads, so each broken case fails for its one change only."""
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(base(), sort_keys=False))
    assert load_contract(file).name == "flights"


def copy_contracts(tmp_path: Path) -> Path:
    folder = tmp_path / "contracts"
    folder.mkdir()
    for f in CONTRACT_FILES:
        shutil.copy(f, folder / f.name)
    return folder


def test_name_must_match_the_file_name(tmp_path):
    folder = copy_contracts(tmp_path)
    d = base()
    d["name"] = "flight"
    (folder / "flights.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ContractError) as info:
        load_contracts(folder)
    assert_names_everything(info.value, folder / "flights.yaml", "name", "name: flight", "must equal the file name 'flights'")


def test_relationship_must_point_at_a_contract_column(tmp_path):
    folder = copy_contracts(tmp_path)
    d = base()
    i, p = prop(d, "carrier")
    p["relationships"][0]["to"] = "airlines.code"
    (folder / "flights.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ContractError) as info:
        load_contracts(folder)
    assert_names_everything(info.value, folder / "flights.yaml", f"schema[0].properties[{i}].relationships[0].to",
                            "to: airlines.code", "points at airlines.code")


def test_a_copied_folder_loads(tmp_path):
    assert sorted(load_contracts(copy_contracts(tmp_path))) == sorted(IDS)


def test_compiled_contracts_are_cached_until_a_file_changes(tmp_path):
    """Step processes read the compiled contracts from the cache; a changed contract is validated
    again (and refused when broken), a damaged cache file is rebuilt."""
    folder, cache = copy_contracts(tmp_path), tmp_path / "cache"
    load = load_contracts.__globals__["_load_all"].__wrapped__  # past the per-process cache, as a new process
    validated = load(str(folder), None)
    assert load(str(folder), str(cache)) == validated
    [stored] = cache.glob("contracts-*.pickle")
    assert load(str(folder), str(cache)) == validated and list(cache.glob("contracts-*.pickle")) == [stored]
    stored.write_bytes(b"damaged")
    assert load(str(folder), str(cache)) == validated and stored.read_bytes() != b"damaged"
    d = base()
    d["name"] = "flight"
    (folder / "flights.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ContractError, match="must equal the file name"):
        load(str(folder), str(cache))


# ------------------------------------------------------------------------------ what the loader reads


def test_other_vendors_custom_properties_are_ignored(tmp_path):
    d = base()
    d["customProperties"].insert(0, {"property": "partitioning", "vendor": "acme", "value": "hourly"})
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False))
    assert load_contract(file).partitioning == load_contract(CONTRACTS_DIR / "flights.yaml").partitioning


def test_deprecated_team_list_still_gives_owners(tmp_path):
    d = base()
    d["team"] = d["team"]["members"]
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False))
    assert load_contract(file).owners == ("flight-data@plumbline.dev",)


def test_single_event_date_column_and_source_names(tmp_path):
    d = base()
    i, c = custom(d, "partitioning")
    c["value"]["eventDate"] = "time_hour"
    _, p = prop(d, "dep_time")
    p["customProperties"] = [{"property": "sourceNames", "vendor": "plumbline", "value": ["DepTime", "dep_tm"]}]
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False))
    contract = load_contract(file)
    assert contract.partitioning.event_date == ("time_hour",)
    assert contract.column("dep_time").source_names == ("DepTime", "dep_tm")


def test_generated_rules_have_documented_ids():
    contract = load_contracts()["flights"]
    rules = {r.id: r for r in contract.rules}
    assert rules["flights_year_required"].kind == "required"
    assert rules["flights_year_type"].kind == "type"
    assert "flights_carrier_required" in rules and "flights_carrier_type" not in rules  # strings always parse
    assert rules["flights_carrier_in_airlines"].severity == "warning"
    assert rules["flights_tailnum_in_planes"].severity == "info"
    assert {r.id for r in contract.rejecting_rules()} == {r.id for r in contract.row_rules if r.severity == "error"}


def test_reject_tolerance_is_read_for_the_contract_and_per_rule(tmp_path):
    d = base()
    d["customProperties"].append({"property": "rejectTolerance", "vendor": "plumbline", "value": 0.002})
    i, p = prop(d, "dep_delay")
    p["quality"][0]["customProperties"] = [{"property": "rejectTolerance", "vendor": "plumbline", "value": 0.05}]
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False))
    contract = load_contract(file)
    rules = {r.id: r for r in contract.rules}
    assert contract.reject_tolerance == 0.002
    assert contract.tolerance(rules["flights_dep_delay_range"]) == 0.05
    assert contract.tolerance(rules["flights_arr_delay_range"]) == 0.002
    assert contract.tolerance(rules["flights_year_type"]) == 0.002
    shipped = load_contracts()["flights"]
    assert shipped.tolerance(next(r for r in shipped.rules if r.id == "flights_dep_delay_range")) == 0.01, "the default"


def _tolerance_above_one(d):
    d["customProperties"].append({"property": "rejectTolerance", "vendor": "plumbline", "value": 1.5})
    return f"customProperties[{len(d['customProperties']) - 1}].value", "value: 1.5"


def _rule_tolerance_as_text(d):
    i, p = prop(d, "dep_delay")
    p["quality"][0]["customProperties"] = [{"property": "rejectTolerance", "vendor": "plumbline", "value": "1%"}]
    return f"schema[0].properties[{i}].quality[0].customProperties[0].value", "value: 1%"


@pytest.mark.parametrize("mutate", [_tolerance_above_one, _rule_tolerance_as_text], ids=["above_one", "text"])
def test_a_bad_reject_tolerance_is_refused_naming_file_line_and_value(tmp_path, mutate):
    d = base()
    path, token = mutate(d)
    file = tmp_path / "flights.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    with pytest.raises(ContractError) as info:
        load_contract(file)
    assert_names_everything(info.value, file, path, token, "rejectTolerance must be a share of delivered rows from 0 to 1")


def test_where_a_source_ends_is_read_from_its_contract():
    import datetime as dt

    from orchestration import catalog

    contracts = load_contracts()
    weather = contracts["weather"].coverage
    assert (weather.start, weather.end) == (dt.date(2013, 1, 1), dt.date(2013, 12, 30)) and "18:00" in weather.why
    assert contracts["flights"].coverage is None and catalog.expected_partitions(contracts["flights"]) is None
    assert contracts["weather"].partitioning.end == dt.date(2014, 1, 1)  # the partitions still run to the year's end
    expected = catalog.expected_partitions(contracts["weather"])
    assert (expected["start"], expected["end"], expected["why"]) == ("2013-01-01", "2013-12-30", weather.why)
