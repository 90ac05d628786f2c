"""Fast tests of one module each: real DuckDB and Dagster objects, no synced home."""
