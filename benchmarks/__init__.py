"""Benchmarks: scripts that measure the stages; their figures are kept in `benchmarks/results/`."""
