"""Observability built on the hooks of ``llm.events``: Prometheus metrics (``prometheus``) and
OpenTelemetry spans (``otel``). Each module needs its optional dependency
(``pip install 'llm-routes[prometheus]'``, ``'llm-routes[opentelemetry]'``); this package
imports neither by itself."""
