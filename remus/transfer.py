"""Large files in chunks: up to the broker's spool (``put``) and back down (``get``).

A file larger than :data:`remus.files.STREAM_FROM` never travels inside a job or a result
message. Its sender uploads it first, :data:`CHUNK` bytes at a time with at most
:data:`WINDOW` chunks unanswered (the broker's answer to each chunk is the credit for the
next), and the message carries a :class:`~remus.protocol.BlobRef` instead of the bytes.
Its receiver downloads it the same way, straight into the file it is meant for. So no
process holds more than ``CHUNK * WINDOW`` bytes of a file, whatever its size.

The sender hashes the bytes as they pass (SHA-256) and the chunk that ends the file carries
the hash; the broker keeps it with the file. Every receiver hashes what it gets and checks it
against that hash: a mismatch (a byte changed on the way, or on the broker's disk) removes the
partial file and raises FileError. Each byte is hashed twice in all, by its sender and by its
receiver: the broker does not hash what only passes through its spool. A
download is written to a hidden ``.part`` file beside its target and renamed into place only
when it is whole and checked, so nobody ever finds a truncated file under the real name.

Both directions outlive a silent broker: after :data:`SILENCE` seconds without an answer the
chunks in flight are sent again (``put`` and ``get`` are idempotent), and a broker that
restarted with its journal answers them. An upload the broker no longer knows (it restarted
mid-upload; the partial file is gone) starts again from the first chunk.

These functions drive a :class:`~remus.client.Client` (its socket, request ids and errors):
a client uses its own; a worker opens one on its worker endpoint, where ``put`` and ``get`` are
answered too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from remus import protocol as p
from remus.errors import FileError, ServerError, TimeoutError

if TYPE_CHECKING:
    from remus.client.client import Client

log = logging.getLogger(__name__)

#: bytes per chunk
CHUNK = 4 * 1024 * 1024
#: chunks in flight per transfer (the credit): at most CHUNK * WINDOW bytes held per file
WINDOW = 4
#: seconds without an answer before the chunks in flight are sent again
SILENCE = 5.0
#: give up after this many silences in a row (each SILENCE long)
SILENCES = 6
#: an upload restarts from its first chunk at most this many times (the broker restarted)
RESTARTS = 3


def new_blob_id() -> str:
    return secrets.token_hex(16)


class _Hasher:
    """The SHA-256 of a file's chunks in order, computed on a thread of its own (hashlib lets
    go of the GIL), so that hashing overlaps reading, writing and the network. At most WINDOW
    chunks wait for it: a slow hash holds the transfer back rather than memory growing."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="remus-sha256")
        self._pending: deque[Future[None]] = deque()

    def add(self, chunk: Any) -> None:
        if len(self._pending) >= WINDOW:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._sha.update, chunk))

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _silent(client: Client, what: str) -> TimeoutError:
    return TimeoutError(
        f"the broker at {client.endpoint} did not answer for {SILENCE * SILENCES:.0f} s "
        f"while {what}; {client.why_silent()}",
        endpoint=client.endpoint,
    )


def upload(client: Client, path: str, fd: int, size: int) -> p.BlobRef:
    """Upload the open file ``fd`` (``size`` bytes, named ``path`` in messages) to the broker's
    spool; its reference (with the SHA-256 every receiver checks) once the broker has stored
    it whole. ``fd`` stays open."""
    for _ in range(RESTARTS):
        blob = new_blob_id()
        sha = _upload_once(client, path, fd, size, blob)
        if sha is not None:
            return p.BlobRef(blob, size, sha)
        # the broker restarted mid-upload and lost the partial file: start again
    raise FileError(path, f"could not be uploaded: the broker restarted {RESTARTS} times")


def _upload_once(client: Client, path: str, fd: int, size: int, blob: str) -> str | None:
    hasher = _Hasher()
    try:
        return _send_chunks(client, path, fd, size, blob, hasher)
    finally:
        hasher.close()


def _send_chunks(
    client: Client, path: str, fd: int, size: int, blob: str, hasher: _Hasher
) -> str | None:
    inflight: dict[int, tuple[int, bytearray, str]] = {}  # rid -> (offset, chunk, sha)
    offset = 0
    silences = 0
    first = True
    while first or offset < size or inflight:
        while (first or offset < size) and len(inflight) < WINDOW:
            first = False
            n = min(CHUNK, size - offset)
            chunk = bytearray(n)
            got = os.preadv(fd, [chunk], offset) if n else 0
            if got != n:
                raise FileError(path, f"shrank while being sent ({offset + got:,} of {size:,})")
            hasher.add(chunk)
            sha = hasher.hexdigest() if offset + n == size else ""
            rid = client.send(p.PutRequest, blob, offset, size, chunk, sha)
            inflight[rid] = (offset, chunk, sha)
            offset += n
        try:
            got_reply = client.reply_to_any(inflight, time.monotonic() + SILENCE)
        except ServerError as e:
            client.forget(inflight)
            if e.code == "blob-gone":
                return None
            raise FileError(path, f"the broker refused it: {e}") from None
        if got_reply is None:
            silences += 1
            if silences >= SILENCES:
                client.forget(inflight)
                raise _silent(client, f"uploading {path}")
            again = list(inflight.values())
            log.warning(
                "no answer from the broker for %.0f s while uploading %s; sending %d chunks "
                "again from byte %d",
                SILENCE,
                path,
                len(again),
                min(off for off, _, _ in again),
            )
            client.forget(inflight)
            inflight = {
                client.send(p.PutRequest, blob, off, size, chunk, sha): (off, chunk, sha)
                for off, chunk, sha in again
            }
            continue
        silences = 0
        del inflight[got_reply[0]]
    return hasher.hexdigest()


