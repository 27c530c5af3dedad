"""Sending: the only layer of a call that does network I/O.

- ``protocols``: the sender abstraction (an HTTP client, as the engines and probes see it);
- ``aiohttp_sender`` (async) and ``httpx_senders`` (sync, and httpx transports handed in);
- ``base``, ``_async/`` (by hand) and ``_sync/`` (generated): the engines that run a call's
  attempts, the open stream, the bounded read of a body;
- ``failures``: what an HTTP library's exception means; ``tls``: a route's ``verify``;
- ``transport``: httpx transports that route, for the OpenAI SDK and other httpx clients;
- ``log``: the balancer's health changes, logged.
"""
