"""Benchmarks: throughput, memory and scaling of the batch job (run with `python -m bench.X`)."""