def download(client: Client, ref: p.BlobRef, target: str, *, private: bool = False) -> None:
    """Write the spooled file ``ref`` to ``target``: through ``.NAME.part`` beside it, renamed
    into place once whole and its SHA-256 checked. FileError if it cannot be, and then no file
    is left behind. ``private``: the file is new and only its owner may read it."""
    folder, name = os.path.split(target)
    part = os.path.join(folder, f".{name}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(part, flags, 0o600 if private else 0o666)
    except OSError as e:
        raise FileError(target, f"cannot be written: {e.strerror}") from None
    done = False
    try:
        sha = _download(client, ref, fd, target)
        if ref.sha256 and sha != ref.sha256:
            raise FileError(
                target,
                f"checksum mismatch: the {ref.size:,} bytes received hash to {sha[:16]}…, the "
                f"file sent hashed to {ref.sha256[:16]}… (corrupted in the broker's spool or "
                "on the way); the job's inputs must be sent again",
            )
        if private and os.path.exists(target):
            raise FileError(target, "already exists")
        os.replace(part, target)
        done = True
    finally:
        os.close(fd)
        if not done:
            try:
                os.unlink(part)
            except OSError:
                pass


def _download(client: Client, ref: p.BlobRef, fd: int, target: str) -> str:
    """Fetch every chunk of ``ref`` into ``fd``; the SHA-256 of what was written."""
    hasher = _Hasher()
    try:
        return _fetch_chunks(client, ref, fd, target, hasher)
    finally:
        hasher.close()


def _fetch_chunks(client: Client, ref: p.BlobRef, fd: int, target: str, hasher: _Hasher) -> str:
    size = ref.size
    inflight: dict[int, int] = {}  # rid -> offset
    waiting: dict[int, Any] = {}  # offset -> chunk written but not hashed yet (out of order)
    hashed = 0
    offset = 0
    silences = 0
    told = ""
    while hashed < size:
        while offset < size and len(inflight) < WINDOW:
            n = min(CHUNK, size - offset)
            inflight[client.send(p.GetRequest, ref.id, offset, n)] = offset
            offset += n
        try:
            got = client.reply_to_any(inflight, time.monotonic() + SILENCE)
        except ServerError as e:
            client.forget(inflight)
            raise FileError(target, f"cannot be fetched from the broker: {e}") from None
        if got is None:
            silences += 1
            if silences >= SILENCES:
                client.forget(inflight)
                raise _silent(client, f"fetching {target}")
            again = sorted(set(inflight.values()))
            log.warning(
                "no answer from the broker for %.0f s while fetching %s; asking again from byte %d",
                SILENCE,
                target,
                again[0],
            )
            client.forget(inflight)
            inflight = {
                client.send(p.GetRequest, ref.id, at, min(CHUNK, size - at)): at for at in again
            }
            continue
        silences = 0
        rid, reply = got
        at = inflight.pop(rid)
        data = reply.data if isinstance(reply.data, dict) else {}
        if len(reply.frames) != 1 or data.get("offset") != at or data.get("size") != size:
            raise FileError(target, f"the broker's chunk at {at:,} is malformed: {data!r}")
        chunk = reply.frames[0]
        view = chunk.buffer if hasattr(chunk, "buffer") else memoryview(chunk)
        expected = min(CHUNK, size - at)
        if len(view) != expected:
            raise FileError(
                target, f"the chunk at {at:,} has {len(view):,} bytes, not {expected:,}"
            )
        written = 0
        while written < expected:
            written += os.pwrite(fd, view[written:], at + written)
        waiting[at] = view
        while hashed in waiting:
            piece = waiting.pop(hashed)
            hasher.add(piece)
            hashed += len(piece)
        if isinstance(data.get("sha256"), str):
            told = data["sha256"]
    sha = hasher.hexdigest()
    if not ref.sha256 and told and sha != told:
        raise FileError(
            target,
            f"checksum mismatch: the {size:,} bytes received hash to {sha[:16]}…, the broker "
            f"read {told[:16]}… from its disk",
        )
    return sha
