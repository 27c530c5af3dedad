"""The async twins, written by hand; ``scripts/unasync.py`` writes the sync ones from them."""
