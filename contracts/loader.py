"""Load ODCS v3 contracts: validate against the standard's JSON schema, parse with its model,
check plumbline's own rules, and compile to contracts.model.Contract.

Every failure is a ContractError that names the file, the path inside the YAML (with its line)
and what is wrong, so the fix is one edit away.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from contracts.model import (
    ALLOWED_PHYSICAL,
    EVOLUTION_MODES,
    LOGICAL_TO_DUCKDB,
    SEVERITIES,
    Column,
    Contract,
    Partitioning,
    Rule,
)

CONTRACTS_DIR = Path(__file__).parent
VENDOR = "plumbline"
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")


class ContractError(ValueError):
    def __init__(self, file: str | Path, path: str, problem: str, line: int | None = None):
        self.file, self.path, self.problem, self.line = str(file), path, problem, line
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: contract invalid at '{path or '<root>'}': {problem}")


def _json_schema() -> dict:
    text = importlib.resources.files("open_data_contract_standard").joinpath("schema.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = _json_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _line_index(text: str) -> dict[tuple, int]:
    """Map every YAML path (tuple of keys/indices) to its 1-based line, for error messages."""
    index: dict[tuple, int] = {}

    def walk(node, path):
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return index


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _custom(props, name):
    for p in props or ():
        if p.property == name:
            return p.value
    return None


def _duration(value, file, path) -> dt.timedelta:
    m = DURATION.match(str(value))
    if not m or not any(m.groups()):
        raise ContractError(file, path, f"'{value}' is not an ISO-8601 duration like P30D or PT6H")
    d, h, mi = (int(g or 0) for g in m.groups())
    return dt.timedelta(days=d, hours=h, minutes=mi)


def load_contract(path: str | Path) -> Contract:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(path, "", f"cannot read the file: {e}") from e
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ContractError(path, "", f"not valid YAML: {e}", line + 1 if line is not None else None) from e
    if not isinstance(data, dict):
        raise ContractError(path, "", "expected a YAML mapping with apiVersion, kind, id, version")
    lines = _line_index(text)

    errors = sorted(_validator().iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        worst = max(errors, key=lambda e: len(e.absolute_path))  # the deepest error is the most specific
        loc = tuple(worst.absolute_path)
        raise ContractError(path, _dotted(loc), f"{worst.message} (ODCS JSON schema rule '{worst.validator}')", _nearest_line(lines, loc))

    model = OpenDataContractStandard(**data)
    return _compile(model, path, lines)


def _nearest_line(lines: dict, loc: tuple) -> int | None:
    while loc not in lines and loc:
        loc = loc[:-1]
    return lines.get(loc)


def _compile(model: OpenDataContractStandard, file: Path, lines: dict) -> Contract:
    def fail(loc: tuple, problem: str):
        raise ContractError(file, _dotted(loc), problem, _nearest_line(lines, loc))

    if not model.schema_ or len(model.schema_) != 1:
        fail(("schema",), "plumbline expects exactly one schema object (the table this contract governs)")
    obj = model.schema_[0]
    if not IDENTIFIER.match(model.name or ""):
        fail(("name",), "name must be a lowercase identifier (letters, digits, _): it names the source and the table")

    columns: list[Column] = []
    rules: list[Rule] = []
    for i, prop in enumerate(obj.properties or ()):
        loc = ("schema", 0, "properties", i)
        if not IDENTIFIER.match(prop.name or ""):
            fail(loc + ("name",), f"column name {prop.name!r} must be a lowercase identifier")
        if prop.logicalType not in LOGICAL_TO_DUCKDB:
            fail(loc + ("logicalType",), f"logicalType must be one of {sorted(LOGICAL_TO_DUCKDB)}")
        physical = (prop.physicalType or LOGICAL_TO_DUCKDB[prop.logicalType]).upper()
        if physical not in ALLOWED_PHYSICAL[prop.logicalType]:
            fail(loc + ("physicalType",), f"physicalType {physical} does not fit logicalType {prop.logicalType}; use one of {sorted(ALLOWED_PHYSICAL[prop.logicalType])}")
        if prop.primaryKey and not prop.required:
            fail(loc + ("required",), f"primary key column '{prop.name}' must be required: true")
        sentinels = _custom(prop.customProperties, "nullSentinels") or []
        source_names = _custom(prop.customProperties, "sourceNames") or []
        columns.append(Column(
            name=prop.name,
            logical_type=prop.logicalType,
            duckdb_type=physical,
            required=bool(prop.required),
            primary_key_position=prop.primaryKeyPosition if prop.primaryKey else None,
            description=prop.description or "",
            null_sentinels=tuple(sentinels),
            source_names=tuple(source_names),
        ))
        if prop.required:
            rules.append(Rule(id=f"{model.name}_{prop.name}_required", kind="required", severity="error",
                              column=prop.name, description=f"{prop.name} is required"))
        if prop.logicalType != "string":
            rules.append(Rule(id=f"{model.name}_{prop.name}_type", kind="type", severity="error", column=prop.name,
                              description=f"{prop.name} parses as {prop.logicalType} ({physical})"))
        for j, q in enumerate(prop.quality or ()):
            rules.append(_quality_rule(q, prop.name, loc + ("quality", j), fail))
        for j, rel in enumerate(prop.relationships or ()):
            rules.append(_relationship_rule(rel, prop.name, loc + ("relationships", j), fail))
    for j, q in enumerate(obj.quality or ()):
        rules.append(_quality_rule(q, None, ("schema", 0, "quality", j), fail))

    names = [c.name for c in columns]
    ids = [r.id for r in rules]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        fail(("schema", 0), f"rule ids must be unique; repeated: {sorted(dupes)}")
    if not any(c.primary_key_position for c in columns):
        fail(("schema", 0, "properties"), "at least one column needs primaryKey: true (deduplication key)")

    partitioning = None
    part = _custom(model.customProperties, "partitioning")
    if part is not None:
        loc = ("customProperties",)
        event = tuple(part.get("eventDate") or ())
        if len(event) not in (1, 3) or any(c not in names for c in event):
            fail(loc, f"partitioning.eventDate must name one date column or [year, month, day] columns of the schema; got {list(event)}")
        if part.get("granularity", "day") != "day":
            fail(loc, "partitioning.granularity: only 'day' is supported")
        try:
            start = dt.date.fromisoformat(str(part["start"]))
            end = dt.date.fromisoformat(str(part["end"])) if part.get("end") else None
        except (KeyError, ValueError):
            fail(loc, "partitioning.start (and optional end) must be ISO dates like 2013-01-01")
        partitioning = Partitioning(event, "day", part.get("timezone", "UTC"), start, end)

    lateness = _custom(model.customProperties, "allowedLateness")
    evolution = _custom(model.customProperties, "schemaEvolution") or {}
    for key, mode in evolution.items():
        if mode not in EVOLUTION_MODES:
            fail(("customProperties",), f"schemaEvolution.{key} = {mode!r}; use one of {list(EVOLUTION_MODES)}")

    owners = tuple(m.username for m in (model.team.members or ()) if m.username and "@" in m.username) \
        if model.team and not isinstance(model.team, list) else ()
    sla = {p.property: (p.value, p.unit) for p in model.slaProperties or ()}
    description = (model.description.purpose if model.description else None) or obj.description or ""

    return Contract(
        name=model.name,
        id=model.id,
        version=model.version,
        path=str(file),
        description=description,
        table=f"raw.{model.name}",
        owners=owners,
        columns=tuple(columns),
        rules=tuple(rules),
        partitioning=partitioning,
        allowed_lateness=_duration(lateness, file, "customProperties.allowedLateness") if lateness else None,
        dead_letter=_custom(model.customProperties, "deadLetter") or {},
        schema_evolution=evolution,
        sla=sla,
    )


def _severity(q_severity, loc, fail) -> str:
    sev = (q_severity or "error").lower()
    if sev not in SEVERITIES:
        fail(loc + ("severity",), f"severity {q_severity!r} must be one of {list(SEVERITIES)}")
    return sev


def _quality_rule(q, column, loc, fail) -> Rule:
    if not q.id:
        fail(loc, "every quality rule needs an id: it names the rule in dead-letter rows and asset checks")
    sev = _severity(q.severity, loc, fail)
    args = q.arguments or {}
    metric = q.metric or q.rule
    if metric == "rowCount":
        if q.mustBeGreaterThan is None:
            fail(loc, "rowCount rules take mustBeGreaterThan")
        return Rule(id=q.id, kind="row_count", severity=sev, threshold=q.mustBeGreaterThan, description=q.description or "")
    if column is None:
        fail(loc, f"metric {metric!r} must sit on a property (column), not on the schema")
    if metric in ("nullValues", "missingValues"):
        return Rule(id=q.id, kind="not_null", severity=sev, column=column, description=q.description or f"{column} is not null")
    if metric == "invalidValues":
        if q.mustBe != 0:
            fail(loc, "invalidValues rules take mustBe: 0 (no invalid values allowed)")
        if "validValues" in args:
            return Rule(id=q.id, kind="allowed_values", severity=sev, column=column, values=tuple(args["validValues"]),
                        description=q.description or f"{column} in {args['validValues']}")
        if "pattern" in args:
            try:
                re.compile(args["pattern"])
            except re.error as e:
                fail(loc + ("arguments", "pattern"), f"not a valid regular expression: {e}")
            return Rule(id=q.id, kind="pattern", severity=sev, column=column, pattern=args["pattern"],
                        description=q.description or f"{column} matches {args['pattern']}")
        if "minimum" in args or "maximum" in args:
            lo, hi = args.get("minimum"), args.get("maximum")
            if not all(isinstance(v, (int, float)) for v in (lo, hi) if v is not None):
                fail(loc + ("arguments",), "minimum and maximum must be numbers")
            return Rule(id=q.id, kind="range", severity=sev, column=column, minimum=lo, maximum=hi,
                        description=q.description or f"{column} between {lo} and {hi}")
        fail(loc + ("arguments",), "invalidValues needs arguments validValues, pattern, or minimum/maximum")
    fail(loc, f"metric {metric!r} is not supported by plumbline; use nullValues, invalidValues or rowCount")


def _relationship_rule(rel, column, loc, fail) -> Rule:
    if not rel.id:
        fail(loc, "every relationship needs an id: it names the referential check")
    target = rel.to if isinstance(rel.to, str) else None
    if not target or target.count(".") != 1:
        fail(loc + ("to",), "plumbline supports single-column references written <source>.<column>")
    source, ref_col = target.split(".")
    sev = _severity(_custom(rel.customProperties, "severity") or "warning", loc, fail)
    return Rule(id=rel.id, kind="foreign_key", severity=sev, column=column, reference=(source, ref_col),
                description=f"{column} exists in {target}")


def contract_files(directory: Path = CONTRACTS_DIR) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


@lru_cache(maxsize=None)
def _load_all(directory: str) -> dict[str, Contract]:
    contracts = {}
    for f in contract_files(Path(directory)):
        c = load_contract(f)
        if c.name != f.stem:
            raise ContractError(f, "name", f"name {c.name!r} must equal the file name {f.stem!r}")
        contracts[c.name] = c
    return contracts


def load_contracts(directory: Path = CONTRACTS_DIR) -> dict[str, Contract]:
    """Every contract in the folder, keyed by source name (cached per process)."""
    return _load_all(str(directory))
