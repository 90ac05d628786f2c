"""The production Dagster instance's storage: dagster-postgres, opened through psycopg2.

dagster-postgres hands its URL to SQLAlchemy as is, and SQLAlchemy 2.1 (which the project pins)
opens a bare postgresql:// with psycopg 3, which is not installed (psycopg2 is, for dagster-postgres,
DuckLake's catalog and MLflow). This storage takes the same configuration as `storage: postgres:`
and names the psycopg2 driver, so PLUMBLINE_INSTANCE_URL is an ordinary PostgreSQL URL like every
other plumbline setting. dagster_production.yaml names it; the URL stays an `env:` reference there,
so it is resolved by each process and never written into the instance's records."""

from __future__ import annotations

from dagster._core.storage.config import pg_config
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config


def psycopg2_url(url: str) -> str:
    """postgresql://… or postgres://… as SQLAlchemy opens it with psycopg2; a URL naming a driver is kept."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url.removeprefix(scheme)
    return url


class PostgresStorage(DagsterPostgresStorage):
    """DagsterPostgresStorage whose URL names the psycopg2 driver."""

    @classmethod
    def config_type(cls):
        return pg_config()

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PostgresStorage:
        return cls(inst_data=inst_data, postgres_url=psycopg2_url(pg_url_from_config(config_value)),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))
