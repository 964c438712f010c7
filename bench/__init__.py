"""Benchmarks of the service (``make bench``); see bench/run.py."""
