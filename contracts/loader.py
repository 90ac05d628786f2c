"""Load ODCS v3 contracts: validate against the standard's JSON schema, parse with its model,
check plumbline's own rules, and compile to contracts.model.Contract.

Every failure is a ContractError that names the file, the path inside the YAML (with its line)
and what is wrong, so the fix is one edit away.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import pickle
import re
import tempfile
import zoneinfo
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from contracts.model import (
    ALLOWED_PHYSICAL,
    DEFAULT_REJECT_TOLERANCE,
    EVOLUTION_KEYS,
    EVOLUTION_MODES,
    LOGICAL_TO_DUCKDB,
    SEVERITIES,
    Column,
    Contract,
    Coverage,
    Partitioning,
    Restatement,
    Rule,
)

if TYPE_CHECKING:  # the validators load with the first contract: modules that only import this one (read commands) skip them
    import jsonschema
    from open_data_contract_standard.model import OpenDataContractStandard

# libyaml's loader when PyYAML has it: the contracts are read when the code location loads, and the
# C parser takes a third of the pure-Python one's time (same documents, same line marks).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CONTRACTS_DIR = Path(__file__).parent
VENDOR = "plumbline"
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RULE_ID = re.compile(r"^[A-Za-z0-9_]+$")  # rule ids name Dagster asset checks, which allow only these
RESERVED_PREFIX = "_"  # bronze and raw add _extra, _row_offset, _file_id, _source_file, ... to every table
DEAD_LETTER = {"rowRuleFailure": "dead_letter", "unreadableFile": "quarantine"}  # the only behaviour implemented
RANGE_OPTIONS = ("minimum", "maximum")  # the logicalTypeOptions plumbline enforces
DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")
# Each ODCS apiVersion plumbline reads -> the schema that defines it. v3.2.0's ships in the pinned
# open-data-contract-standard package, the earlier ones in contracts/schemas/ (see its README);
# v3.0.0 and v3.0.1 are the v3.0.2 grammar.
PACKAGE_SCHEMA = "v3.2.0"
SCHEMAS_DIR = CONTRACTS_DIR / "schemas"
SCHEMA_OF = {"v3.0.0": "v3.0.2", "v3.0.1": "v3.0.2", "v3.0.2": "v3.0.2", "v3.1.0": "v3.1.0", "v3.2.0": "v3.2.0"}
SUPPORTED_API_VERSIONS = tuple(SCHEMA_OF)


class ContractError(ValueError):
    def __init__(self, file: str | Path, path: str, problem: str, line: int | None = None):
        self.file, self.path, self.problem, self.line = str(file), path, problem, line
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: contract invalid at '{path or '<root>'}': {problem}")


def _json_schema(api_version: str) -> dict:
    """The ODCS JSON schema that defines `api_version` (one of SUPPORTED_API_VERSIONS)."""
    name = SCHEMA_OF[api_version]
    if name == PACKAGE_SCHEMA:
        text = importlib.resources.files("open_data_contract_standard").joinpath("schema.json").read_text()
    else:
        text = (SCHEMAS_DIR / f"odcs-{name}.schema.json").read_text()
    schema = json.loads(text)
    if schema["properties"]["apiVersion"].get("default") != name:  # a package upgrade must move the table above
        raise RuntimeError(f"the ODCS schema for {name} declares apiVersion {schema['properties']['apiVersion'].get('default')}")
    return schema


@lru_cache(maxsize=None)
def _validator(api_version: str) -> jsonschema.protocols.Validator:
    import jsonschema

    schema = _json_schema(api_version)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def line_index(text: str) -> dict[tuple, int]:
    """Map every YAML path (tuple of keys/indices) to its 1-based line, for error messages."""
    index: dict[tuple, int] = {}

    def walk(node, path):
        # a key's own line wins over its block value's, which starts on the next line
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text, Loader=YAML_LOADER)
    if root is not None:
        walk(root, ())
    return index


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _custom_at(props, name) -> tuple[int | None, object]:
    """(index, value) of plumbline's custom property `name`; other vendors' properties are not ours."""
    for i, p in enumerate(props or ()):
        if p.property == name and p.vendor in (None, VENDOR):
            return i, p.value
    return None, None


def _coverage(props, partitioning: Partitioning | None, fail) -> Coverage | None:
    """customProperties.sourceCoverage: the first and last day (inclusive, either may be left out) the
    source has data for, inside the partitions; its description says why the rest stay empty."""
    i, value = _custom_at(props, "sourceCoverage")
    if i is None:
        return None
    loc = ("customProperties", i, "value")
    if partitioning is None:
        fail(loc, "sourceCoverage says which daily partitions the source fills: the contract needs partitioning")
    if not isinstance(value, dict) or not (value.keys() & {"start", "end"}) or value.keys() - {"start", "end"}:
        fail(loc, f"sourceCoverage must be a mapping with start and/or end (ISO dates), got {value!r}")
    try:
        start = dt.date.fromisoformat(str(value["start"])) if "start" in value else partitioning.start
        end = dt.date.fromisoformat(str(value["end"])) if "end" in value else None
    except ValueError:
        fail(loc, f"sourceCoverage start and end must be ISO dates like 2013-12-30, got {value!r}")
    last = partitioning.end - dt.timedelta(days=1) if partitioning.end else None
    if start < partitioning.start or (end is not None and (end < start or (last is not None and end > last))):
        fail(loc, f"sourceCoverage {start}..{end or 'open'} must lie within the partitions {partitioning.start}.."
                  f"{last or 'open'} (end inclusive)")
    why = (props[i].description or "").strip()
    if not why:
        fail(("customProperties", i, "description"), "sourceCoverage needs a description: why the source has no data "
                                                     "outside it (it is shown beside the empty partitions)")
    return Coverage(start, end, why)


def _custom(props, name):
    return _custom_at(props, name)[1]


def _custom_list(props, name, loc, fail, types) -> list:
    """A property-level list custom property; a scalar would otherwise be split into characters."""
    i, value = _custom_at(props, name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
        kinds = " or ".join(t.__name__ for t in types)
        fail(loc + ("customProperties", i, "value"), f"{name} must be a list of {kinds}, got {value!r}")
    return value


def _tolerance(props, loc, fail) -> float | None:
    """rejectTolerance: a share of delivered rows, 0 (no row may be rejected) to 1."""
    i, value = _custom_at(props, "rejectTolerance")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        fail(loc + ("customProperties", i, "value"),
             f"rejectTolerance must be a share of delivered rows from 0 to 1 (0.01 is 1%), got {value!r}")
    return float(value)


def _duration(value, loc, fail) -> dt.timedelta:
    m = DURATION.match(str(value))
    if not m or not any(m.groups()):
        fail(loc, f"'{value}' is not an ISO-8601 duration like P30D or PT6H")
    d, h, mi = (int(g or 0) for g in m.groups())
    return dt.timedelta(days=d, hours=h, minutes=mi)


def load_contract(path: str | Path) -> Contract:
    import pydantic
    from open_data_contract_standard.model import OpenDataContractStandard

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=YAML_LOADER)
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(path, "", f"cannot read the file: {e}") from e
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ContractError(path, "", f"not valid YAML: {e}", line + 1 if line is not None else None) from e
    if not isinstance(data, dict):
        raise ContractError(path, "", "expected a YAML mapping with apiVersion, kind, id, version")
    lines = line_index(text)

    # validated against the version it declares: another ODCS tool reads it by that version too
    version = data.get("apiVersion")
    if not isinstance(version, str) or version not in SCHEMA_OF:
        loc = ("apiVersion",) if "apiVersion" in data else ()
        problem = (f"apiVersion {version!r} is not supported" if loc else "apiVersion is missing")
        raise ContractError(path, _dotted(loc), f"{problem}; declare one of {', '.join(SUPPORTED_API_VERSIONS)}",
                            _nearest_line(lines, loc) or 1)
    errors = sorted(_validator(version).iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        worst = max(errors, key=lambda e: len(e.absolute_path))  # the deepest error is the most specific
        loc = tuple(worst.absolute_path)
        problem = f"{worst.message} (ODCS {version} JSON schema rule '{worst.validator}')"
        newest = SUPPORTED_API_VERSIONS[-1]
        if version != newest and _validator(newest).is_valid({**data, "apiVersion": newest}):
            problem += f"; the document is valid ODCS {newest}: declare apiVersion: {newest}"
        raise ContractError(path, _dotted(loc), problem, _nearest_line(lines, loc))

    try:
        model = OpenDataContractStandard(**data)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        loc = tuple(first["loc"])
        raise ContractError(path, _dotted(loc), f"{first['msg']} (ODCS model)", _nearest_line(lines, loc)) from e
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
    rules: list[tuple[Rule, tuple]] = []  # with where each rule is declared, to point at duplicates
    for i, prop in enumerate(obj.properties or ()):
        loc = ("schema", 0, "properties", i)
        if not IDENTIFIER.match(prop.name or ""):
            fail(loc + ("name",), f"column name {prop.name!r} must be a lowercase identifier")
        if prop.name.startswith(RESERVED_PREFIX):
            fail(loc + ("name",), f"column name {prop.name!r} starts with '_', reserved for plumbline's provenance columns")
        if prop.name in (c.name for c in columns):
            fail(loc + ("name",), f"column {prop.name!r} is declared twice")
        if prop.logicalType not in LOGICAL_TO_DUCKDB:
            fail(loc + ("logicalType",), f"logicalType must be one of {sorted(LOGICAL_TO_DUCKDB)}")
        physical = (prop.physicalType or LOGICAL_TO_DUCKDB[prop.logicalType]).upper()
        if physical not in ALLOWED_PHYSICAL[prop.logicalType]:
            fail(loc + ("physicalType",), f"physicalType {physical} does not fit logicalType {prop.logicalType}; use one of {sorted(ALLOWED_PHYSICAL[prop.logicalType])}")
        if prop.primaryKey and not prop.required:
            fail(loc + ("required",), f"primary key column '{prop.name}' must be required: true")
        if prop.primaryKey and (prop.primaryKeyPosition is None or prop.primaryKeyPosition < 1):
            fail(loc + ("primaryKeyPosition",), f"primary key column '{prop.name}' needs primaryKeyPosition: 1, 2, ... (its place in the key)")
        # conform.py compares a numeric column's number sentinels as DOUBLE and its text sentinels ("NA") as text
        sentinels = _custom_list(prop.customProperties, "nullSentinels", loc, fail, (str, int, float))
        source_names = _custom_list(prop.customProperties, "sourceNames", loc, fail, (str,))
        tz_at, source_tz = _custom_at(prop.customProperties, "sourceTimezone")
        if source_tz is not None:
            tz_loc = loc + ("customProperties", tz_at, "value")
            if prop.logicalType != "timestamp":
                fail(tz_loc, f"sourceTimezone applies to timestamp columns; '{prop.name}' is {prop.logicalType}")
            try:
                zoneinfo.ZoneInfo(str(source_tz))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                fail(tz_loc, f"sourceTimezone {source_tz!r} is not an IANA time zone like America/New_York")
        columns.append(Column(
            name=prop.name,
            logical_type=prop.logicalType,
            duckdb_type=physical,
            required=bool(prop.required),
            primary_key_position=prop.primaryKeyPosition if prop.primaryKey else None,
            description=prop.description or "",
            null_sentinels=tuple(sentinels),
            source_names=tuple(source_names),
            source_timezone=str(source_tz) if source_tz is not None else None,
        ))
        if prop.required:
            rules.append((Rule(id=f"{model.name}_{prop.name}_required", kind="required", severity="error",
                               column=prop.name, description=f"{prop.name} is required"), loc + ("required",)))
        if prop.logicalType != "string":
            rules.append((Rule(id=f"{model.name}_{prop.name}_type", kind="type", severity="error", column=prop.name,
                               description=f"{prop.name} parses as {prop.logicalType} ({physical})"), loc + ("logicalType",)))
        value_range = _value_range(prop, loc, fail)
        for j, q in enumerate(prop.quality or ()):
            rules.append((_quality_rule(q, prop.name, loc + ("quality", j), fail, value_range), loc + ("quality", j)))
        if value_range and not any(r.kind == "range" and r.column == prop.name for r, _ in rules):
            # an ODCS range is a constraint other tools enforce: plumbline enforces it too, named like its own rules
            lo, hi = value_range
            rules.append((Rule(id=f"{model.name}_{prop.name}_range", kind="range", severity="error", column=prop.name,
                               minimum=lo, maximum=hi, description=f"{prop.name} between {lo} and {hi}"),
                          loc + ("logicalTypeOptions",)))
        for j, rel in enumerate(prop.relationships or ()):
            rules.append((_relationship_rule(rel, prop.name, loc + ("relationships", j), fail), loc + ("relationships", j)))
    for j, q in enumerate(obj.quality or ()):
        rules.append((_quality_rule(q, None, ("schema", 0, "quality", j), fail), ("schema", 0, "quality", j)))

    names = [c.name for c in columns]
    for i, name in enumerate(names):
        # conform.py stages n_<col> and t_<col> beside the delivered columns; a clash would read the wrong one
        if name[:2] in ("n_", "t_") and name[2:] in names:
            fail(("schema", 0, "properties", i, "name"), f"column name {name!r} clashes with plumbline's staging name for column {name[2:]!r}")
    seen: dict[str, tuple] = {}
    for rule, rule_loc in rules:
        if rule.id in seen:
            fail(rule_loc, f"rule id {rule.id!r} is already used at {_dotted(seen[rule.id])}; rule ids must be unique")
        seen[rule.id] = rule_loc
    if not any(c.primary_key_position is not None for c in columns):
        fail(("schema", 0, "properties"), "at least one column needs primaryKey: true (deduplication key)")
    positions = [c.primary_key_position for c in columns if c.primary_key_position is not None]
    if sorted(positions) != list(range(1, len(positions) + 1)):
        fail(("schema", 0, "properties"), f"primaryKeyPosition values must be 1..{len(positions)} without gaps or repeats; got {sorted(positions)}")

    custom = model.customProperties

    def custom_map(name: str) -> tuple[tuple, dict | None]:
        i, value = _custom_at(custom, name)
        loc = ("customProperties", i, "value")
        if value is not None and not isinstance(value, dict):
            fail(loc, f"{name} must be a mapping, got {type(value).__name__} {value!r}")
        return loc, value

    partitioning = None
    loc, part = custom_map("partitioning")
    if part is not None:
        raw_event = part.get("eventDate")
        event = (raw_event,) if isinstance(raw_event, str) else tuple(raw_event or ())
        if len(event) not in (1, 3) or any(c not in names for c in event):
            fail(loc + ("eventDate",), f"partitioning.eventDate must name one date column or [year, month, day] columns of the schema; got {list(event)}")
        by_name = {c.name: c for c in columns}
        if len(event) == 1 and by_name[event[0]].logical_type not in ("date", "timestamp"):
            fail(loc + ("eventDate",), f"partitioning.eventDate column {event[0]!r} must have logicalType date or timestamp")
        if len(event) == 3 and any(by_name[c].logical_type != "integer" for c in event):
            fail(loc + ("eventDate",), f"partitioning.eventDate columns {list(event)} must have logicalType integer")
        if "event_date" in names:
            fail(("schema", 0, "properties", names.index("event_date"), "name"),
                 "a partitioned table gets its own event_date column; rename this column")
        if part.get("granularity", "day") != "day":
            fail(loc + ("granularity",), "partitioning.granularity: only 'day' is supported")
        try:
            start = dt.date.fromisoformat(str(part["start"]))
            end = dt.date.fromisoformat(str(part["end"])) if part.get("end") else None
        except (KeyError, ValueError):
            fail(loc + ("start",), "partitioning.start (and optional end) must be ISO dates like 2013-01-01")
        if end is not None and end <= start:
            fail(loc + ("end",), f"partitioning.end {end} must be after start {start} (end is exclusive)")
        timezone = part.get("timezone", "UTC")
        try:
            zoneinfo.ZoneInfo(str(timezone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            fail(loc + ("timezone",), f"partitioning.timezone {timezone!r} is not an IANA time zone like America/New_York")
        partitioning = Partitioning(event, "day", timezone, start, end)

    coverage = _coverage(custom, partitioning, fail)
    lateness_at, lateness = _custom_at(custom, "allowedLateness")
    lateness_loc = ("customProperties", lateness_at, "value")
    evolution_loc, evolution = custom_map("schemaEvolution")
    for key, mode in (evolution or {}).items():
        if key not in EVOLUTION_KEYS:
            fail(evolution_loc + (key,), f"schemaEvolution.{key} is unknown; use {list(EVOLUTION_KEYS)}")
        if mode not in EVOLUTION_MODES:
            fail(evolution_loc + (key,), f"schemaEvolution.{key} = {mode!r}; use one of {list(EVOLUTION_MODES)}")
    dead_letter_loc, dead_letter = custom_map("deadLetter")
    for key, value in (dead_letter or {}).items():
        if DEAD_LETTER.get(key) != value:
            fail(dead_letter_loc + (key,), f"deadLetter.{key} = {value!r}; plumbline implements {DEAD_LETTER}")
    dedup_loc, dedup = custom_map("deduplication")
    if dedup and dedup != {"winner": "latest_delivery"}:
        fail(dedup_loc, f"deduplication {dedup!r}: plumbline implements only winner: latest_delivery")

    restatement = _restatement(custom_map("restatement"), columns, fail)
    tolerance = _tolerance(custom, (), fail)

    # ODCS v3.0's deprecated team is a bare list of members; v3.1+ wraps them in a Team object.
    members = model.team if isinstance(model.team, list) else (model.team.members or () if model.team else ())
    owners = tuple(m.username for m in members if m.username and "@" in m.username)
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
        rules=tuple(r for r, _ in rules),
        partitioning=partitioning,
        coverage=coverage,
        allowed_lateness=_duration(lateness, lateness_loc, fail) if lateness is not None else None,
        dead_letter=dead_letter or {},
        schema_evolution=evolution or {},
        sla=sla,
        restatement=restatement,
        reject_tolerance=DEFAULT_REJECT_TOLERANCE if tolerance is None else tolerance,
    )


def _restatement(at, columns, fail) -> Restatement:
    loc, value = at
    if value is None:
        return Restatement()
    unknown = set(value) - {"keyMeasures", "maxRestatements", "maxChangePercent"}
    if unknown:
        fail(loc, f"restatement has unknown key(s) {sorted(unknown)}; use keyMeasures, maxRestatements, maxChangePercent")
    by_name = {c.name: c for c in columns}
    measures = value.get("keyMeasures", [])
    if not isinstance(measures, list) or any(by_name.get(m) is None or by_name[m].logical_type not in ("integer", "number")
                                             for m in measures):
        fail(loc + ("keyMeasures",), f"restatement.keyMeasures must list integer or number columns of the schema; got {measures!r}")
    n, pct = value.get("maxRestatements", 3), value.get("maxChangePercent", 5.0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        fail(loc + ("maxRestatements",), f"restatement.maxRestatements must be a whole number >= 0; got {n!r}")
    if not isinstance(pct, (int, float)) or isinstance(pct, bool) or pct < 0:
        fail(loc + ("maxChangePercent",), f"restatement.maxChangePercent must be a number >= 0; got {pct!r}")
    return Restatement(tuple(measures), n, float(pct))


def _severity(value, loc, fail) -> str:
    sev = str(value).lower()
    if sev not in SEVERITIES:
        fail(loc, f"severity {value!r} must be one of {list(SEVERITIES)}")
    return sev


def _value_range(prop, loc, fail) -> tuple | None:
    """(minimum, maximum) of a column's logicalTypeOptions, where ODCS puts a range; None when it has none."""
    options = prop.logicalTypeOptions or {}
    for key in options:
        if key not in RANGE_OPTIONS or prop.logicalType not in ("integer", "number"):
            # another ODCS tool would enforce it: ignoring it here would let through what that tool rejects
            fail(loc + ("logicalTypeOptions", key), f"plumbline does not enforce logicalTypeOptions.{key} on a "
                 f"{prop.logicalType} column; it enforces minimum and maximum on integer and number columns "
                 "(a pattern is a quality rule: invalidValues with arguments.pattern)")
    if not options:
        return None
    lo, hi = options.get("minimum"), options.get("maximum")
    if lo is not None and hi is not None and lo > hi:
        fail(loc + ("logicalTypeOptions",), f"logicalTypeOptions minimum {lo} is greater than maximum {hi}")
    return lo, hi


