"""Platform-wide asset policy, stated as rules over the loaded code location: every asset writes the
warehouse through the one `warehouse` pool, a range of partitions backfills as one run, owners are
those of the contract the asset is built from, and the layer tag is the asset's group."""

from __future__ import annotations

import dagster as dg
import pytest

from contracts.loader import load_contracts

LAYERS = ("bronze", "raw", "core", "marts", "ml")
PER_SOURCE = ("bronze", "raw")  # one asset per contract, tagged with its source
BUILT_ON = "flights"  # core, marts and ml are built from the flights contract, and owned by its owners


@pytest.fixture(scope="module")
def graph():
    from orchestration.definitions import defs

    return defs.resolve_asset_graph()


@pytest.fixture(scope="module")
def nodes(graph) -> dict[str, object]:
    return {key.to_user_string(): graph.get(key) for key in graph.materializable_asset_keys}


def own_tags(node) -> dict[str, str]:
    """Tags set by plumbline (kinds are tags too, under dagster/kind/)."""
    return {k: v for k, v in node.tags.items() if not k.startswith("dagster/kind/")}


def test_the_rules_cover_every_asset_of_every_layer(nodes):
    sources = load_contracts()
    assert {key.split("/")[0] for key in nodes} == set(LAYERS)
    assert {key for key in nodes if key.split("/")[0] in PER_SOURCE} == {f"{g}/{s}" for g in PER_SOURCE for s in sources}
    assert len(nodes) == 2 * len(sources) + 2 + 5  # core.flights, marts.carrier_daily and five ml assets


def test_every_asset_writes_through_the_warehouse_pool(nodes):
    for key, node in nodes.items():
        assert node.pools == {"warehouse"}, key
        assert node.assets_def.op.pool == "warehouse", key


def test_a_partitioned_asset_backfills_a_range_in_one_run_and_an_unpartitioned_one_has_no_policy(nodes):
    partitioned = {key for key, node in nodes.items() if node.partitions_def is not None}
    # today: the event-time sources' raw tables, core, marts, and the ml features and predictions
    sources = load_contracts()
    assert partitioned == ({f"raw/{n}" for n, c in sources.items() if c.partitioning}
                           | {"core/flights", "marts/carrier_daily", "ml/flight_features", "ml/flight_predictions"})
    for key, node in nodes.items():
        expected = dg.BackfillPolicy.single_run() if key in partitioned else None
        assert node.backfill_policy == expected, key


def test_owners_are_those_of_the_contract_the_asset_is_built_from(nodes):
    sources = load_contracts()
    for key, node in nodes.items():
        group, name = key.split("/")
        contract = sources[name] if group in PER_SOURCE else sources[BUILT_ON]
        assert contract.owners, key
        assert list(node.owners) == list(contract.owners), key


def test_the_layer_tag_is_the_group_and_per_source_assets_name_their_source(nodes):
    for key, node in nodes.items():
        group, name = key.split("/")
        assert node.group_name == group, key
        expected = {"plumbline/source": name, "plumbline/layer": group} if group in PER_SOURCE else {"plumbline/layer": group}
        assert own_tags(node) == expected, key
