"""ml.model_evaluation and the promotion gate.

The challenger, the current champion and the baseline (historical on-time share) are measured on
the same test window, overall and per carrier. The gate promotes the challenger only if its AUC
beats the champion's (or, with no champion yet, the baseline's) by the configured margin and no
carrier with enough test flights loses more than the configured amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestration.ml import model

if TYPE_CHECKING:
    import pandas as pd

# numpy and pandas load inside the functions that use them: the code location imports this module,
# and only the steps that train, evaluate or score need them (tests/unit/test_architecture.py).

COLUMNS = [("challenger_version", "VARCHAR"), ("model", "VARCHAR"), ("model_version", "VARCHAR"), ("scope", "VARCHAR"),
           ("flights", "BIGINT"), ("auc", "DOUBLE"), ("log_loss", "DOUBLE"), ("brier", "DOUBLE"), ("ece", "DOUBLE"),
           ("daily_auc", "DOUBLE")]  # median AUC of single test days: what a scored partition is compared with
DDL = "CREATE TABLE IF NOT EXISTS ml.model_evaluation (" + ", ".join(f"{n} {t}" for n, t in COLUMNS) + ")"
OVERALL = "overall"


def measure(label: str, version: str | None, test: pd.DataFrame, p, min_daily_flights: int) -> list[dict]:
    """Overall and per-carrier metrics of one model's predictions p on the test rows."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"day": test["event_date"].to_numpy(), "carrier": test["carrier"].to_numpy(),
                          "y": test["delayed"].astype(int).to_numpy(), "p": p})
    daily = [model.metrics(part["y"], part["p"])["auc"] for _, part in frame.groupby("day")
             if len(part) >= min_daily_flights]
    daily = [a for a in daily if a is not None]
    rows = [{"model": label, "model_version": version, "scope": OVERALL, **model.metrics(test["delayed"], p),
             "daily_auc": float(np.median(daily)) if daily else None}]
    for carrier, part in frame.groupby("carrier", sort=True):
        rows.append({"model": label, "model_version": version, "scope": carrier, **model.metrics(part["y"], part["p"]),
                     "daily_auc": None})
    return rows


def store(con, challenger: str, rows: list[dict]) -> None:
    """Replace this challenger's evaluation (a re-evaluation of the same version overwrites it)."""
    con.execute(DDL)
    con.execute("DELETE FROM ml.model_evaluation WHERE challenger_version = ?", [challenger])
    con.executemany(f"INSERT INTO ml.model_evaluation VALUES ({', '.join('?' * len(COLUMNS))})",
                    [[challenger, r["model"], r["model_version"], r["scope"], r["flights"], r["auc"], r["log_loss"],
                      r["brier"], r["ece"], r["daily_auc"]] for r in rows])


def load(con, challenger: str) -> list[dict]:
    con.execute(DDL)
    cur = con.execute("SELECT * FROM ml.model_evaluation WHERE challenger_version = ? ORDER BY model, scope", [challenger])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    compared_with: str       # "champion v3" or "baseline"
    auc_gain: float | None
    regressed_carriers: dict  # carrier -> AUC drop


def decide(rows: list[dict], challenger: str, champion: str | None, promotion: dict) -> Decision:
    by = {(r["model"], r["scope"]): r for r in rows}
    if champion == challenger:
        return Decision(False, f"version {challenger} is already the champion", f"champion v{champion}", 0.0, {})
    against = "champion" if champion and ("champion", OVERALL) in by else "baseline"
    name = f"champion v{champion}" if against == "champion" else "the baseline (historical on-time share)"
    mine, theirs = by[("challenger", OVERALL)], by[(against, OVERALL)]
    if mine["auc"] is None or theirs["auc"] is None:
        return Decision(False, "the test window has only one class of label: AUC is undefined, nothing to compare", name, None, {})
    gain = mine["auc"] - theirs["auc"]
    margin, max_drop, min_flights = (float(promotion["min_auc_gain"]), float(promotion["max_carrier_auc_drop"]),
                                     int(promotion["min_carrier_flights"]))
    regressed = {}
    for (label, scope), r in by.items():
        if label != "challenger" or scope == OVERALL or r["flights"] < min_flights or r["auc"] is None:
            continue
        ref = by.get((against, scope))
        if ref and ref["auc"] is not None and ref["auc"] - r["auc"] > max_drop:
            regressed[scope] = round(ref["auc"] - r["auc"], 4)
    if gain < margin:
        return Decision(False, f"test AUC {mine['auc']:.4f} does not beat {name} ({theirs['auc']:.4f}) by the required "
                               f"{margin} (gain {gain:+.4f})", name, gain, regressed)
    if regressed:
        worst = ", ".join(f"{c} -{d}" for c, d in sorted(regressed.items(), key=lambda x: -x[1]))
        return Decision(False, f"test AUC {mine['auc']:.4f} beats {name} by {gain:+.4f}, but carrier AUC falls by more "
                               f"than {max_drop}: {worst}", name, gain, regressed)
    return Decision(True, f"test AUC {mine['auc']:.4f} beats {name} ({theirs['auc']:.4f}) by {gain:+.4f}; no carrier "
                          f"with {min_flights}+ test flights loses more than {max_drop}", name, gain, {})