def _quality_rule(q, column, loc, fail, value_range: tuple | None = None) -> Rule:
    if not q.id:
        fail(loc, "every quality rule needs an id: it names the rule in dead-letter rows and asset checks")
    if not RULE_ID.match(q.id):
        fail(loc + ("id",), f"rule id {q.id!r} may hold only letters, digits and _ (it names a Dagster asset check)")
    sev = _severity(q.severity or "error", loc + ("severity",), fail)
    tolerance = _tolerance(q.customProperties, loc, fail)
    if q.type == "custom" and q.engine == VENDOR:
        # plumbline's own rule kind: the range sits once, in logicalTypeOptions, where other ODCS tools read it
        if q.implementation != "range":
            fail(loc + ("implementation",), f"engine plumbline implements only 'implementation: range'; got {q.implementation!r}")
        if column is None or value_range is None:
            fail(loc, "a range rule takes its bounds from the property's logicalTypeOptions: add minimum and/or maximum there")
        lo, hi = value_range
        return Rule(id=q.id, kind="range", severity=sev, reject_tolerance=tolerance, column=column, minimum=lo, maximum=hi,
                    description=q.description or f"{column} between {lo} and {hi}")
    args = q.arguments or {}
    metric = q.metric or q.rule
    if metric == "rowCount":
        if q.mustBeGreaterThan is None:
            fail(loc, "rowCount rules take mustBeGreaterThan")
        return Rule(id=q.id, kind="row_count", severity=sev, threshold=q.mustBeGreaterThan,
                    description=q.description or f"more than {q.mustBeGreaterThan:g} rows per partition")
    if column is None:
        fail(loc, f"metric {metric!r} must sit on a property (column), not on the schema")
    if metric in ("nullValues", "missingValues"):
        return Rule(id=q.id, kind="not_null", severity=sev, reject_tolerance=tolerance, column=column, description=q.description or f"{column} is not null")
    if metric == "invalidValues":
        if q.mustBe != 0:
            fail(loc, "invalidValues rules take mustBe: 0 (no invalid values allowed)")
        if "validValues" in args:
            if not isinstance(args["validValues"], list):
                fail(loc + ("arguments", "validValues"), f"validValues must be a list, got {args['validValues']!r}")
            return Rule(id=q.id, kind="allowed_values", severity=sev, reject_tolerance=tolerance, column=column, values=tuple(args["validValues"]),
                        description=q.description or f"{column} in {args['validValues']}")
        if "pattern" in args:
            if not isinstance(args["pattern"], str):
                fail(loc + ("arguments", "pattern"), f"pattern must be a string, got {args['pattern']!r}")
            try:
                re.compile(args["pattern"])
            except re.error as e:
                fail(loc + ("arguments", "pattern"), f"not a valid regular expression: {e}")
            return Rule(id=q.id, kind="pattern", severity=sev, reject_tolerance=tolerance, column=column, pattern=args["pattern"],
                        description=q.description or f"{column} matches {args['pattern']}")
        if "minimum" in args or "maximum" in args:
            lo, hi = args.get("minimum"), args.get("maximum")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi) if v is not None):
                fail(loc + ("arguments",), "minimum and maximum must be numbers")
            if value_range is not None and (lo, hi) != value_range:
                fail(loc + ("arguments",), f"arguments minimum {lo}, maximum {hi} disagree with logicalTypeOptions minimum "
                     f"{value_range[0]}, maximum {value_range[1]}; keep the range once, in logicalTypeOptions, "
                     "with a rule 'type: custom, engine: plumbline, implementation: range'")
            return Rule(id=q.id, kind="range", severity=sev, reject_tolerance=tolerance, column=column, minimum=lo, maximum=hi,
                        description=q.description or f"{column} between {lo} and {hi}")
        fail(loc + ("arguments",), "invalidValues needs arguments validValues, pattern, or minimum/maximum")
    fail(loc, f"metric {metric!r} is not supported by plumbline; use nullValues, invalidValues or rowCount")


