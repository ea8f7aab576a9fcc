"""Processes a benchmark runs as contenders (not benchmarks themselves: no JSON, no targets)."""
