"""When things run: the sensors that turn deliveries, Dagster events and finished runs into runs
and lineage, and the partition ranges they launch."""
