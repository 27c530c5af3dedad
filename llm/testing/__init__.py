"""Test helpers for llm-routes.

How this works
--------------
:class:`FakeVLLM` is an in-process fake of a vLLM 0.32 OpenAI-compatible server
(pure asyncio HTTP/1.1 on a private event loop in a daemon thread) with fault
injection; :func:`start_fleet` starts several of them. The implementation lives
in ``llm.testing._server`` (lifecycle, routing, faults), ``llm.testing._http``
(the HTTP/1.1 protocol) and ``llm.testing._vllm`` (vLLM-exact payloads);
``python -m llm.testing.fake_vllm`` runs one from the command line.
"""

from llm.testing._server import FakeVLLM, RecordedRequest, start_fleet
from llm.testing.fleet import BatchingSpec as BatchingSpec

__all__ = ["FakeVLLM", "RecordedRequest", "start_fleet"]
