"""Experiments: the benchmark, the scale and speed benchmarks, the set builder, the T-Stitch report, the demo and their plots."""
