"""ml.training_set: the time-based split of labelled flights, with its provenance.

Provenance says exactly what the set was built from: every feature partition in the windows with a
content hash of its rows (its data version), the contract version of every source, row counts and
label balance per split, and how many cancelled or diverted flights were left out. The set's own
version is a hash of all that, so the same data gives the same version (and the same model).
"""

from __future__ import annotations

import hashlib
import json

from orchestration import catalog
from orchestration.ml import features
from orchestration.ml.config import MlConfig
from orchestration.warehouse import ident, key_list, literal, table_exists

DDL_PROVENANCE = "CREATE TABLE IF NOT EXISTS ml.training_set_provenance (version VARCHAR, provenance JSON)"
_KEY = ", ".join(features.KEY)


def _windows_sql(cfg: MlConfig) -> str:
    return " UNION ALL ".join(f"SELECT {literal(w.name)} AS split, {literal(w.start.isoformat())}::DATE AS start_date, "
                              f"{literal(w.end.isoformat())}::DATE AS end_date" for w in cfg.windows)


def partition_versions(con, days: list[str]) -> dict[str, str]:
    """event_date -> md5 of the partition's feature rows in key order (missing days are absent)."""
    if not days:
        return {}
    rows = con.execute(f"""
        SELECT strftime(event_date, '%Y-%m-%d'), md5(string_agg(f::VARCHAR, chr(10) ORDER BY {_KEY}))
        FROM ml.flight_features f WHERE event_date IN {key_list(days)} GROUP BY event_date ORDER BY 1""").fetchall()
    return dict(rows)


# What a training-set row holds besides its split: the flight's key and features (then its label).
_ROW = [*features.KEY[1:], *[c for c in features.FEATURES if c not in features.KEY]]


def build(con, cfg: MlConfig) -> dict:
    """Replace ml.training_set from ml.flight_features; return its provenance."""
    cols = ", ".join(f"f.{ident(c)}" for c in _ROW)
    con.execute("CREATE SCHEMA IF NOT EXISTS ml")
    con.execute(features.DDL)
    con.execute(DDL_PROVENANCE)
    # a flight joins every window its day falls in: overlapping windows show up as keys in two splits
    con.execute(f"""CREATE OR REPLACE TABLE ml.training_set AS
        SELECT w.split, f.event_date, {cols}, f.delayed
        FROM ml.flight_features f JOIN ({_windows_sql(cfg)}) w ON f.event_date BETWEEN w.start_date AND w.end_date
        WHERE f.delayed IS NOT NULL
        ORDER BY w.split, {', '.join('f.' + k for k in features.KEY)}""")
    splits = {}
    for w in cfg.windows:
        n, delayed, cancelled, diverted, days = con.execute(f"""
            SELECT count(*) FILTER (WHERE delayed IS NOT NULL), count(*) FILTER (WHERE delayed),
                   count(*) FILTER (WHERE outcome = 'cancelled'), count(*) FILTER (WHERE outcome = 'diverted'),
                   count(DISTINCT event_date)
            FROM ml.flight_features WHERE event_date BETWEEN {literal(w.start.isoformat())}::DATE AND {literal(w.end.isoformat())}::DATE
        """).fetchall()[0]
        splits[w.name] = {"start": w.start.isoformat(), "end": w.end.isoformat(), "rows": n, "delayed": delayed,
                          "delayed_share": round(delayed / n, 6) if n else None,
                          "excluded_cancelled": cancelled, "excluded_diverted": diverted,
                          "partitions_present": days, "partitions_expected": len(w.days())}
    days = sorted({d for w in cfg.windows for d in w.days()})
    versions = partition_versions(con, days)
    provenance = {
        "source": "ml.flight_features",
        "label": f"arrival delay above {cfg.delay_minutes} minutes; cancelled and diverted flights excluded",
        "features": features.MODEL_INPUTS,
        "splits": splits,
        "partitions": versions,
        "missing_partitions": [d for d in days if d not in versions],
        "contracts": {name: c.version for name, c in sorted(catalog.contracts().items())},
    }
    # the version is what the set holds, not where the configuration file lives
    provenance["version"] = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:16]
    provenance["config"] = str(cfg.path)
    with_version = json.dumps(provenance, sort_keys=True)
    con.execute("DELETE FROM ml.training_set_provenance")
    con.execute("INSERT INTO ml.training_set_provenance VALUES (?, ?)", [provenance["version"], with_version])
    return provenance


def current_provenance(con) -> dict | None:
    if not table_exists(con, "ml", "training_set_provenance"):
        return None
    rows = con.execute("SELECT provenance FROM ml.training_set_provenance").fetchall()
    return json.loads(rows[0][0]) if rows else None


def changed_flights(con, days: list[str]) -> dict[str, tuple[int, int]]:
    """event_date -> (labelled flights added, removed or relabelled; flights with only a feature changed)
    between ml.training_set and the features of those days as they are now."""
    if not days or not table_exists(con, "ml", "training_set"):
        return {}
    key = ", ".join(features.KEY)
    row = ", ".join(ident(c) for c in _ROW if c not in features.KEY)
    scope = f"event_date IN {key_list(days)}"
    rows = con.execute(f"""
        WITH held AS (SELECT {key}, delayed, ROW({row}) AS features FROM ml.training_set WHERE {scope}),
             now AS (SELECT {key}, delayed, ROW({row}) AS features FROM ml.flight_features WHERE {scope} AND delayed IS NOT NULL)
        SELECT strftime(event_date, '%Y-%m-%d'),
               count(*) FILTER (WHERE h.delayed IS NULL OR n.delayed IS NULL OR h.delayed <> n.delayed),
               count(*) FILTER (WHERE h.delayed = n.delayed AND h.features IS DISTINCT FROM n.features)
        FROM held h FULL JOIN now n USING ({key}) GROUP BY ALL HAVING count(*) FILTER (WHERE h.delayed IS NULL OR
            n.delayed IS NULL OR h.delayed <> n.delayed OR h.features IS DISTINCT FROM n.features) > 0 ORDER BY 1""").fetchall()
    return {day: (changed, reshaped) for day, changed, reshaped in rows}


def split_problems(con, cfg: MlConfig) -> dict:
    """What makes the split unsound: overlapping windows, flight keys in two splits."""
    overlapping = cfg.overlapping_windows()
    shared = con.execute(f"""
        SELECT count(*) FROM (SELECT {_KEY} FROM ml.training_set GROUP BY ALL HAVING count(DISTINCT split) > 1)""").fetchall()[0][0]
    examples = con.execute(f"""
        SELECT {_KEY}, list(DISTINCT split ORDER BY split) FROM ml.training_set GROUP BY ALL
        HAVING count(DISTINCT split) > 1 ORDER BY {_KEY} LIMIT 5""").fetchall()
    return {"overlapping_windows": [f"{a} and {b}" for a, b in overlapping], "keys_in_two_splits": shared,
            "examples": [f"{e[0]} {e[1]} {e[2]} {e[3]} in {', '.join(e[4])}" for e in examples]}
