"""Benchmarks. Each prints figures (JSON lines); none asserts timings."""
