"""Evaluation: lists (tuple_lists.py), embeddings (embeddings.py), metrics by name (metrics.py),
evaluate (evaluate.py), metrics.json read back (results.py), diagnostics and report."""
