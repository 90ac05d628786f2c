"""Which OpenLineage transport to use, configured the standard way: openlineage.yml (OPENLINEAGE_CONFIG,
the working directory or ~/.openlineage), OPENLINEAGE__* variables, OPENLINEAGE_URL (+ OPENLINEAGE_API_KEY),
OPENLINEAGE_DISABLED. Only a configured transport (one with a `type`, or OPENLINEAGE_URL) replaces the
default, JSON lines under $PLUMBLINE_HOME/lineage/; transport settings without a type are reported.

OpenLineage's client is imported by the functions that build or configure one: with its transports'
libraries (requests, httpx2) it costs about 0.3 s of CPU, and a step process that loads the code
location (which holds this resource) never emits."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import dagster as dg

from orchestration import settings

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
# Transports whose client library is optional, and the plumbline extra that installs it.
EXTRAS = {"kafka": "kafka", "msk-iam": "msk-iam", "gcplineage": "gcplineage", "amazon_datazone_api": "datazone"}
_warned: set[str] = set()


def disabled() -> bool:
    return os.getenv("OPENLINEAGE_DISABLED", "").lower().strip() == "true"


def namespace() -> str:
    """The job namespace; OPENLINEAGE_NAMESPACE as in OpenLineage's other integrations."""
    return os.getenv("OPENLINEAGE_NAMESPACE") or "plumbline"


def transport_settings() -> dict:
    """The `transport` section the client would read from openlineage.yml and OPENLINEAGE__* variables."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.utils import deep_merge_dicts

    config: dict = {}
    if path := OpenLineageClient._find_yaml_config_path():
        config = OpenLineageClient._get_config_file_content(path)
    config = deep_merge_dicts(OpenLineageClient._load_config_from_env_variables() or {}, config)
    return config.get("transport") or {}


def kind() -> str | None:
    """The configured transport type (`http` for OPENLINEAGE_URL), or None for the default file."""
    return transport_settings().get("type") or ("http" if os.getenv("OPENLINEAGE_URL") else None)


def configured() -> bool:
    return kind() is not None


def default_events_file():
    return settings.plumbline_home() / "lineage" / EVENTS_FILE


def install_hint(transport_kind: str | None) -> str:
    extra = EXTRAS.get(transport_kind or "")
    return f"; install it with `pip install 'plumbline[{extra}]'`" if extra else ""


def client() -> OpenLineageClient:
    """A client on the configured transport, or on the default JSON-lines file. Raises when the
    configured transport cannot be built (its library is missing, its settings are wrong)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.console import ConsoleTransport
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.transport.noop import NoopConfig, NoopTransport

    if disabled():
        return OpenLineageClient(transport=NoopTransport(NoopConfig()))
    if configured():
        c = OpenLineageClient()
        if isinstance(c.transport, ConsoleTransport):
            _show_console_events()
        return c
    if partial := transport_settings():
        _warn_once(f"OpenLineage transport settings without a transport type ({_where(partial)}) are ignored: events "
                   f"go to {default_events_file()}; set OPENLINEAGE__TRANSPORT__TYPE (http, async_http, kafka, console, "
                   "file, ...) or `transport.type` in openlineage.yml to use another transport")
    path = default_events_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))


class LineageTransport(dg.ConfigurableResource):
    """The OpenLineage transport as the deployment mapping hands it out (orchestration/resources.py):
    configured the standard way (see the module docstring), else JSON lines under $PLUMBLINE_HOME/lineage/."""

    def disabled(self) -> bool:
        return disabled()

    def kind(self) -> str | None:
        return kind()

    def client(self) -> OpenLineageClient:
        return client()


def _where(partial: dict) -> str:
    from openlineage.client import OpenLineageClient

    names = sorted(k for k in os.environ if k.startswith("OPENLINEAGE__TRANSPORT__"))
    path = OpenLineageClient._find_yaml_config_path()
    return ", ".join(names + ([f"`transport` in {path}"] if path else [])) or ", ".join(sorted(partial))


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _show_console_events() -> None:
    """The console transport writes each event as an INFO log record: make sure one reaches stderr
    in a process (such as `plumbline sync`) that configured no logging."""
    from openlineage.client.transport.console import ConsoleTransport

    console = logging.getLogger(ConsoleTransport.__module__)
    if console.getEffectiveLevel() > logging.INFO:
        console.setLevel(logging.INFO)
    if not console.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        console.addHandler(handler)
