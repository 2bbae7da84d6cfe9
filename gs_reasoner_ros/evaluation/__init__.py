"""Benchmark evaluation: the official metrics (metrics.py, grounding.py; plain box helpers in
boxes.py), runners over a checkpoint (runners.py, cli.py) and the saved-prediction scorer (scoring.py)."""
