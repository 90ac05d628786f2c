"""Rebuilding partitions from bronze: contract casts and row rules (conform), the one-transaction
delete+insert of a partition range (partitions), restatements, and each partition's own metadata."""
