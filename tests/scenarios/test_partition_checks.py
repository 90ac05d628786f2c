"""A range run of raw/flights over three real days, one of them with a delivered row that breaks a
contract rule: the partitioned check contract_by_partition fails that day and passes the others, as
the Dagster instance keeps it (what the check's partitions view shows), while the asset-level rule
checks keep their verdicts."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.raw import raw_asset
from contracts.loader import load_contracts
from orchestration import names
from tests.scenarios.test_quality_checks import RULE, day_rows, deliver, materialize

DAYS = ["2013-01-02", "2013-01-03", "2013-01-04"]
BAD = "2013-01-03"
CHECK = dg.AssetCheckKey(dg.AssetKey(["raw", "flights"]), names.CONTRACT_BY_PARTITION)


@pytest.fixture
def instance(plumbline_home):
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def statuses(instance: dg.DagsterInstance) -> dict[str, str]:
    """Each partition's current status of the check, as the instance resolves it for the UI (the run's
    summary, which has no partition, is not a partition's status)."""
    return {i.partition_key: i.latest_execution_status.value
            for i in instance.event_log_storage.get_asset_check_partition_info([CHECK]) if i.is_current and i.partition_key}


def test_a_range_run_with_one_bad_day_fails_that_day_and_passes_the_others(plumbline_home, instance):
    flights = load_contracts()["flights"]
    for d in (2, 4):
        deliver(plumbline_home, 1, d, day_rows(1, d))
    bad = day_rows(1, 3)
    bad.loc[7, "dep_delay"] = 5000
    deliver(plumbline_home, 1, 3, bad)

    checks = materialize(flights, instance, *DAYS)

    assert statuses(instance) == {"2013-01-02": "SUCCEEDED", "2013-01-03": "FAILED", "2013-01-04": "SUCCEEDED"}
    [record] = [r for r in instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=10) if r.partition == BAD]
    day = record.event.dagster_event.event_specific_data
    assert not day.passed and day.severity == dg.AssetCheckSeverity.WARN and day.partition == BAD
    assert day.metadata["rejected_by_rule"].value == {RULE: 1} and day.metadata["dead_lettered"].value == 1
    assert "1 of 200 delivered row(s) dead-lettered: flights_dep_delay_range 1" in day.description
    assert "5000" in day.description, "the day's verdict shows the offending value"
    # the summary of the run names the bad day; the rule's own asset-level check is as before
    summary = checks[names.CONTRACT_BY_PARTITION]
    assert not summary.passed and summary.partition is None and summary.metadata["failed_partitions"].value == [BAD]
    assert not checks[RULE].passed and checks[RULE].metadata["dead_lettered_rows"].value == 1

    # a run of one partition (Dagster gives its check result the partition): a later delivery for the
    # good day 2013-01-04 is judged on its own, and the bad day keeps its status
    deliver(plumbline_home, 1, 4, day_rows(1, 4, 150))
    one = materialize(flights, instance, "2013-01-04")[names.CONTRACT_BY_PARTITION]
    assert one.passed and one.partition == "2013-01-04" and one.metadata["delivered"].value == 350, "both deliveries of the day"
    assert statuses(instance) == {"2013-01-02": "SUCCEEDED", "2013-01-03": "FAILED", "2013-01-04": "SUCCEEDED"}
    assert not materialize(flights, instance, "2013-01-04")[RULE].passed, "the asset-level rule check still sees 2013-01-03"


def test_only_partitioned_raw_assets_carry_the_partitioned_check():
    contracts = load_contracts()
    for c in contracts.values():
        specs = {s.name: s for s in raw_asset(c).check_specs}
        assert (names.CONTRACT_BY_PARTITION in specs) == bool(c.partitioning)
        if c.partitioning:
            assert specs[names.CONTRACT_BY_PARTITION].partitions_def is not None
            assert all(s.partitions_def is None for n, s in specs.items() if n != names.CONTRACT_BY_PARTITION)
