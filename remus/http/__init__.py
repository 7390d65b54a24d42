"""``remus http``: an HTTP front door to a broker, for callers that do not speak ZeroMQ.

``POST /run/{input}/{output}`` submits the body as a job and answers with its result;
``POST /jobs/...`` queues it and ``/jobs/{id}`` (status, ``/result``, ``/progress`` as
server-sent events, ``DELETE``) follows it. The gateway is one aiohttp application on one
``remus.aio`` client: every waiting request is a coroutine, bounded per io type (503 with
``Retry-After`` past ``--max-pending``). Needs the ``http`` extra (aiohttp). See docs/http.md.

The modules: ``app`` (the application and its routes), ``handlers`` and ``progress`` (the job
routes), ``runner`` (the jobs of waiting requests, submitted and collected together),
``bodies`` and ``results`` (HTTP bodies in and out), ``throttle``, ``auth`` (bearer tokens),
``gateway`` (the shared state), ``client`` (the gateway's AsyncClient), ``sse``, ``openapi``,
``serve`` (listening), ``config``; ``dashboard``, ``feed`` and ``snapshot``: the live page at
/ (docs/dashboard.md).
"""

from remus.http.app import make_app
from remus.http.config import GatewayConfig
from remus.http.serve import Serving

__all__ = ["GatewayConfig", "Serving", "make_app"]
