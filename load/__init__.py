"""Benchmarks and load harnesses; loopback only, bounded, stop by themselves."""
