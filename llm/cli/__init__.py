"""The command-line tools: ``llm-healthcheck`` (``healthcheck``), ``llm-bench`` (``bench``,
with ``loadtest`` and ``bench_report``) and ``llm-demo`` (``demo``). The library never imports
them."""