def _relationship_rule(rel, column, loc, fail) -> Rule:
    if not rel.id:
        fail(loc, "every relationship needs an id: it names the referential check")
    if not RULE_ID.match(rel.id):
        fail(loc + ("id",), f"relationship id {rel.id!r} may hold only letters, digits and _ (it names a Dagster asset check)")
    target = rel.to if isinstance(rel.to, str) else None
    if not target or target.count(".") != 1:
        fail(loc + ("to",), "plumbline supports single-column references written <source>.<column>")
    source, ref_col = target.split(".")
    i, severity = _custom_at(rel.customProperties, "severity")
    sev = _severity(severity or "warning", loc if i is None else loc + ("customProperties", i, "value"), fail)
    return Rule(id=rel.id, kind="foreign_key", severity=sev, column=column, reference=(source, ref_col),
                description=f"{column} exists in {target}")


def contract_files(directory: Path = CONTRACTS_DIR) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


@lru_cache(maxsize=None)
def _load_all(directory: str, cache: str | None = None) -> dict[str, Contract]:
    if cache is None:
        return _validated(directory)
    # the compiled contracts of exactly these files, loader and standard: what every step process
    # would otherwise validate again (the JSON schema and ODCS model cost a third of its start-up)
    stored = Path(cache) / f"contracts-{_fingerprint(directory)}.pickle"
    try:
        return pickle.loads(stored.read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
        pass  # absent or unreadable: validate and store again
    contracts = _validated(directory)
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=stored.parent, prefix=".contracts-", delete=False) as f:
            f.write(pickle.dumps(contracts))
        os.replace(f.name, stored)  # whole or absent: processes starting together read one or the other
    except OSError:
        pass  # a read-only home still loads, validating every time
    return contracts


