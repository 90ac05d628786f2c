"""On-call repairs of the dead-letter queue: release held late rows, replay rows after a contract fix.

Both end in the same place as every other change: a rebuild of the affected partitions (and what is
downstream of them) through the Dagster jobs, which is idempotent and restates on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.ingest import lateness
from orchestration.quality import dead_letter
from orchestration.resources import resources


@dataclass
class ReplayOutcome:
    source: str
    partitions: list[str]
    selected: int
    resolved: int
    still_failing: int
    runs_ok: bool


def replay(runner, contracts: dict, source: str | None, rule: str | None, partition: str | None, say=print) -> list[ReplayOutcome]:
    """Re-validate open contract-rule dead letters against the contracts as they are now.

    The affected partitions are rebuilt; rows that pass are resolved by that run (see
    dead_letter.record_stage_failures), rows that still fail stay open with one more attempt.
    """
    with resources()["warehouse"].connect(read_only=True) as con:
        rows = dead_letter.replayable(con, source, rule, partition)
    by_source: dict[str, list[tuple]] = {}
    for r in rows:
        by_source.setdefault(r[0], []).append(r)
    outcomes = []
    for name, selected in sorted(by_source.items()):
        keys = sorted({r[4] for r in selected if r[4]}) if contracts[name].partitioning else None
        say(f"{name}: replaying {len(selected)} dead-letter row(s)"
            + (f" in {len(keys)} partition(s) {keys[0]} .. {keys[-1]}" if keys else " (snapshot)"))
        ok = runner.rematerialize(name, keys)
        with resources()["warehouse"].connect() as con:
            resolved, still = dead_letter.record_replay(con, selected, revalidated=ok)
        say(f"{name}: {resolved} resolved, {still} still failing" + ("" if ok else " (a run FAILED; nothing re-validated there)"))
        outcomes.append(ReplayOutcome(name, keys or [], len(selected), resolved, still, ok))
    return outcomes


def release(runner, contract, partitions: list[str] | None, say=print) -> tuple[list[str], bool]:
    """Release held late rows of a source (all, or these partitions) and restate their partitions."""
    with resources()["warehouse"].connect() as con:
        keys = lateness.release(con, contract, partitions)
    if not keys:
        say(f"{contract.name}: no held late rows match")
        return [], True
    say(f"{contract.name}: released late rows of {len(keys)} partition(s) {keys[0]} .. {keys[-1]}; restating them")
    return keys, runner.rematerialize(contract.name, keys)
