"""The core's books on streamed files (blobs): which exist, who may read them, when they go.

The bytes live in the spool folder and only the spool thread touches them
(:mod:`remus.server.spool`); this keeps the facts the core's rules need, with no I/O:

- a blob is *stored* when the spool thread says its upload is whole (its size, the sender's
  SHA-256, which every receiver checks, and the key that sent it);
- a submit or a result may name a stored blob (:meth:`Blobs.check`, then :meth:`Blobs.use`):
  the job becomes one of its *users*;
- a job of paths going to a worker on another host gets a blob *served in place* from the
  broker's disk (:meth:`Blobs.serve`), for that one run;
- :meth:`Blobs.sweep` drops every blob no job has referred to for ``LINGER`` seconds and
  nobody has read for as long (the job ended and its inputs were let go, or its result was
  forgotten: a client may still be fetching a result the broker has just forgotten, as with
  ``release=True``), and uploads no job ever named after ``ORPHAN_TTL``; the orders to delete
  go to the spool thread through the outbox.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remus import protocol as p
from remus.errors import FileError
from remus.server.spool import DROP, PATH

if TYPE_CHECKING:
    from remus.server.core import BrokerCore
    from remus.server.records import JobRecord

#: a stored blob no job has named for this long is deleted (an upload whose submit never came)
ORPHAN_TTL = 600.0
#: a blob its last job let go of stays this long after that, or after its last read
LINGER = 60.0
#: how often the books are swept
SWEEP_EVERY = 5.0


@dataclass(slots=True)
class BlobInfo:
    size: int
    sha256: str
    #: the key that uploaded it (b"": plain mode, or found in the spool at start)
    owner: bytes
    since: float
    #: ids of the jobs that named it (inputs or result)
    users: set[str] = field(default_factory=set)
    #: a file served in place: (job id, run number) it was served for
    served: tuple[str, int] | None = None
    #: keys that may read it through a job that named it (its owners), kept after the jobs go
    readers: set[bytes] = field(default_factory=set)
    #: when its last user let go of it (None: it has users, or never had one)
    free_since: float | None = None
    #: when it was last read
    read_at: float = 0.0


class Blobs:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        self.known: dict[str, BlobInfo] = {}
        self._next_sweep = 0.0

    # -------------------------------------------------------------- from the spool thread

    def stored(self, body: dict[str, Any], now: float) -> None:
        blob = body["blob"]
        info = self.known.get(blob)
        if info is None:
            self.known[blob] = BlobInfo(body["size"], body["sha256"], body["owner"], now)
        else:  # named by a journaled job before the spool said it was there
            info.size, info.sha256 = body["size"], body["sha256"]

    # -------------------------------------------------------------- jobs naming blobs

    def check(self, fs: p.FileSet, key: bytes | None) -> None:
        """FileError unless every blob ``fs`` names is stored, as named, and (secure mode)
        was uploaded by ``key``."""
        for e in fs.files:
            ref = e.ref
            if ref is None:
                continue
            info = self.known.get(ref.id)
            if info is None or info.served is not None:
                raise FileError(
                    e.path, f"names blob {ref.id}, which the broker does not hold: upload it first"
                )
            if info.size != ref.size or (ref.sha256 and info.sha256 != ref.sha256):
                raise FileError(
                    e.path, f"names blob {ref.id} with another size or hash than was stored"
                )
            if key is not None and info.owner and info.owner != key:
                raise FileError(e.path, f"names blob {ref.id}, which another key uploaded")

    def use(self, fs: p.FileSet | None, job_id: str, now: float) -> None:
        """``job_id`` refers to the blobs of ``fs`` (a journaled one may come before the spool
        thread reports the blob: it is booked now and filled in then)."""
        if fs is None:
            return
        for e in fs.files:
            if e.ref is not None:
                info = self.known.get(e.ref.id)
                if info is None:
                    info = self.known[e.ref.id] = BlobInfo(e.ref.size, e.ref.sha256, b"", now)
                info.users.add(job_id)
                info.free_since = None
                job = self._core.jobs.get(job_id)
                if job is not None and job.owner is not None:
                    info.readers.add(job.owner)

    def serve(self, path: str, job: JobRecord, now: float) -> p.BlobRef:
        """A new blob for the file at ``path`` (checked against ``--file-root`` already), read
        in place by the spool thread, for this run of ``job``."""
        size = os.stat(path).st_size
        blob = secrets.token_hex(16)
        self.known[blob] = BlobInfo(size, "", b"", now, {job.id}, (job.id, job.runs + 1))
        self._core.out.spool.append([PATH, blob.encode(), path.encode()])
        return p.BlobRef(blob, size)

    def may_get(self, blob: str, key: bytes | None, now: float) -> bool:
        """Whether ``key`` may read ``blob`` (any key in plain mode, where it is None): who
        uploaded it, an admin, the owner of a job that names or named it, or the worker running
        such a job. Noted as a read (it keeps the blob a while)."""
        info = self.known.get(blob)
        if info is None:
            return True  # the spool answers "unknown" (nothing to protect)
        info.read_at = now
        if key is None:
            return True
        core = self._core
        if info.owner == key or key in info.readers:
            return True
        if core.auth is not None and key in core.auth.admins:
            return True
        for job_id in info.users:
            job = core.jobs.get(job_id)
            if job is None:
                continue
            if core.may_see(job, key):
                return True
            worker = core.workers.get(job.worker) if job.worker is not None else None
            if worker is not None and worker.peer_key == key:
                return True
        return False

    # -------------------------------------------------------------- letting go

    def sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        jobs = self._core.jobs
        gone = []
        for blob, info in self.known.items():
            if info.served is not None:
                job = jobs.get(info.served[0])
                if job is None or job.status.done or job.runs != info.served[1]:
                    gone.append(blob)
                continue
            if info.users:
                info.users = {j for j in info.users if _names(jobs.get(j), blob)}
                if not info.users:
                    info.free_since = now
            if info.users:
                continue
            if info.free_since is None:  # never named by a job: an upload left behind
                if now - info.since > ORPHAN_TTL:
                    gone.append(blob)
            elif now - max(info.free_since, info.read_at) > LINGER:
                gone.append(blob)
        for blob in gone:
            del self.known[blob]
        if gone:
            self._core.out.spool.append([DROP, *(b.encode() for b in gone)])


def _names(job: JobRecord | None, blob: str) -> bool:
    """Whether ``job`` still holds a reference to ``blob`` (its inputs, or its result)."""
    if job is None:
        return False
    for fs in (job.files, job.result_files):
        if fs is not None and any(e.ref is not None and e.ref.id == blob for e in fs.files):
            return True
    return False
