"""What is allowed and what failed: the dead-letter queue (the one owner of ops.dead_letter), the
contract rule checks run by Great Expectations, and the schema-conformance checks."""
