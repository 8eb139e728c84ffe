"""Benchmarks of qdbpool against its peers: run one with `python -m bench.NAME` from the
repository's root, or all with `make bench`. docs/benchmarks.md gives the method."""
