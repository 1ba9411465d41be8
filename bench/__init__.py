"""Benchmarks: how fast Qunban is against the floors it stands on, and how its cost grows."""
