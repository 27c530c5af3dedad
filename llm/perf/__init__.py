"""Benchmarks of the library itself: CPU per request, routing cost, import time, policies."""
