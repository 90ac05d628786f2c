"""Other ODCS tools accept plumbline's contracts: each is validated against the schema of the
apiVersion it declares, passes datacontract-cli's lint, and keeps its ranges where ODCS puts them."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from contracts.loader import CONTRACTS_DIR, SUPPORTED_API_VERSIONS, ContractError, load_contract

CONTRACT_FILES = sorted(CONTRACTS_DIR.glob("*.yaml"))
IDS = [f.stem for f in CONTRACT_FILES]
REPO = Path(__file__).resolve().parents[2]
DATACONTRACT = Path(sys.executable).parent / "datacontract"  # datacontract-cli, from the test extra


def flights() -> dict:
    return yaml.safe_load((CONTRACTS_DIR / "flights.yaml").read_text())


def prop(d: dict, name: str) -> tuple[int, dict]:
    return next((i, p) for i, p in enumerate(d["schema"][0]["properties"]) if p["name"] == name)


def write(tmp_path: Path, d: dict) -> Path:
    file = tmp_path / f"{d['name']}.yaml"
    file.write_text(yaml.safe_dump(d, sort_keys=False))
    return file


def planes() -> dict:
    return yaml.safe_load((CONTRACTS_DIR / "planes.yaml").read_text())


def older(d: dict, version: str) -> dict:
    """The same contract in an earlier ODCS form: custom properties without vendor (v3.2), a
    quality rule's `rule` for `metric` and a bare list of team members (v3.0)."""
    def rewrite(node):
        if isinstance(node, dict):
            if "property" in node and "value" in node:
                node.pop("vendor", None)
            if version.startswith("v3.0") and "metric" in node:
                node["rule"] = node.pop("metric")
            for v in node.values():
                rewrite(v)
        elif isinstance(node, list):
            for v in node:
                rewrite(v)
    rewrite(d)
    if version.startswith("v3.0"):
        d["team"] = d["team"]["members"]
    d["apiVersion"] = version
    return d


# ------------------------------------------------------------------------------ datacontract-cli


