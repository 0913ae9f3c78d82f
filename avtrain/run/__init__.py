"""A run: its settings (config.py), checkpoints and device (checkpoint.py), its manifest (manifest.py)."""
