"""Great Expectations' verdicts on single values, kept so a value a rule has judged is not judged again.

Every checked rule is a column-map rule (checks._distinct_values): whether a value breaks it depends on
that value alone. A validation records, for each value of each rule's own rows, whether Great
Expectations found it unexpected. A later validation whose values were all judged before by the same
rule takes the verdicts from here and does not load Great Expectations (about 4 s of CPU per process,
most of a late file's check). A verdict is found under the rule's definition: its kind, column and
parameters, the values a foreign key points at, the Great Expectations version and the source of the
code that turns a rule into an expectation; a change to any of them judges every value again.

Kept under the home's cache as JSON (never code), one file per rule definition, written beside and
renamed. A missing or unreadable file only means its values are judged again; deleting
`$PLUMBLINE_HOME/cache/verdicts/` is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

from contracts.model import Rule
from orchestration import settings

FORMAT = 1
KEY_CHARS = 200
KEPT_PER_RULE = 50_000  # about 1.5 MB; a rule whose values never repeat (a continuous measure) stops being recorded here


def directory() -> Path:
    return settings.cache_dir() / "verdicts"


@functools.cache
def _judge_code(*judges: Callable) -> str:
    """The source of the functions that build the expectations: editing them judges every value again."""
    h = hashlib.sha256()
    for f in judges:
        h.update(inspect.getsource(f).encode())
    return h.hexdigest()


@functools.cache
def _gx_version() -> str:
    """Read once per process: every rule's fingerprint names it, and each look-up scans the installed packages."""
    try:
        return metadata.version("great_expectations")
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint(rule: Rule, referenced: list | None, judges: tuple[Callable, ...]) -> str:
    """The name of a rule's verdicts: everything Great Expectations' verdict on one value depends on."""
    definition = {
        "format": FORMAT, "great_expectations": _gx_version(), "code": _judge_code(*judges),
        "kind": rule.kind, "column": rule.column, "minimum": rule.minimum, "maximum": rule.maximum,
        "values": [repr(v) for v in rule.values], "pattern": rule.pattern, "threshold": rule.threshold,
        "reference": list(rule.reference) if rule.reference else None,
        "referenced": hashlib.sha256(repr(sorted(map(repr, referenced))).encode()).hexdigest() if referenced is not None else None,
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def value_key(dtype: str, value) -> str:
    """A value as Great Expectations sees it in the frame: its column's type and its exact repr."""
    if hasattr(value, "item"):  # numpy scalars: the Python value they hold
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        value = None  # every NaN is the same missing value
    key = f"{dtype}|{type(value).__name__}|{value!r}"
    # a long delivered value (free text) is kept by its digest: the file stays small whatever arrives
    return key if len(key) <= KEY_CHARS else f"{dtype}|{type(value).__name__}|sha256:{hashlib.sha256(key.encode()).hexdigest()}"


class Verdicts:
    """The recorded verdicts of some rules (by fingerprint): value key -> unexpected."""

    def __init__(self, fingerprints: Iterable[str]):
        self.known: dict[str, dict[str, bool]] = {fp: _read(directory() / f"{fp}.json") for fp in set(fingerprints)}
        self.new: dict[str, dict[str, bool]] = {}

    def lookup(self, fp: str, keys: list[str]) -> list[bool] | None:
        """Each key's verdict (True: unexpected), or None when any of them was never judged."""
        known = self.known.get(fp, {})
        try:
            return [known[k] for k in keys]
        except KeyError:
            return None

    def record(self, fp: str, verdicts: dict[str, bool]) -> None:
        self.new.setdefault(fp, {}).update(verdicts)

    def save(self) -> None:
        """Merge the new verdicts into each rule's file (re-read first: another process may have added some)."""
        for fp, new in self.new.items():
            path = directory() / f"{fp}.json"
            kept = _read(path)
            added = {k: v for k, v in new.items() if kept.get(k) != v}
            if not added or len(kept) >= KEPT_PER_RULE:
                continue
            kept.update(added)
            tmp = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{fp[:12]}-", suffix=".tmp")
                os.chmod(tmp, 0o644)  # like the home's other cache files (mkstemp makes it private)
                with os.fdopen(fd, "w") as f:
                    json.dump({"format": FORMAT, "verdicts": kept}, f)
                os.replace(tmp, path)  # readers see the old file or the new one, never half of one
            except OSError:  # a cache that cannot be written (read-only home, full disk) only means judging again
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
        self.new.clear()


def _read(path: Path) -> dict[str, bool]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    verdicts = data.get("verdicts") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(verdicts, dict):
        return {}
    return {k: v for k, v in verdicts.items() if isinstance(k, str) and isinstance(v, bool)}
