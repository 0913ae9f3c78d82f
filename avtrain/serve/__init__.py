"""A trained model on raw media: load, embed, match, score, export (inference.py)."""
