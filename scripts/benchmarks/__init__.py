"""Benchmarks of the worker against baselines measured in the same run (scripts/bench)."""
