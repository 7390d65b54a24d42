"""``GatewayConfig``: how the HTTP gateway behaves, every default in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remus.errors import ConfigError

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The options of ``remus http`` (docs/http.md). Times are seconds."""

    #: the broker's client endpoint (None: $REMUS_CLIENT, else tcp://127.0.0.1:50505)
    broker: str | None = None
    #: secure mode: the broker's public key and the gateway's own secret key (as for
    #: ``AsyncClient``; None: the environment's, else plain mode)
    server_key: Any = None
    secret_key: Any = None
    #: how long the broker may stay silent before a call gives up (the client's ``timeout``)
    broker_timeout: float = 10.0
    #: HTTP requests waiting on jobs of one io type at once; past it: 503 with Retry-After
    max_pending: int = 1000
    #: ``POST /run``'s deadline when the request gives no ``?timeout=``
    run_timeout: float = 60.0
    #: the longest ``?timeout=`` a request may ask for
    max_timeout: float = 24 * 3600.0
    #: the largest request body (all parts of a multipart body together)
    max_body: int = GIB
    #: bearer tokens let in; None: no authentication (every caller is let in)
    tokens: tuple[str, ...] | None = None
    #: where uploaded files wait until the broker has them (None: the system's temp folder)
    upload_dir: str | None = None
    #: Retry-After: service rates are observed over this window, and the answer is clamped
    rate_window: float = 30.0
    retry_floor: int = 1
    retry_ceiling: int = 60
    #: seconds between two keep-alive comments on an idle server-sent event stream
    keepalive: float = 15.0

    def __post_init__(self) -> None:
        for name in ("broker_timeout", "run_timeout", "max_timeout", "rate_window", "keepalive"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"GatewayConfig.{name} must be positive")
        if self.max_pending < 1:
            raise ConfigError("GatewayConfig.max_pending must be 1 or more")
        if self.max_body < 1:
            raise ConfigError("GatewayConfig.max_body must be 1 byte or more")
        if not 1 <= self.retry_floor <= self.retry_ceiling:
            raise ConfigError("GatewayConfig: use 1 <= retry_floor <= retry_ceiling")
        if self.run_timeout > self.max_timeout:
            raise ConfigError("GatewayConfig.run_timeout must not exceed max_timeout")
        if self.tokens is not None and not self.tokens:
            raise ConfigError("GatewayConfig.tokens is empty: give at least one, or None")

    @property
    def open(self) -> bool:
        """True when every caller is let in (no tokens)."""
        return self.tokens is None
