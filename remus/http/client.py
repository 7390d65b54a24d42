"""``GatewayClient``: the one ``AsyncClient`` every HTTP request of the gateway shares.

It differs from the plain one in a single way: **files always travel as bytes.** The gateway
declares a host id of its own (its machine's plus ``+http``), so the broker and the workers
treat it as a client on another host: an uploaded file is read (or, over 4 MiB, streamed
through the broker's spool) when the job is submitted, and a file result comes back as bytes.
So the gateway's temporary upload folder can go as soon as the broker holds the job, no worker
is ever handed a path inside it, and no result is a path into a worker's folder that the
gateway's user may not be able to read.
"""

from __future__ import annotations

from remus.aio import AsyncClient
from remus.hostid import host_id
from remus.security import KeyArg, SecretArg


def gateway_host() -> str:
    """The host id the gateway declares: never the id of a real host, so files go as bytes."""
    return f"{host_id()}+http"


class GatewayClient(AsyncClient):
    """An ``AsyncClient`` whose files always travel as bytes (see the module's docstring)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        server_key: KeyArg | bytes = None,
        secret_key: SecretArg = None,
    ) -> None:
        super().__init__(endpoint, timeout=timeout, server_key=server_key, secret_key=secret_key)
        self.host = gateway_host()
