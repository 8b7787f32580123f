"""Benchmark scripts (speed, memory): each prints a markdown table; see README "Performance"."""
