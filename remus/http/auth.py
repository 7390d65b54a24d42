"""Bearer tokens: who may call the gateway.

``remus http --tokens FILE`` reads one token per line (blank lines and lines starting with
``#`` are skipped). Every route but ``GET /healthz`` then needs ``Authorization: Bearer
<token>``; anything else is answered 401. The gateway itself reaches the broker with its own
key (``--key``), so HTTP is no back door into a broker in secure mode: a caller gets what the
gateway's key may do, and only with a token.

A browser sends no such header for a page or an ``EventSource``: the dashboard signs in once
instead (``GET /`` shows a form, ``POST /login`` checks the token and sets it as the cookie
``remus_token``: HttpOnly, SameSite=Strict). The cookie lets in the dashboard's own reads
(:func:`cookie_route`: ``GET`` of ``/``, ``/static/*`` and ``/api/*``) and nothing else: the
job routes still need the header, so a page elsewhere cannot submit or cancel with it.

Tokens are compared in constant time: each candidate's SHA-256 digest is compared with every
token's with ``hmac.compare_digest``, all of them, so neither the time taken nor the token's
length says which token came close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from remus.errors import ConfigError

#: the routes anyone may call (``/`` and ``/login`` check for themselves: they sign in)
PUBLIC = frozenset({"/healthz", "/", "/login"})
#: the dashboard's cookie, set by ``POST /login``
COOKIE = "remus_token"


def cookie_route(method: str, path: str) -> bool:
    """Whether the sign-in cookie lets a request in: the dashboard's own reads only."""
    return method == "GET" and (path == "/" or path.startswith(("/static/", "/api/")))


def load_tokens(path: str) -> tuple[str, ...]:
    """The tokens in file ``path``; ConfigError if it cannot be read or holds none."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the tokens file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the tokens file {path} is not UTF-8 text") from None
    tokens = tuple(t for t in (line.strip() for line in lines) if t and not t.startswith("#"))
    if not tokens:
        raise ConfigError(f"the tokens file {path} holds no token (one per line)")
    for token in tokens:
        if any(c.isspace() for c in token):
            raise ConfigError(f"the tokens file {path} has a token with a space in it")
    return tokens


class Tokens:
    """The tokens let in, kept as digests."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]
        if not self._digests:
            raise ValueError("no tokens")

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the tokens."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        return self.valid(given.strip()) and scheme.lower() == "bearer"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` is one of the tokens."""
        candidate = _digest(token or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(candidate, digest)  # no early exit: constant time
        return found and bool(token)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"<Tokens {len(self._digests)}>"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
