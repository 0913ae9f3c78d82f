"""Training: the loop (loop.py, method-agnostic) and its input stream (data.py)."""
