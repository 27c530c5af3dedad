"""Active health probes: a look at each route (``GET /health``, ``GET /v1/models``), on demand
(``provider.health()``, ``is_available()``, the healthcheck command) or in the background
(``checker.ActiveChecker``, ``llm.health.check_interval``).

- ``check``: ``RouteCheck`` (what one look found) and the pure verdict on what was answered;
- ``_async/look.py``: one look at one route over a sender (the sync twin is generated);
- ``run``: every route at once (threads, or tasks);
- ``checker``: the background thread that tells the balancer.
"""
