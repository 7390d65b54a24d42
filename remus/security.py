"""CURVE keys: making them, reading them, and putting them on a client's or worker's socket.

Security is ZeroMQ's own (CurveZMQ, with pyzmq's ``zmq.auth`` for key files and the broker's
ZAP handler); remus writes no cryptography. A key pair is two files in pyzmq's certificate
format, ``NAME.key`` (public, safe to copy anywhere) and ``NAME.key_secret`` (readable by its
owner only). A peer finds its keys, in order, in:

- the ``secret_key=`` / ``server_key=`` arguments (a file, or for the server key its 40
  characters of Z85 text);
- ``$REMUS_SECRET_KEY`` (a file) or ``$REMUS_SECRET_KEY_Z85`` (the secret key itself, how a
  broker hands a key to the workers it spawns without a command line), and
  ``$REMUS_SERVER_KEY`` (a file or the Z85 text).

Neither means plain mode (no encryption, no authentication), the default for local use. One
without the other is an error that says which is missing.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.auth

from remus.errors import ConfigError

#: a CURVE key in Z85 text is 40 characters
Z85_LENGTH = 40
#: the environment variables a peer reads its keys from
SECRET_KEY_ENV = "REMUS_SECRET_KEY"
SECRET_KEY_Z85_ENV = "REMUS_SECRET_KEY_Z85"
SERVER_KEY_ENV = "REMUS_SERVER_KEY"
#: ZAP domains of the broker's sockets (the status socket takes client keys)
CLIENT_DOMAIN = "remus-clients"
WORKER_DOMAIN = "remus-workers"

KeyArg = str | os.PathLike[str] | None


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both halves as Z85 bytes."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print a secret by accident
        return f"KeyPair(public={self.public.decode()!r})"


#: a peer's own key: a secret key file, a KeyPair, None (from the environment, else plain
#: mode) or False (plain mode whatever the environment says)
SecretArg = str | os.PathLike[str] | KeyPair | Literal[False] | None


@dataclass(frozen=True, slots=True)
class PeerKeys:
    """What a client or worker needs to reach a broker in secure mode."""

    #: this peer's own key pair
    own: KeyPair
    #: the broker's public key (Z85)
    server: bytes

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (before it connects) a CURVE client of the broker."""
        sock.curve_secretkey = self.own.secret
        sock.curve_publickey = self.own.public
        sock.curve_serverkey = self.server
        # A random routing id: the broker refuses ids it could have assigned itself, which a
        # peer holding another key could guess and claim after their owner disconnects.
        if not sock.routing_id:
            sock.routing_id = b"k" + secrets.token_bytes(15)

    def env(self) -> dict[str, str]:
        """The environment that gives a spawned process these keys (no command line)."""
        return {SECRET_KEY_Z85_ENV: self.own.secret.decode(), SERVER_KEY_ENV: self.server.decode()}


# ------------------------------------------------------------------------------ key files


def new_keys(
    name: str, directory: str | os.PathLike[str] = ".", *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``directory`` (made if missing); the secret
    file is readable by its owner only from the moment it exists. Returns (public, secret)."""
    if not name or os.sep in name or name.startswith("."):
        raise ConfigError(f"{name!r} is not a key name: use a plain file name such as 'alice'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not force:
        for path in (public, secret):
            if path.exists():
                raise ConfigError(f"{path} exists; remove it first or pass --force to replace it")
    # made in a private folder (mode 0700) beside the target, then moved into place
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, stat.S_IRUSR | stat.S_IWUSR)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return public, secret


def public_key_of(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85) in a key file, public or secret."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read a CURVE key from {os.fspath(path)}: {e}") from None
    return _checked(public, path)


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in a secret key file (``NAME.key_secret``)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read a CURVE key from {os.fspath(path)}: {e}") from None
    if secret is None:
        raise ConfigError(
            f"{os.fspath(path)} holds only a public key; give the secret key file "
            "(NAME.key_secret, made by `remus keys new NAME`)"
        )
    return KeyPair(_checked(public, path), _checked(secret, path))


def key_pair_from_z85(secret: str | bytes) -> KeyPair:
    """The key pair whose secret key is ``secret`` (Z85)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    raw = _checked(raw.strip(), f"${SECRET_KEY_Z85_ENV}")
    try:
        return KeyPair(zmq.curve_public(raw), raw)
    except (ValueError, zmq.ZMQError) as e:
        raise ConfigError(f"${SECRET_KEY_Z85_ENV} is not a CURVE secret key: {e}") from None


def server_key(value: str | bytes | os.PathLike[str]) -> bytes:
    """A broker's public key from its 40 Z85 characters or from a key file."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = os.fspath(value)
    if len(text) == Z85_LENGTH and not os.path.exists(text):
        return _checked(text.encode(), "the server key")
    return public_key_of(text)


def _checked(key: bytes, where: object) -> bytes:
    if len(key) != Z85_LENGTH:
        raise ConfigError(f"{where}: not a CURVE key (want 40 characters of Z85 text)")
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError):
        raise ConfigError(f"{where}: not a CURVE key (not Z85 text)") from None
    return key


# ------------------------------------------------------------------------------ a peer's keys


def peer_keys(server: KeyArg | bytes = None, secret: SecretArg = None) -> PeerKeys | None:
    """The keys a client or worker uses: from the arguments, else the environment, else None
    (plain mode; ``secret=False`` forces it). Raises ConfigError naming what is missing when
    only one half is given."""
    if secret is False:
        return None
    server = server if server is not None else os.environ.get(SERVER_KEY_ENV) or None
    own: KeyPair | None
    if isinstance(secret, KeyPair):
        own = secret
    elif secret is not None:
        own = load_key_pair(secret)
    elif os.environ.get(SECRET_KEY_Z85_ENV):
        own = key_pair_from_z85(os.environ[SECRET_KEY_Z85_ENV])
    elif os.environ.get(SECRET_KEY_ENV):
        own = load_key_pair(os.environ[SECRET_KEY_ENV])
    else:
        own = None
    if own is None and server is None:
        return None
    if own is None:
        raise ConfigError(
            "a server key was given but no secret key of this peer's own: pass secret_key= "
            f"(--key, ${SECRET_KEY_ENV}) with the file `remus keys new NAME` wrote"
        )
    if server is None:
        raise ConfigError(
            "a secret key was given but not the broker's public key: pass server_key= "
            f"(--server-key, ${SERVER_KEY_ENV}) with the broker's .key file or its Z85 text"
        )
    return PeerKeys(own, server_key(server))


class HandshakeWatch:
    """Why the CURVE handshake with the broker failed, if it did: read from a socket monitor
    when a call times out, so a refused key says so instead of "is it running?"."""

    EVENTS = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
    )

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._monitor: zmq.Socket[Any] | None = sock.get_monitor_socket(self.EVENTS)
        self._failure = ""

    def failure(self) -> str:
        """The last handshake's failure in words ("" if none failed since one succeeded)."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failure = ""
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._failure = (
                    "it refused this peer's key: is its public key (the .key file beside "
                    "the secret one) in the broker's allow-list folder?"
                )
            else:
                self._failure = (
                    "the encrypted handshake with it failed: is server_key the broker's public "
                    "key, and does the broker run in secure mode (--secret-key)?"
                )
        return self._failure

    def close(self, sock: zmq.Socket[Any]) -> None:
        if self._monitor is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self._monitor = None
