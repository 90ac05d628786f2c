"""Which OpenLineage transport to use, configured the standard way: openlineage.yml (OPENLINEAGE_CONFIG,
the working directory or ~/.openlineage), OPENLINEAGE__* variables, OPENLINEAGE_URL (+ OPENLINEAGE_API_KEY),
OPENLINEAGE_DISABLED. With none of them, JSON lines under $PLUMBLINE_HOME/lineage/."""

from __future__ import annotations

import os

from openlineage.client import OpenLineageClient
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.noop import NoopTransport

from orchestration import settings

EVENTS_FILE = "events.jsonl"


def disabled() -> bool:
    return os.getenv("OPENLINEAGE_DISABLED", "").lower().strip() == "true"


def namespace() -> str:
    """The job namespace; OPENLINEAGE_NAMESPACE as in OpenLineage's other integrations."""
    return os.getenv("OPENLINEAGE_NAMESPACE") or "plumbline"


def configured() -> bool:
    """True when the user configured a transport in any of OpenLineage's standard places."""
    return bool(OpenLineageClient._find_yaml_config_path() or os.getenv("OPENLINEAGE_URL")
                or any(k.startswith(OpenLineageClient.DYNAMIC_ENV_VARS_PREFIX) for k in os.environ))


def default_events_file():
    return settings.plumbline_home() / "lineage" / EVENTS_FILE


def client() -> OpenLineageClient:
    if disabled() or configured():
        return OpenLineageClient()
    path = default_events_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))


def is_noop(c: OpenLineageClient) -> bool:
    return isinstance(c.transport, NoopTransport)
