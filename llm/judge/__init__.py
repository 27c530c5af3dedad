"""What an answer or an exception means, for the route and for the call: pure, no I/O.

- ``status``: a status code's verdict (success, the request's fault, the route's failure), the
  typed error for an error status, the Retry-After header, and outcome names for attempts.
- ``error_body``: the server's own words in its error objects, whatever vLLM shape they take.
- ``answers``: a non-streamed answer's body: usable JSON, or what is wrong with it.
- ``sse`` and ``stream``: the event stream's framing, and what its events carry.

Nothing here imports an HTTP library: the senders (``llm.send``) hand over status codes,
headers and bytes, and apply the verdicts to the call's plan.
"""
