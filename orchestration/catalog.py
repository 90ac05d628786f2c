"""What Dagster shows about a source, derived from its contract in one place: partitions, column
schema, owners, code version."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.loader import CONTRACTS_DIR, load_contracts
from contracts.model import Contract
from orchestration import settings

CODE_VERSION = "1"  # bump when the rebuild logic changes in a way that alters outputs
REPOSITORY = Path(__file__).resolve().parents[1]

if TYPE_CHECKING:  # Dagster is imported by the functions that build its objects: read commands use contracts() alone
    import dagster as dg


def contracts() -> dict[str, Contract]:
    """The deployed contracts: $PLUMBLINE_CONTRACTS when set (a fixed copy under review), else the package's."""
    directory = os.environ.get("PLUMBLINE_CONTRACTS")
    # compiled once per change, not validated again by every step process that loads the definitions
    return load_contracts(Path(directory) if directory else CONTRACTS_DIR, cache=settings.cache_dir())


def shown_path(contract: Contract) -> str:
    """The contract file as people name it, e.g. contracts/flights.yaml: relative to the repository (or to
    the working directory for a copy under review elsewhere), so no machine's absolute path is shown."""
    path = Path(contract.path).resolve()
    for base in (REPOSITORY, Path.cwd()):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return str(path)


def code_version(contract: Contract) -> str:
    """Contract version plus a digest of its file: editing the contract makes partitions stale in the UI."""
    digest = hashlib.sha256(Path(contract.path).read_bytes()).hexdigest()[:8]
    return f"{CODE_VERSION}-{contract.version}-{digest}"


@lru_cache(maxsize=None)
def _daily(start: str, end: str | None, timezone: str) -> dg.DailyPartitionsDefinition:
    import dagster as dg

    return dg.DailyPartitionsDefinition(start_date=start, end_date=end, timezone=timezone)


def partitions_def(contract: Contract) -> dg.DailyPartitionsDefinition | None:
    """Sources with the same window share one definition object, so jobs can span them."""
    p = contract.partitioning
    if p is None:
        return None
    return _daily(p.start.isoformat(), p.end.isoformat() if p.end else None, p.timezone)


def expected_partitions(contract: Contract) -> dict | None:
    """The partitions the source fills (start, end inclusive) and why the others stay empty, where its
    contract says where the source starts or ends (sourceCoverage); None when it fills them all."""
    covered, p = contract.coverage, contract.partitioning
    if covered is None or p is None:
        return None
    end = covered.end or (p.end - dt.timedelta(days=1) if p.end else None)
    return {"start": covered.start.isoformat(), "end": end.isoformat() if end else None, "why": covered.why}


def column_schema(contract: Contract, partitioned: bool) -> dg.TableSchema:
    import dagster as dg

    cols = [dg.TableColumn(c.name, c.duckdb_type, description=c.description,
                           constraints=dg.TableColumnConstraints(nullable=not c.required, unique=False))
            for c in contract.columns]
    if partitioned:
        cols.append(dg.TableColumn("event_date", "DATE", description="partition: local event date"))
    cols += [dg.TableColumn("_source_file", "VARCHAR", description="sha256 of the delivery the row came from"),
             dg.TableColumn("_source_row", "BIGINT", description="0-based data row in that delivery")]
    return dg.TableSchema(columns=cols)


def owners(contract: Contract) -> list[str]:
    return list(contract.owners)


def bronze_schema(contract: Contract) -> dg.TableSchema:
    """Bronze keeps every contract column as delivered text, plus where each row came from."""
    import dagster as dg

    cols = [dg.TableColumn(c.name, "VARCHAR", description=f"as delivered; contract type {c.duckdb_type}")
            for c in contract.columns]
    cols += [dg.TableColumn("_extra", "VARCHAR", description="JSON of delivered columns the contract does not name"),
             dg.TableColumn("_row_offset", "BIGINT", description="0-based data row in the delivery"),
             dg.TableColumn("_file_id", "VARCHAR", description="sha256 of the delivery"),
             dg.TableColumn("_file_path", "VARCHAR", description="path in the landing zone"),
             dg.TableColumn("_delivered_at", "TIMESTAMPTZ", description="delivery time from the file name"),
             dg.TableColumn("_event_date", "DATE", description="partition the row belongs to")]
    return dg.TableSchema(columns=cols)