def _lint(path: Path, out: Path) -> tuple[int, str, dict]:
    proc = subprocess.run([str(DATACONTRACT), "lint", str(path), "--output-format", "json", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(out.read_text()) if out.exists() else {}


@pytest.fixture(scope="module")
def lint_results(tmp_path_factory) -> dict[str, tuple[int, str, dict]]:
    """datacontract lint on every shipped contract, run side by side (each CLI start costs seconds)."""
    assert DATACONTRACT.exists(), f"{DATACONTRACT} missing: install the test extra (pip install -e '.[test]')"
    out = tmp_path_factory.mktemp("lint")
    with ThreadPoolExecutor(max_workers=len(CONTRACT_FILES)) as pool:
        results = pool.map(lambda f: _lint(f, out / f"{f.stem}.json"), CONTRACT_FILES)
        return dict(zip(IDS, results))


@pytest.mark.parametrize("name", IDS)
def test_shipped_contract_passes_datacontract_lint(name, lint_results):
    code, output, report = lint_results[name]
    assert code == 0, output
    problems = [(c["name"], c["reason"]) for c in report["checks"] if c["result"] != "passed"]
    assert report["result"] == "passed" and not problems, problems  # warnings are rules the tool could not test
    declared = yaml.safe_load((CONTRACTS_DIR / f"{name}.yaml").read_text())["apiVersion"]
    assert f"valid against ODCS {declared}" in " ".join(c["name"] for c in report["checks"])


# ------------------------------------------------------------------------------ the declared version


def test_a_field_newer_than_the_declared_version_is_refused(tmp_path):
    d = planes()
    d["apiVersion"] = "v3.1.0"  # customProperties[].vendor exists only from v3.2.0
    file = write(tmp_path, d)
    with pytest.raises(ContractError) as info:
        load_contract(file)
    err = info.value
    assert err.file == str(file) and err.path.startswith("customProperties[0]")
    assert "'vendor' was unexpected" in err.problem and "ODCS v3.1.0" in err.problem, err
    assert err.problem.endswith("valid ODCS v3.2.0: declare apiVersion: v3.2.0"), err  # the one-line fix


@pytest.mark.parametrize("version", ["v3.0.2", "v3.1.0"])
def test_an_older_version_in_its_own_form_loads_the_same(tmp_path, version):
    shipped = load_contract(CONTRACTS_DIR / "planes.yaml")
    assert older(planes(), version)["apiVersion"] == version
    got = load_contract(write(tmp_path, older(planes(), version)))
    assert (got.columns, got.rules, got.owners, got.schema_evolution) == \
        (shipped.columns, shipped.rules, shipped.owners, shipped.schema_evolution)
    with pytest.raises(ContractError, match=f"ODCS {version}"):  # and the shipped form is not that version
        load_contract(write(tmp_path, {**planes(), "apiVersion": version}))


@pytest.mark.parametrize("version", ["v2.2.2", "v3.3.0", ["v3.2.0"], None])
def test_an_unsupported_api_version_names_the_file_and_the_supported_ones(tmp_path, version):
    d = flights()
    if version is None:
        del d["apiVersion"]
    else:
        d["apiVersion"] = version
    file = write(tmp_path, d)
    with pytest.raises(ContractError) as info:
        load_contract(file)
    message = str(info.value)
    assert str(file) in message and info.value.path == ("apiVersion" if version else "")
    assert all(v in message for v in SUPPORTED_API_VERSIONS), message


def test_shipped_contracts_declare_a_supported_version():
    for f in CONTRACT_FILES:
        assert yaml.safe_load(f.read_text())["apiVersion"] in SUPPORTED_API_VERSIONS, f


# ------------------------------------------------------------------------------ ranges


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=IDS)
def test_every_range_rule_sits_in_logical_type_options(path):
    data = yaml.safe_load(path.read_text())
    options = {p["name"]: p.get("logicalTypeOptions") or {} for p in data["schema"][0]["properties"]}
    for rule in (r for r in load_contract(path).rules if r.kind == "range"):
        assert (options[rule.column].get("minimum"), options[rule.column].get("maximum")) == (rule.minimum, rule.maximum), rule.id


def test_the_shipped_ranges_are_all_in_logical_type_options():
    assert sum(r.kind == "range" for f in CONTRACT_FILES for r in load_contract(f).rules) == 28


def test_a_range_only_in_logical_type_options_is_enforced(tmp_path):
    d = flights()
    i, p = prop(d, "dep_delay")
    p["quality"] = []
    p["logicalTypeOptions"] = {"minimum": -60, "maximum": 600}
    rules = {r.id: r for r in load_contract(write(tmp_path, d)).rules}
    rule = rules["flights_dep_delay_range"]
    assert (rule.kind, rule.column, rule.minimum, rule.maximum, rule.severity) == ("range", "dep_delay", -60, 600, "error")


def test_the_older_range_arguments_still_load_and_must_agree_with_logical_type_options(tmp_path):
    d = flights()
    i, p = prop(d, "dep_delay")
    p["quality"] = [{"id": "flights_dep_delay_range", "metric": "invalidValues", "mustBe": 0, "severity": "warning",
                     "arguments": {"minimum": -120, "maximum": 1800}}]
    p["logicalTypeOptions"] = {"minimum": -120, "maximum": 1800}
    rule = {r.id: r for r in load_contract(write(tmp_path, d)).rules}["flights_dep_delay_range"]
    assert (rule.minimum, rule.maximum, rule.severity) == (-120, 1800, "warning")

    p["logicalTypeOptions"] = {"minimum": -120, "maximum": 2000}
    file = write(tmp_path, d)
    with pytest.raises(ContractError) as info:
        load_contract(file)
    err = info.value
    assert err.path == f"schema[0].properties[{i}].quality[0].arguments"
    assert "maximum 1800" in err.problem and "logicalTypeOptions" in err.problem and "2000" in err.problem, err
    assert "arguments:" in file.read_text().splitlines()[err.line - 1]


def test_a_range_rule_needs_a_range(tmp_path):
    d = flights()
    i, p = prop(d, "dep_delay")
    p.pop("logicalTypeOptions", None)
    p["quality"] = [{"id": "flights_dep_delay_range", "type": "custom", "engine": "plumbline", "implementation": "range"}]
    with pytest.raises(ContractError) as info:
        load_contract(write(tmp_path, d))
    assert info.value.path == f"schema[0].properties[{i}].quality[0]"
    assert "logicalTypeOptions" in info.value.problem and "minimum" in info.value.problem


@pytest.mark.parametrize("option, value", [("exclusiveMaximum", 1800), ("multipleOf", 5)])
def test_a_logical_type_option_plumbline_does_not_enforce_is_refused(tmp_path, option, value):
    d = flights()
    i, p = prop(d, "dep_delay")
    p.setdefault("logicalTypeOptions", {})[option] = value
    with pytest.raises(ContractError) as info:
        load_contract(write(tmp_path, d))
    assert info.value.path == f"schema[0].properties[{i}].logicalTypeOptions.{option}"
    assert "does not enforce" in info.value.problem


def test_plumbline_contracts_lint_checks_the_declared_version(tmp_path):
    d = flights()
    d["apiVersion"] = "v3.1.0"
    file = write(tmp_path, d)
    out = subprocess.run([sys.executable, "-m", "orchestration.ops.cli", "contracts", "lint", str(file)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"FAIL  {file}" in out.stdout and "'vendor' was unexpected" in out.stdout
