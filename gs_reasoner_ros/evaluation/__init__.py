"""Benchmark evaluation: the authors' metrics (metrics.py) and runners over a checkpoint (cli.py)."""
