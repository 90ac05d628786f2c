"""`plumbline deliveries`: list quarantined deliveries and retry them against the current contract.

A quarantined delivery stays in the landing zone untouched. Retrying forgets its quarantine record,
so the next ingest examines it again with the contract as it is now; sync then rebuilds the
partitions it touches (their built_from changes from quarantined:<id> to <id>).
"""

from __future__ import annotations

from orchestration.catalog import contracts
from orchestration.rebuild import partitions


def quarantined(con, source: str | None = None) -> list[tuple[str, str, list[str], str]]:
    names = [source] if source else sorted(contracts())
    return [(name, *row) for name in names for row in partitions.quarantined_files(con, name)]


def release(con, source: str, path: str | None = None) -> list[str]:
    """Forget the quarantine of one source's deliveries (or of one file); return the paths released."""
    where, params = "source = ? AND status = 'quarantined'", [source]
    if path is not None:
        where += " AND path = ?"
        params.append(path.removeprefix("landing/"))
    paths = [p for (p,) in con.execute(f"SELECT path FROM ops.landed_files WHERE {where} ORDER BY path", params).fetchall()]
    con.execute(f"DELETE FROM ops.landed_files WHERE {where}", params)
    return paths
