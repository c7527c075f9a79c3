"""Loopback fake servers that speak the real protocols, for tests and benchmarks."""
