"""What on-call sees and does with the model: versions, promotions by hand, rollback, and which
version scored which partitions. Used by `plumbline model ...` and `plumbline summary`."""

from __future__ import annotations

import getpass
import os

from orchestration.ml import registry
from orchestration.ml.config import MlConfig
from orchestration.ml.recorded import scored_by
from orchestration.ml.registry import ModelRegistry
from orchestration.warehouse import table_exists


def actor() -> str:
    """Who acted: $PLUMBLINE_ACTOR, else the login name."""
    try:
        return os.environ.get("PLUMBLINE_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def test_auc(con, version: str) -> float | None:
    if not table_exists(con, "ml", "model_evaluation"):
        return None
    rows = con.execute("SELECT auc FROM ml.model_evaluation WHERE challenger_version = ? AND model = 'challenger' "
                       "AND scope = 'overall'", [version]).fetchall()
    return rows[0][0] if rows else None


def versions(con, cfg: MlConfig, model_registry: ModelRegistry) -> list[dict]:
    """Every registered version, oldest first: status, whether it is the champion, test AUC, training set."""
    champion = model_registry.champion(cfg) if (found := model_registry.versions(cfg)) else None
    return [{"version": str(v.version), "status": v.tags.get(registry.STATUS_TAG), "champion": str(v.version) == champion,
             "test_auc": test_auc(con, str(v.version)), "training_set": v.tags.get(registry.TRAINING_SET_TAG),
             "reason": v.tags.get(registry.REASON_TAG)} for v in found]


def versions_text(con, cfg: MlConfig, model_registry: ModelRegistry) -> str:
    found = versions(con, cfg, model_registry)
    if not found:
        return f"model {cfg.model_name} has no versions in {model_registry.location()} (plumbline sync trains one)"
    lines = [f"model {cfg.model_name} in {model_registry.location()}:",
             f"  {'version':>7}  {'status':<11} {'test AUC':>8}  {'training set':<16}  reason"]
    for v in found:
        auc = v["test_auc"]
        lines.append(f"{'*' if v['champion'] else ' '} {v['version']:>7}  {v['status'] or '-':<11} "
                     f"{(f'{auc:.4f}' if auc is not None else '-'):>8}  {v['training_set'] or '-':<16}  {v['reason'] or ''}")
    lines.append("  (* champion; plumbline model history shows every promotion, rejection and rollback)")
    return "\n".join(lines)


def history_text(con, cfg: MlConfig) -> str:
    rows = registry.history(con, cfg)
    if not rows:
        return f"no promotions of {cfg.model_name} recorded yet (ops.model_promotions)"
    return "\n".join(f"{at:%Y-%m-%d %H:%M:%S} {action:<8} v{version:<4} (champion before: {'v' + previous if previous else 'none'}) by {who}: {why}"
                     for at, action, version, previous, who, why in rows)


def rescore_hint(con, cfg: MlConfig, champion: str) -> str:
    stale = [(v, a, b) for v, a, b, _ in scored_by(con) if v != champion]
    if not stale:
        return "every scored partition is already scored by the champion"
    first, last = min(a for _, a, _ in stale), max(b for _, _, b in stale)
    versions = ", ".join(sorted({f"v{v}" for v, _, _ in stale}))
    return (f"partitions {first} .. {last} are scored by {versions}; re-score them with the champion:\n"
            f"  plumbline backfill --assets key:ml/flight_predictions --from {first} --to {last} [--in-process]")
