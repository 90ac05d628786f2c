"""Taking deliveries in: the landing zone, readers, the immutable bronze copy, lateness, and the
detection of schema changes with the contract's schemaEvolution policy, before any table is touched."""
