"""The sync twins, written by scripts/unasync.py from the async ones."""
