"""The spool thread: every file byte the broker reads or writes, off the core thread.

Large files (docs/files.md, "Streamed files") wait in the broker's spool folder between their
upload and their download. The core thread decides who may do what and keeps the books
(:class:`remus.server.blobs.Blobs`); this thread does the disk work, so a 4 GiB file never
stalls the broker's answers to anyone else. It talks to the core thread only through its inproc
PAIR:

core -> spool
    ``[REQUEST, side, identity, version, command, body, frames...]`` a ``put`` or ``get`` the
    core allowed (``side`` is ``c`` or ``w``: which edge to answer through); ``[PATH, id,
    path]`` serve the file at ``path`` (already checked against ``--file-root``) as blob
    ``id``; ``[DROP, id...]`` delete blobs.
spool -> core
    ``[side, identity, reply frames...]`` an answer to pass on; ``[STORED, body]`` a blob is
    complete and checked (``{blob, size, sha256, owner}``).

Uploads are written to ``ID.part`` and renamed to ``ID.SHA256`` (the sender's hash, which
every receiver checks) once every chunk is in, so a whole blob's name says what it holds, and
a broker that restarts knows its stored blobs from the folder alone (partial uploads are
removed: their senders start again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from remus import files
from remus import protocol as p
from remus.errors import FileError
from remus.log import name_os_thread

log = logging.getLogger(__name__)

REQUEST = b"req"
PATH = b"path"
DROP = b"drop"
STOP = b"stop"
STORED = b"!stored"
#: an upload nobody has added to for this long is abandoned and removed
UPLOAD_IDLE = 600.0
#: a reader's open file is closed after this long unread
READER_IDLE = 30.0


@dataclass(slots=True)
class _Upload:
    fd: int
    size: int
    owner: bytes
    #: offset -> length of every chunk written (a chunk sent again writes the same bytes)
    chunks: dict[int, int] = field(default_factory=dict)
    touched: float = 0.0

    def whole(self) -> bool:
        at = 0
        for offset in sorted(self.chunks):
            if offset > at:
                return False
            at = max(at, offset + self.chunks[offset])
        return at == self.size


@dataclass(slots=True)
class _Reader:
    fd: int
    size: int
    sha256: str
    hasher: Any = None
    hashed: int = 0
    touched: float = 0.0


class Spool(threading.Thread):
    """Reads and writes the spool folder for the core thread (see the module's docstring)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        pipe: str,
        directory: str | None,
        roots: list[str],
        *,
        durable: bool = False,
    ) -> None:
        super().__init__(name="remus-spool", daemon=True)
        self._context = context
        self._pipe_endpoint = pipe
        self._roots = roots
        #: fsync each whole upload and its rename before saying it is stored (the journal's
        #: ``full`` sync: what a submit names must survive a power loss too)
        self._durable = durable
        #: the spool folder: the one configured, else a private temporary one made at the
        #: first upload (most brokers never stream a file) and removed when the broker stops
        self._own = directory is None
        self._folder = directory
        self._uploads: dict[str, _Upload] = {}
        self._readers: dict[str, _Reader] = {}
        #: blob id -> path of a whole blob (in the folder, or a file served in place)
        self._whole: dict[str, tuple[str, int, str]] = {}
        self.stored_at_start: list[dict[str, Any]] = []
        if directory is not None:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.stored_at_start = self._scan()

    @property
    def directory(self) -> str:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="remus-spool-")
        return self._folder

    def _scan(self) -> list[dict[str, Any]]:
        """Whole blobs left by a previous run (partial uploads are removed)."""
        found = []
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            blob, _, sha = name.partition(".")
            if sha == "part" or not p.BLOB_ID.match(blob) or not p.SHA256_HEX.match(sha):
                if sha == "part":
                    os.unlink(path)
                continue
            size = os.stat(path).st_size
            self._whole[blob] = (path, size, sha)
            found.append({"blob": blob, "size": size, "sha256": sha, "owner": b""})
        return found

    # -------------------------------------------------------------- the thread

    def run(self) -> None:
        name_os_thread()
        pipe = self._context.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.sndhwm = pipe.rcvhwm = 0
        pipe.connect(self._pipe_endpoint)
        try:
            self._loop(pipe)
        except Exception:
            log.exception("the spool thread failed; file transfers stop")
        finally:
            pipe.close()
            for up in self._uploads.values():
                os.close(up.fd)
            for reader in self._readers.values():
                os.close(reader.fd)
            if self._own and self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _loop(self, pipe: zmq.Socket[Any]) -> None:
        last_sweep = time.monotonic()
        while True:
            if not pipe.poll(1000):
                now = time.monotonic()
            else:
                frames = pipe.recv_multipart(copy=False)
                kind = frames[0].bytes
                now = time.monotonic()
                if kind == STOP:
                    return
                if kind == REQUEST:
                    self._request(pipe, frames, now)
                elif kind == PATH:
                    self._serve_path(frames[1].bytes.decode(), frames[2].bytes.decode())
                elif kind == DROP:
                    for f in frames[1:]:
                        self._drop(f.bytes.decode())
            if now - last_sweep >= 5.0:
                last_sweep = now
                self._sweep(now)

    def _request(self, pipe: zmq.Socket[Any], frames: list[Any], now: float) -> None:
        side, identity, key = frames[1].bytes, frames[2].bytes, frames[3].bytes
        msg = p.decode(frames[4:], p.TRANSFER_COMMANDS)
        assert isinstance(msg, (p.PutRequest, p.GetRequest))
        try:
            reply: p.Message = (
                self._put(msg, key, pipe, now)
                if isinstance(msg, p.PutRequest)
                else self._get(msg, now)
            )
        except _Refused as e:
            reply = p.Error(msg.rid, e.code, str(e))
        except OSError as e:
            log.warning("spool: %s of blob %s failed: %s", msg.COMMAND.name, msg.blob, e)
            reply = p.Error(msg.rid, "spool", f"the broker's spool failed: {e.strerror or e}")
        pipe.send_multipart([side, identity, *p.encode(reply)], copy=False)

    # -------------------------------------------------------------- put

    def _put(self, msg: p.PutRequest, key: bytes, pipe: zmq.Socket[Any], now: float) -> p.Reply:
        blob = msg.blob
        whole = self._whole.get(blob)
        if whole is not None:  # a chunk sent again after the blob was done
            if whole[1] != msg.size:
                raise _Refused("bad-blob", f"blob {blob} is already stored with another size")
            return p.Reply(msg.rid, {"have": msg.size})
        up = self._uploads.get(blob)
        if up is None:
            if msg.offset != 0:
                raise _Refused(
                    "blob-gone",
                    f"the broker does not know upload {blob} (it restarted): start it again",
                )
            fd = os.open(
                self._part(blob), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
            )
            up = self._uploads[blob] = _Upload(fd, msg.size, key)
        elif up.owner != key:
            raise _Refused("forbidden", f"upload {blob} belongs to another key")
        elif up.size != msg.size:
            raise _Refused("bad-blob", f"upload {blob} was started with another size")
        up.touched = now
        view = msg.data.buffer if hasattr(msg.data, "buffer") else memoryview(msg.data)
        n = len(view)
        written = 0
        while written < n:
            written += os.pwrite(up.fd, view[written:], msg.offset + written)
        up.chunks[msg.offset] = n
        if not msg.sha256:
            return p.Reply(msg.rid, {"have": msg.offset + n})
        return self._finish(blob, up, msg, pipe)

    def _finish(self, blob: str, up: _Upload, msg: p.PutRequest, pipe: zmq.Socket[Any]) -> p.Reply:
        if not up.whole():
            raise _Refused(
                "bad-blob",
                f"upload {blob} ends before all of its chunks arrived: send the missing ones",
            )
        del self._uploads[blob]
        try:
            if self._durable:
                os.fsync(up.fd)
        finally:
            os.close(up.fd)
        # The sender's hash is kept, not checked here: every receiver checks the bytes it gets
        # against it, so a byte changed anywhere on the way (or on this disk) is caught at the
        # end, and each byte is hashed twice in all (by its sender and by its receiver).
        sha = msg.sha256
        part = self._part(blob)
        path = os.path.join(self.directory, f"{blob}.{sha}")
        os.replace(part, path)
        if self._durable:  # the rename itself, in the folder's own entry
            folder = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        self._whole[blob] = (path, up.size, sha)
        body = {"blob": blob, "size": up.size, "sha256": sha, "owner": up.owner}
        pipe.send_multipart([STORED, p.pack(body)])
        return p.Reply(msg.rid, {"have": up.size})

    def _part(self, blob: str) -> str:
        return os.path.join(self.directory, f"{blob}.part")

    # -------------------------------------------------------------- get

    def _serve_path(self, blob: str, path: str) -> None:
        try:
            size = files.check_file(path)
        except FileError as e:
            log.warning("spool: cannot serve %s: %s", path, e)
            return
        self._whole[blob] = (path, size, "")

    def _reader(self, blob: str, now: float) -> _Reader:
        reader = self._readers.get(blob)
        if reader is None:
            whole = self._whole.get(blob)
            if whole is None:
                raise _Refused(
                    "unknown-blob",
                    f"the broker has no file {blob} (never stored, or dropped: its job ended, "
                    "or the broker restarted)",
                )
            path, size, sha = whole
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (an OSError is answered "spool")
            if not sha:  # a file served in place: checked again, from the opened file
                try:
                    files.check_roots(path, fd, self._roots)
                except FileError as e:
                    os.close(fd)
                    raise _Refused("bad-files", str(e)) from None
            reader = self._readers[blob] = _Reader(fd, size, sha, hashlib.sha256())
        reader.touched = now
        return reader

    def _get(self, msg: p.GetRequest, now: float) -> p.Reply:
        reader = self._reader(msg.blob, now)
        if msg.offset >= reader.size:
            raise _Refused(
                "bad-blob", f"blob {msg.blob} has {reader.size:,} bytes; offset {msg.offset:,}"
            )
        n = min(msg.length, reader.size - msg.offset)
        chunk = bytearray(n)
        got = os.preadv(reader.fd, [chunk], msg.offset)
        if got != n:
            raise _Refused("spool", f"blob {msg.blob} shrank on the broker's disk")
        data: dict[str, Any] = {"offset": msg.offset, "size": reader.size}
        if not reader.sha256 and reader.hasher is not None:
            if msg.offset == reader.hashed:
                reader.hasher.update(chunk)
                reader.hashed += n
            elif msg.offset > reader.hashed:
                reader.hasher = None  # out of order: hashed from the file at the end
        if msg.offset + n == reader.size:
            if reader.sha256:
                data["sha256"] = reader.sha256
            elif reader.hasher is not None and reader.hashed == reader.size:
                data["sha256"] = reader.hasher.hexdigest()
            else:
                data["sha256"] = _hash_fd(reader.fd, reader.size)
            self._close_reader(msg.blob)  # (opened again if asked again)
        return p.Reply(msg.rid, data, [chunk])

    def _close_reader(self, blob: str) -> None:
        reader = self._readers.pop(blob, None)
        if reader is not None:
            os.close(reader.fd)

    # -------------------------------------------------------------- housekeeping

    def _drop(self, blob: str) -> None:
        self._close_reader(blob)
        whole = self._whole.pop(blob, None)
        if whole is not None and not whole[2]:
            return  # a file served in place: not ours to delete
        if whole is not None:
            _unlink(whole[0])
        up = self._uploads.pop(blob, None)
        if up is not None:
            os.close(up.fd)
            _unlink(self._part(blob))

    def _sweep(self, now: float) -> None:
        for blob, up in list(self._uploads.items()):
            if now - up.touched > UPLOAD_IDLE:
                log.warning(
                    "spool: upload %s abandoned (%d bytes expected); removed", blob, up.size
                )
                self._drop(blob)
        for blob, reader in list(self._readers.items()):
            if now - reader.touched > READER_IDLE:
                self._close_reader(blob)


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _hash_fd(fd: int, size: int) -> str:
    hasher = hashlib.sha256()
    at = 0
    while at < size:
        chunk = os.pread(fd, min(files.HASH_CHUNK * 4, size - at), at)
        if not chunk:
            break
        hasher.update(chunk)
        at += len(chunk)
    return hasher.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
