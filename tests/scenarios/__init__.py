"""Scenarios: plumbline end to end on real deliveries, homes, instances and daemons."""
