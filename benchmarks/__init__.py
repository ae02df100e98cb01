"""Benchmarks: one module per figure, each printing numbers. Run all: `make bench`."""
