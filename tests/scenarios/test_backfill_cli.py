"""`plumbline backfill` refuses a bad request before anything runs, and --dry-run says what it would touch."""

from __future__ import annotations

import pytest

from orchestration.ops.cli import main


@pytest.mark.parametrize("args, message", [
    (["--assets", "key:raw/flights+", "--from", "2013-02-30", "--to", "2013-03-01"], "--from '2013-02-30' is not a date like 2013-01-31"),
    (["--assets", "key:raw/flights+", "--from", "2013-03-02", "--to", "2013-03-01"], "--to 2013-03-01 is before --from 2013-03-02"),
    (["--assets", "key:raw/fligths+", "--from", "2013-03-01", "--to", "2013-03-02"], "matches no known asset"),
    (["--assets", "raw/nope", "--from", "2013-03-01", "--to", "2013-03-02"], "Known assets: bronze/airlines"),
    (["--assets", "key:raw/flights", "--from", "2012-12-31", "--to", "2013-01-02"],
     "2012-12-31 .. 2013-01-02 is outside the partitions of raw/flights (2013-01-01 .. 2013-12-31)"),
    (["--assets", "key:raw/planes", "--from", "2013-01-01", "--to", "2013-01-02"], "raw/planes has no daily partitions"),
])
def test_bad_requests_fail_before_anything_runs(plumbline_home, monkeypatch, capsys, args, message):
    monkeypatch.setenv("DAGSTER_HOME", str(plumbline_home / "dagster"))
    # --in-process would run here, and the default --url points at no server: neither is reached.
    assert main(["backfill", *args, "--in-process"]) == 2
    assert message in capsys.readouterr().err
    assert not (plumbline_home / "dagster").exists() and not (plumbline_home / "warehouse.duckdb").exists()


def test_dry_run_lists_assets_and_partitions(plumbline_home, capsys):
    assert main(["backfill", "--assets", "key:raw/flights+", "--from", "2013-02-01", "--to", "2013-02-28", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "core/flights             28 partition(s): 2013-02-01 .. 2013-02-28",
        "marts/carrier_daily      28 partition(s): 2013-02-01 .. 2013-02-28",
        "ml/flight_features       28 partition(s): 2013-02-01 .. 2013-02-28",
        "ml/flight_predictions    28 partition(s): 2013-02-01 .. 2013-02-28",
        "raw/flights              28 partition(s): 2013-02-01 .. 2013-02-28",
        "not partitioned, left out: ml/delay_model, ml/model_evaluation, ml/training_set (the train_model job rebuilds "
        "them; plumbline sync runs it when the training windows change)",
        "dry run: 5 asset(s), 28 partition(s); nothing launched",
    ]
    assert not (plumbline_home / "warehouse.duckdb").exists()
