"""The facets plumbline adds beyond openlineage-python's classes: two custom facets (dead letters, and
each event's identity) whose JSON schemas ship in schemas/, and the data-quality metrics facet stamped
with a published schema version."""

from __future__ import annotations

from pathlib import Path

import attr
from openlineage.client.facet_v2 import DatasetFacet, RunFacet, data_quality_metrics_dataset

PRODUCER = "https://github.com/plumbline/plumbline/tree/main/orchestration/lineage"
# Custom facet schemas are published under this prefix; the file after it ships in SCHEMAS_DIR.
SCHEMA_URL_PREFIX = "https://plumbline.dev/spec/"
SCHEMAS_DIR = Path(__file__).parent / "schemas"


@attr.define
class DeadLetterDatasetFacet(DatasetFacet):
    """Rows of a materialization that went to ops.dead_letter, by contract rule."""

    rows: int = attr.field(default=0)
    byRule: dict[str, int] = attr.field(factory=dict)  # noqa: N815
    table: str = attr.field(default="ops.dead_letter")

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_URL_PREFIX + "facets/1-0-0/DeadLetterDatasetFacet.json#/$defs/DeadLetterDatasetFacet"


@attr.define
class EventIdentityRunFacet(RunFacet):
    """The same id every time this event is built or sent: delivery is at least once, so a consumer
    drops an event whose id it has already seen."""

    eventId: str = attr.field()  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_URL_PREFIX + "facets/1-0-0/EventIdentityRunFacet.json#/$defs/EventIdentityRunFacet"


@attr.define
class DataQualityMetricsDatasetFacet(data_quality_metrics_dataset.DataQualityMetricsDatasetFacet):
    """openlineage-python 1.54 stamps 1-0-1, which the specification never published; 1-0-0 has the
    same fields we fill (rowCount, columnMetrics)."""

    @staticmethod
    def _get_schema() -> str:
        return "https://openlineage.io/spec/facets/1-0-0/DataQualityMetricsDatasetFacet.json#/$defs/DataQualityMetricsDatasetFacet"


def schema_file(schema_url: str) -> Path | None:
    """The shipped file a custom facet's _schemaURL points at (None for openlineage.io URLs)."""
    if not schema_url.startswith(SCHEMA_URL_PREFIX):
        return None
    return SCHEMAS_DIR / schema_url[len(SCHEMA_URL_PREFIX):].split("#")[0].rsplit("/", 1)[-1]
