"""Benchmarks and the README's results table (`make bench`, `make table`)."""