def _fingerprint(directory: str) -> str:
    """What the compiled contracts depend on: the contract files (names and bytes), the local ODCS
    schemas, this loader and the model, and the ODCS package's version."""
    h = hashlib.sha256(directory.encode())
    for f in [*contract_files(Path(directory)), *sorted(SCHEMAS_DIR.glob("*.json")), Path(__file__),
              Path(__file__).with_name("model.py")]:
        h.update(f"\0{f}\0".encode())
        h.update(f.read_bytes())
    h.update(importlib.metadata.version("open-data-contract-standard").encode())
    return h.hexdigest()[:32]


def _validated(directory: str) -> dict[str, Contract]:
    contracts = {}
    for f in contract_files(Path(directory)):
        c = load_contract(f)
        if c.name != f.stem:
            line = line_index(f.read_text(encoding="utf-8")).get(("name",))
            raise ContractError(f, "name", f"name {c.name!r} must equal the file name {f.stem!r}", line)
        contracts[c.name] = c
    for c in contracts.values():
        for rule in c.rules:
            if rule.kind != "foreign_key":
                continue
            source, column = rule.reference
            if source not in contracts or column not in contracts[source].column_names:
                loc = _relationship_loc(c, rule.id)
                raise ContractError(c.path, _dotted(loc), f"relationship {rule.id!r} points at {source}.{column}, "
                                    f"which is not a column of a contract in {directory}",
                                    _nearest_line(line_index(Path(c.path).read_text(encoding="utf-8")), loc))
    return contracts


def _relationship_loc(contract: Contract, rule_id: str) -> tuple:
    """Where a relationship is declared, found again in the file for the error message."""
    data = yaml.safe_load(Path(contract.path).read_text(encoding="utf-8"))
    for i, prop in enumerate(data["schema"][0].get("properties") or ()):
        for j, rel in enumerate(prop.get("relationships") or ()):
            if rel.get("id") == rule_id:
                return ("schema", 0, "properties", i, "relationships", j, "to")
    return ("schema", 0)


def load_contracts(directory: Path = CONTRACTS_DIR, cache: Path | None = None) -> dict[str, Contract]:
    """Every contract in the folder, keyed by source name (cached per process; with `cache`, a folder,
    also across processes until a contract file, the loader or the ODCS package changes)."""
    return _load_all(str(directory), str(cache) if cache else None)
