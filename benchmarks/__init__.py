"""Benchmarks: `python -m benchmarks.NAME` prints figures and ratios against a baseline run side by side."""
