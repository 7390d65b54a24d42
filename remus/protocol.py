"""The wire format, and nothing else: see docs/protocol.md for the prose version.

Every message is a multipart ZeroMQ message::

    [VERSION, command, body, *blobs]

``body`` is a msgpack map. Job contents and results up to ``INLINE_MAX`` bytes travel inside
it (one frame per job would cost far more than the copy); larger ones are ``blobs``: frames of
their own, which nobody copies into or out of msgpack and the broker passes on untouched. Where
the body has ``nil`` in place of a content, the content is the next blob.

Decoding never asserts: anything off the wire that does not fit raises :class:`ProtocolError`
with a message that says what was wrong.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgpack

from remus.errors import ProtocolError
from remus.types import IOType, JobRequirements, Status

VERSION = b"remus/1"
#: contents and results up to this size travel inline in the body; larger ones as frames
INLINE_MAX = 16 * 1024

Blob = Any  # bytes, memoryview or zmq.Frame: whatever can be sent without a copy


class Command(bytes, enum.Enum):
    # client -> broker
    HELLO = b"hello"
    IO_TYPES = b"io_types"
    CAN_MESH = b"can_mesh"
    REQUIREMENTS = b"requirements"
    SUBMIT = b"submit"
    STATUS = b"status"
    PROGRESS = b"progress"
    RESULT = b"result"
    COLLECT = b"collect"
    TERMINATE = b"terminate"
    WORKERS = b"workers"
    LIST_JOBS = b"list_jobs"  # ("jobs" is the broker's message to a worker)
    STATS = b"stats"
    CONTROL = b"control"
    # client or worker -> broker: file bytes in chunks (docs/protocol.md, "Streamed files")
    PUT = b"put"
    GET = b"get"
    # broker -> client
    REPLY = b"reply"
    # worker -> broker
    REGISTER = b"register"
    REPORT = b"report"
    HEARTBEAT = b"heartbeat"
    GOODBYE = b"goodbye"
    # broker -> worker
    JOBS = b"jobs"
    CANCEL = b"cancel"
    SHUTDOWN = b"shutdown"
    ACK = b"ack"
    CONTROLS = b"controls"
    # both ways
    ERROR = b"error"


# Sets of the raw command bytes each socket accepts (an Enum member hashes by name, so the
# sets hold the plain values).
CLIENT_COMMANDS = frozenset(
    c.value
    for c in (
        Command.HELLO,
        Command.IO_TYPES,
        Command.CAN_MESH,
        Command.REQUIREMENTS,
        Command.SUBMIT,
        Command.STATUS,
        Command.PROGRESS,
        Command.RESULT,
        Command.COLLECT,
        Command.TERMINATE,
        Command.WORKERS,
        Command.LIST_JOBS,
        Command.STATS,
        Command.CONTROL,
        Command.PUT,
        Command.GET,
    )
)
WORKER_COMMANDS = frozenset(
    c.value
    for c in (
        Command.REGISTER,
        Command.REPORT,
        Command.HEARTBEAT,
        Command.GOODBYE,
        Command.PUT,
        Command.GET,
    )
)
#: the commands that move file chunks (the broker's spool thread answers them)
TRANSFER_COMMANDS = frozenset({Command.PUT.value, Command.GET.value})
BROKER_TO_CLIENT = frozenset({Command.REPLY.value, Command.ERROR.value})
BROKER_TO_WORKER = frozenset(
    c.value
    for c in (
        Command.JOBS,
        Command.CANCEL,
        Command.CONTROLS,
        Command.HEARTBEAT,
        Command.SHUTDOWN,
        Command.ACK,
        Command.ERROR,
    )
)

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    return _packer.pack(obj)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"body is not valid msgpack: {e}") from e


# ---------------------------------------------------------------------------- field checks


def _field(
    body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    try:
        value = body[key]
    except KeyError:
        if default is ...:
            raise ProtocolError(f"missing field {key!r}") from None
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ProtocolError(f"field {key!r} has the wrong type: {type(value).__name__}")
    return value


def _seconds(body: dict[str, Any], key: str, default: Any = 0.0) -> float:
    value = float(_field(body, key, (int, float), default))
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(f"field {key!r} must be a finite number of seconds >= 0, got {value}")
    return value


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    values = _field(body, key, list)
    for v in values:
        if type(v) is not str:
            raise ProtocolError(f"field {key!r} must be a list of strings")
    return values


#: decoded requirements by their wire form: most traffic repeats a handful of them
_REQS_CACHE: dict[tuple[Any, ...], JobRequirements] = {}
_REQS_CACHE_MAX = 1024


def _seq(body: dict[str, Any], key: str) -> int:
    """A report sequence number: an int from 0 (none) up to 2**63 - 1."""
    value = _field(body, key, int, 0)
    if not 0 <= value < 1 << 63:
        raise ProtocolError(f"field {key!r} must be 0 to 2**63-1, got {value}")
    return value


#: a process's resource use on the wire: [rss bytes, peak rss bytes, cpu seconds]
Usage = tuple[int, int, float]


def _usage(raw: Any, what: str) -> Usage:
    if (
        type(raw) is not list
        or len(raw) != 3
        or type(raw[0]) is not int
        or type(raw[1]) is not int
        or type(raw[2]) not in (int, float)
        or min(raw) < 0
        or not math.isfinite(raw[2])
    ):
        raise ProtocolError(f"{what} must be [rss, peak_rss, cpu_seconds], non-negative")
    return (raw[0], raw[1], float(raw[2]))


#: the most jobs one worker may run at once
MAX_SLOTS = 1024


def _slots(body: dict[str, Any]) -> int:
    slots = _field(body, "slots", int, 1)
    if not 1 <= slots <= MAX_SLOTS:
        raise ProtocolError(f"slots {slots} must be 1-{MAX_SLOTS}")
    return slots


def _used(raw: Any) -> list[tuple[str, int, float]]:
    if type(raw) is not list:
        raise ProtocolError("field 'used' must be a list")
    used = []
    for u in raw:
        if (
            type(u) is not list
            or len(u) != 3
            or type(u[0]) is not str
            or type(u[1]) is not int
            or type(u[2]) not in (int, float)
            or u[1] < 0
            or u[2] < 0
            or not math.isfinite(u[2])
        ):
            raise ProtocolError("each 'used' entry must be [id, peak_rss, cpu_seconds]")
        used.append((u[0], u[1], float(u[2])))
    return used


def _reqs(raw: Any) -> JobRequirements:
    key = tuple(raw) if type(raw) is list else None
    if key is not None:
        try:
            return _REQS_CACHE[key]
        except (KeyError, TypeError):  # TypeError: an unhashable tag (a map or list)
            pass
    try:
        reqs = JobRequirements.from_wire(raw)
    except (TypeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"bad job requirements: {e}") from e
    if key is not None and type(reqs.tag) in (type(None), str):  # 1 == 1.0 == True: skip numbers
        if len(_REQS_CACHE) >= _REQS_CACHE_MAX:
            _REQS_CACHE.clear()
        _REQS_CACHE[key] = reqs
    return reqs


def _reqs_table(body: dict[str, Any]) -> list[JobRequirements]:
    return [_reqs(r) for r in _field(body, "reqs", list)]


def _pick(table: list[JobRequirements], index: Any) -> JobRequirements:
    if type(index) is not int or not 0 <= index < len(table):
        raise ProtocolError(f"requirements index {index!r} out of range")
    return table[index]


def _table_of(reqs: Sequence[JobRequirements]) -> tuple[list[Any], dict[JobRequirements, int]]:
    index: dict[JobRequirements, int] = {}
    wire: list[Any] = []
    for r in reqs:
        if r not in index:
            index[r] = len(wire)
            wire.append(r.to_wire())
    return wire, index


def inline(value: Blob, frames: list[Blob]) -> Any:
    """The body's slot for ``value``: the bytes themselves if small, else nil and a frame."""
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if size <= INLINE_MAX:
        return value if isinstance(value, (bytes, bytearray, memoryview)) else value.bytes
    frames.append(value)
    return None


def take(slot: Any, frames: Any, what: str) -> Blob:
    """The inverse of :func:`inline`: a body slot's bytes, or the next frame for a nil slot."""
    if slot is None:
        try:
            return next(frames)
        except StopIteration:
            raise ProtocolError(f"{what}: fewer frames than the body refers to") from None
    if type(slot) is not bytes:
        raise ProtocolError(f"{what}: content must be bin or nil, got {type(slot).__name__}")
    return slot


def _pack_contents(keys: Sequence[str], values: Sequence[Blob], frames: list[Blob]) -> list[Any]:
    return [[k, inline(v, frames)] for k, v in zip(keys, values, strict=True)]


def _unpack_contents(raw: Any, frames: Any, jid: str) -> tuple[tuple[str, ...], list[Blob]]:
    if type(raw) is not list:
        raise ProtocolError(f"job {jid}: contents must be a list of [key, bin or nil]")
    keys = []
    values = []
    for pair in raw:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
            raise ProtocolError(f"job {jid}: each content must be [key, bin or nil]")
        keys.append(pair[0])
        values.append(take(pair[1], frames, f"job {jid}"))
    if len(set(keys)) != len(keys):
        raise ProtocolError(f"job {jid}: a content key appears twice")
    return tuple(keys), values


def _no_frames_left(frames: Any, what: str) -> None:
    if next(frames, None) is not None:
        raise ProtocolError(f"{what} carries more frames than its body refers to")


# ---------------------------------------------------------------------------- files

FILE_MODES = ("r", "rb")


#: a stored file's id: 32 lowercase hex digits, chosen at random by whoever uploads it
BLOB_ID = re.compile(r"[0-9a-f]{32}\Z")
SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A file whose bytes wait in the broker's spool, moved in chunks by ``put`` and ``get``.
    ``sha256`` is empty only for a file the broker reads from its own disk for a worker (the
    last chunk's reply carries it then)."""

    id: str
    size: int
    sha256: str = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"blob": self.id, "size": self.size}
        if self.sha256:
            wire["sha256"] = self.sha256
        return wire

    @classmethod
    def from_wire(cls, raw: dict[str, Any], what: str) -> BlobRef:
        blob = _blob_id(raw, what)
        size = _field(raw, "size", int)
        if size < 0:
            raise ProtocolError(f"{what}: a file's size must be >= 0, got {size}")
        sha = _field(raw, "sha256", str, "")
        if sha and not SHA256_HEX.match(sha):
            raise ProtocolError(f"{what}: sha256 must be 64 lowercase hex digits")
        return cls(blob, size, sha)


def _blob_id(raw: dict[str, Any], what: str) -> str:
    blob = _field(raw, "blob", str)
    if not BLOB_ID.match(blob):
        raise ProtocolError(f"{what}: a blob id is 32 lowercase hex digits, got {blob[:40]!r}")
    return blob


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a job or a result: its path, read mode, and its bytes (None: path only),
    or, for a large file, a reference to its bytes in the broker's spool (``ref``)."""

    path: str
    mode: str = "rb"
    data: Blob | None = None
    ref: BlobRef | None = None


@dataclass(frozen=True, slots=True)
class FileSet:
    """The files of a job (with its command-line ``args``) or of a result. ``host`` is where
    the path-only entries can be opened; the broker fills it in (see docs/files.md)."""

    files: Sequence[FileEntry] = ()
    args: Sequence[str] = ()
    host: str = ""


def pack_files(fs: FileSet, frames: list[Blob]) -> dict[str, Any]:
    """A file set as a body value: ``{files: [[path, mode] | [path, mode, bin or nil] |
    [path, mode, {blob, size, sha256?}]], args?, host?}``; bytes past INLINE_MAX go to
    ``frames`` as with :func:`inline`."""
    body: dict[str, Any] = {
        "files": [
            [e.path, e.mode, e.ref.to_wire()]
            if e.ref is not None
            else [e.path, e.mode]
            if e.data is None
            else [e.path, e.mode, inline(e.data, frames)]
            for e in fs.files
        ]
    }
    if fs.args:
        body["args"] = list(fs.args)
    if fs.host:
        body["host"] = fs.host
    return body


def take_files(raw: Any, frames: Any, what: str) -> FileSet:
    """The inverse of :func:`pack_files`."""
    if type(raw) is not dict:
        raise ProtocolError(f"{what}: files must be a map")
    entries = []
    for e in _field(raw, "files", list):
        if type(e) is not list or len(e) not in (2, 3) or type(e[0]) is not str:
            raise ProtocolError(f"{what}: each file must be [path, mode] or [path, mode, data]")
        if not e[0] or len(e[0]) > 4096 or "\0" in e[0]:
            raise ProtocolError(f"{what}: bad file path {e[0][:64]!r}")
        if e[1] not in FILE_MODES:
            raise ProtocolError(f"{what}: file mode must be 'r' or 'rb', got {e[1]!r}")
        if len(e) == 3 and type(e[2]) is dict:
            entries.append(FileEntry(e[0], e[1], None, BlobRef.from_wire(e[2], what)))
            continue
        data = take(e[2], frames, f"{what}, file {e[0]}") if len(e) == 3 else None
        entries.append(FileEntry(e[0], e[1], data))
    args = _str_list(raw, "args") if "args" in raw else []
    return FileSet(entries, args, _field(raw, "host", str, ""))


def _job_row(
    jid: str,
    index: int,
    contents: list[Any],
    fs: FileSet | None,
    frames: list[Blob],
    after: Sequence[str] = (),
) -> list[Any]:
    row = [jid, index, contents] if fs is None else [jid, index, contents, pack_files(fs, frames)]
    if after:
        if fs is None:
            row.append(None)
        row.append({"after": list(after)})
    return row


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    COMMAND: ClassVar[Command]

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def blobs(self) -> Sequence[Blob]:
        return self.parts()[1] if type(self).parts is not Message.parts else ()

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        """Body and blobs together (messages that inline small contents decide both at once)."""
        return self.body(), self.blobs()

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Request(Message):
    """A client request; every one carries ``rid`` so the reply can be matched to it."""

    rid: int


# client -> broker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RidOnly(Request):
    """A request that carries nothing but its ``rid``."""

    def body(self) -> dict[str, Any]:
        return {"rid": self.rid}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Self:
        return cls(_field(body, "rid", int))


@dataclass(frozen=True, slots=True)
class HelloRequest(_RidOnly):
    """Who is the broker: its host id and message size limit (a client asks once, for files)."""

    COMMAND = Command.HELLO


@dataclass(frozen=True, slots=True)
class IoTypesRequest(_RidOnly):
    COMMAND = Command.IO_TYPES


@dataclass(frozen=True, slots=True)
class CanMeshRequest(Request):
    COMMAND = Command.CAN_MESH
    requirements: JobRequirements

    def body(self) -> dict[str, Any]:
        return {"rid": self.rid, "reqs": self.requirements.to_wire()}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> CanMeshRequest:
        return cls(_field(body, "rid", int), _reqs(_field(body, "reqs", list)))


@dataclass(frozen=True, slots=True)
class RequirementsRequest(Request):
    COMMAND = Command.REQUIREMENTS
    io_type: IOType

    def body(self) -> dict[str, Any]:
        return {"rid": self.rid, "io": self.io_type.to_wire()}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> RequirementsRequest:
        raw = _field(body, "io", list)
        try:
            io = IOType.from_wire(raw)
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad io type: {e}") from e
        return cls(_field(body, "rid", int), io)


@dataclass(frozen=True, slots=True)
class SubmittedJob:
    """One job inside a SubmitRequest: a client-chosen id, requirements, named contents, and
    for a file request its files and arguments."""

    id: str
    requirements: JobRequirements
    keys: tuple[str, ...] = ()
    values: Sequence[Blob] = ()
    files: FileSet | None = None
    #: ids of the jobs it waits for (each must exist, or come before it in the same submit)
    after: tuple[str, ...] = ()


#: the most jobs one job may wait for (``after``)
MAX_AFTER = 100_000
#: a submission's ``priority`` lies within ±this (higher runs first)
MAX_PRIORITY = 1 << 30
#: ``opts.package_size`` lies within these bounds (work packages: docs/protocol.md)
MIN_PACKAGE, MAX_PACKAGE = 2, 1000


@dataclass(frozen=True, slots=True)
class SubmitRequest(Request):
    """Many jobs in one message. Each job's contents are ``[[key, bin or nil], ...]``; a nil
    content is the next blob frame."""

    COMMAND = Command.SUBMIT
    jobs: Sequence[SubmittedJob]
    options: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        table, index = _table_of([j.requirements for j in self.jobs])
        frames: list[Blob] = []
        jobs = [
            _job_row(
                j.id,
                index[j.requirements],
                _pack_contents(j.keys, j.values, frames),
                j.files,
                frames,
                j.after,
            )
            for j in self.jobs
        ]
        return {"rid": self.rid, "reqs": table, "jobs": jobs, "opts": self.options}, frames

    def body(self) -> dict[str, Any]:
        return self.parts()[0]

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> SubmitRequest:
        table = _reqs_table(body)
        frames = iter(blobs)
        jobs = []
        for raw in _field(body, "jobs", list):
            if type(raw) is not list or len(raw) not in (3, 4, 5):
                raise ProtocolError(
                    "each job must be [id, reqs index, contents, files?, {after?}?]"
                )
            jid, idx, contents = raw[:3]
            if type(jid) is not str or not jid or len(jid) > 128:
                raise ProtocolError(f"bad job id {jid!r}: a non-empty string of at most 128 chars")
            keys, values = _unpack_contents(contents, frames, jid)
            # (a nil files slot only before an extra map: a file request has a map there)
            fs = (
                take_files(raw[3], frames, f"job {jid}")
                if len(raw) >= 4 and not (len(raw) == 5 and raw[3] is None)
                else None
            )
            after: tuple[str, ...] = ()
            if len(raw) == 5:
                extra = raw[4]
                if type(extra) is not dict:
                    raise ProtocolError(
                        "each job must be [id, reqs index, contents, files?, {after?}]: the fifth "
                        f"element of job {jid} must be a map"
                    )
                after = tuple(_str_list(extra, "after")) if "after" in extra else ()
                if len(after) > MAX_AFTER or jid in after:
                    raise ProtocolError(
                        f"job {jid}: 'after' names itself or more than {MAX_AFTER} jobs"
                    )
            jobs.append(SubmittedJob(jid, _pick(table, idx), keys, values, fs, after))
        _no_frames_left(frames, "submit")
        opts = _field(body, "opts", dict, {})
        if "max_retries" in opts:
            retries = _field(opts, "max_retries", int)
            if not 0 <= retries <= 100:
                raise ProtocolError(f"max_retries {retries} must be 0-100")
        for limit in ("time_limit", "queue_time_limit"):
            if limit in opts and not _seconds(opts, limit) > 0:
                raise ProtocolError(f"{limit} must be a positive number of seconds")
        if "release" in opts:
            _field(opts, "release", bool)
        if "priority" in opts:
            priority = _field(opts, "priority", int)
            if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
                raise ProtocolError(f"priority {priority} must be within ±{MAX_PRIORITY}")
        if "protected" in opts:
            _field(opts, "protected", bool)
        if "parent" in opts:
            _field(opts, "parent", str)
        if "group" in opts:
            group = _field(opts, "group", str)
            if not group or len(group) > 128:
                raise ProtocolError("a group's name is a non-empty string of at most 128 chars")
        if "package_size" in opts:
            size = _field(opts, "package_size", int)
            if not MIN_PACKAGE <= size <= MAX_PACKAGE:
                raise ProtocolError(
                    f"package_size {size} must be {MIN_PACKAGE}-{MAX_PACKAGE} jobs per package"
                )
            if opts.get("protected") is False:
                raise ProtocolError(
                    "package_size needs protected jobs: a spare-capacity job (protected false) "
                    "must be preemptible on its own; submit those without package_size"
                )
        if "follow" in opts:
            _seconds(opts, "follow")
            if len(jobs) != 1:
                raise ProtocolError("'follow' needs exactly one job in the submit")
        return cls(_field(body, "rid", int), jobs, opts)


@dataclass(frozen=True, slots=True)
class StatusRequest(Request):
    COMMAND = Command.STATUS
    ids: Sequence[str]

    def body(self) -> dict[str, Any]:
        return {"rid": self.rid, "ids": list(self.ids)}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> StatusRequest:
        return cls(_field(body, "rid", int), _str_list(body, "ids"))


@dataclass(frozen=True, slots=True)
class TerminateRequest(StatusRequest):
    COMMAND = Command.TERMINATE


@dataclass(frozen=True, slots=True)
class ProgressRequest(Request):
    """Progress updates after ``since``; with ``wait`` > 0 the broker holds the reply until there
    is one, the job is done, or ``wait`` seconds pass. ``with_result`` asks for the result too
    once the job is done, saving a round trip; ``release`` then lets the broker forget the job
    once that reply has gone out (nobody will ask for the result again)."""

    COMMAND = Command.PROGRESS
    id: str
    since: int = 0
    wait: float = 0.0
    with_result: bool = False
    release: bool = False

    def body(self) -> dict[str, Any]:
        body = {
            "rid": self.rid,
            "id": self.id,
            "since": self.since,
            "wait": self.wait,
            "with_result": self.with_result,
        }
        if self.release:
            body["release"] = True
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> ProgressRequest:
        return cls(
            _field(body, "rid", int),
            _field(body, "id", str),
            _field(body, "since", int, 0),
            _seconds(body, "wait"),
            _field(body, "with_result", bool, False),
            _field(body, "release", bool, False),
        )


@dataclass(frozen=True, slots=True)
class ResultRequest(StatusRequest):
    COMMAND = Command.RESULT


@dataclass(frozen=True, slots=True)
class CollectRequest(Request):
    """Results as jobs finish. The broker keeps a watch list per (client, ``watch``): ``add``
    puts ids on it, and each reply hands over the results of watched jobs that are done, at most
    ``max`` of them, holding the reply up to ``wait`` seconds until there is at least one.
    With ``progress``, the watched jobs' new progress updates are handed over too."""

    COMMAND = Command.COLLECT
    watch: str
    add: Sequence[str] = ()
    wait: float = 0.0
    max: int = 10_000
    progress: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "rid": self.rid,
            "watch": self.watch,
            "add": list(self.add),
            "wait": self.wait,
            "max": self.max,
        }
        if self.progress:
            body["progress"] = True
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> CollectRequest:
        return cls(
            _field(body, "rid", int),
            _field(body, "watch", str),
            _str_list(body, "add") if "add" in body else [],
            _seconds(body, "wait"),
            max(1, _field(body, "max", int, 10_000)),
            _field(body, "progress", bool, False),
        )


@dataclass(frozen=True, slots=True)
class ControlRequest(Request):
    """A control message for job ``id``: the broker routes it to the worker that holds the job
    (or keeps it until the job starts). Answered with its ``seq`` for that job."""

    COMMAND = Command.CONTROL
    id: str
    data: Blob = b""

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        frames: list[Blob] = []
        return {"rid": self.rid, "id": self.id, "data": inline(self.data, frames)}, frames

    def body(self) -> dict[str, Any]:
        return self.parts()[0]

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> ControlRequest:
        frames = iter(blobs)
        jid = _field(body, "id", str)
        data = take(body.get("data"), frames, f"control message of {jid}")
        _no_frames_left(frames, "control")
        return cls(_field(body, "rid", int), jid, data)


@dataclass(frozen=True, slots=True)
class WorkersRequest(_RidOnly):
    """One record per connected worker (remus.introspect.WorkerInfo)."""

    COMMAND = Command.WORKERS


@dataclass(frozen=True, slots=True)
class StatsRequest(_RidOnly):
    """The broker's counters (remus.introspect.BrokerStats)."""

    COMMAND = Command.STATS


@dataclass(frozen=True, slots=True)
class ListJobsRequest(Request):
    """Job records newest first (remus.introspect.JobInfo), of one ``status`` and ``io_type``
    if given; at most ``limit`` of them (the broker caps it)."""

    COMMAND = Command.LIST_JOBS
    status: Status | None = None
    io_type: IOType | None = None
    limit: int = 100

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"rid": self.rid, "limit": self.limit}
        if self.status is not None:
            body["status"] = int(self.status)
        if self.io_type is not None:
            body["io"] = self.io_type.to_wire()
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> ListJobsRequest:
        status = None
        if "status" in body:
            raw = _field(body, "status", int)
            if not Status.QUEUED <= raw <= max(Status):
                raise ProtocolError(f"field 'status' must be a job status 1-{max(Status)}")
            status = Status(raw)
        io = None
        if "io" in body:
            try:
                io = IOType.from_wire(_field(body, "io", list))
            except (TypeError, ValueError) as e:
                raise ProtocolError(f"bad io type: {e}") from e
        limit = _field(body, "limit", int, 100)
        if limit < 1:
            raise ProtocolError(f"field 'limit' must be >= 1, got {limit}")
        return cls(_field(body, "rid", int), status, io, limit)


@dataclass(frozen=True, slots=True)
class PutRequest(Request):
    """One chunk of a file going into the broker's spool: ``offset`` within a file of ``size``
    bytes, the chunk in the one blob frame. The chunk that ends the file carries the
    ``sha256`` of the whole file, which the broker checks. Sent on the client or the worker
    socket; a chunk sent again (same offset, after a silence) is written again, harmlessly."""

    COMMAND = Command.PUT
    blob: str
    offset: int
    size: int
    data: Blob = b""
    sha256: str = ""

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        body: dict[str, Any] = {
            "rid": self.rid,
            "blob": self.blob,
            "offset": self.offset,
            "size": self.size,
        }
        if self.sha256:
            body["sha256"] = self.sha256
        return body, (self.data,)

    def body(self) -> dict[str, Any]:
        return self.parts()[0]

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> PutRequest:
        what = "put"
        blob = _blob_id(body, what)
        offset = _field(body, "offset", int)
        size = _field(body, "size", int)
        if len(blobs) != 1:
            raise ProtocolError(f"put carries exactly one chunk frame, got {len(blobs)}")
        n = len(blobs[0])
        if offset < 0 or size < 0 or offset + n > size:
            raise ProtocolError(
                f"put: a chunk of {n} bytes at offset {offset} does not fit a file of {size}"
            )
        sha = _field(body, "sha256", str, "")
        if sha and not SHA256_HEX.match(sha):
            raise ProtocolError("put: sha256 must be 64 lowercase hex digits")
        if (offset + n == size) != bool(sha):
            raise ProtocolError("put: the chunk that ends the file, and only it, carries sha256")
        return cls(_field(body, "rid", int), blob, offset, size, blobs[0], sha)


@dataclass(frozen=True, slots=True)
class GetRequest(Request):
    """Ask for ``length`` bytes of a spooled file from ``offset``. The reply's data is
    ``{offset, size, sha256?}`` (sha256 of the whole file with the chunk that ends it) and its
    one frame is the chunk."""

    COMMAND = Command.GET
    blob: str
    offset: int
    length: int

    def body(self) -> dict[str, Any]:
        return {"rid": self.rid, "blob": self.blob, "offset": self.offset, "length": self.length}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> GetRequest:
        blob = _blob_id(body, "get")
        offset = _field(body, "offset", int)
        length = _field(body, "length", int)
        if offset < 0 or not 0 < length <= MAX_CHUNK:
            raise ProtocolError(f"get: offset must be >= 0 and length 1–{MAX_CHUNK}")
        _no_frames_left(iter(blobs), "get")
        return cls(_field(body, "rid", int), blob, offset, length)


#: the largest chunk a ``get`` may ask for
MAX_CHUNK = 64 * 1024 * 1024


# broker -> client ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """The answer to a request: ``data`` is a msgpack-able value whose shape depends on the
    request (docs/protocol.md), ``frames`` carries bulk bytes (results)."""

    COMMAND = Command.REPLY
    rid: int
    data: Any = None
    frames: Sequence[Blob] = ()

    def body(self) -> dict[str, Any]:
        return {"rid": self.rid, "data": self.data}

    def blobs(self) -> Sequence[Blob]:
        return self.frames

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Reply:
        return cls(_field(body, "rid", int), body.get("data"), blobs)


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A refusal. ``rid`` is -1 when the request was too broken to read its id."""

    COMMAND = Command.ERROR
    rid: int
    code: str
    message: str
    #: machine-readable details for some codes (``no-worker``: requirements, serves)
    data: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        body = {"rid": self.rid, "code": self.code, "message": self.message}
        if self.data:
            body["data"] = self.data
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Error:
        return cls(
            _field(body, "rid", int, -1),
            _field(body, "code", str),
            _field(body, "message", str),
            _field(body, "data", dict, None),
        )


# worker -> broker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register(Message):
    """A worker says who it is. Sent on connect and on every reconnect; ``held`` lists the jobs
    it still holds (so a broker can tell which assigned jobs never arrived) and ``credit`` how
    many more jobs it wants."""

    COMMAND = Command.REGISTER
    requirements: JobRequirements
    heartbeat: float
    host: str
    pid: int
    credit: int = 0
    held: Sequence[str] = ()
    #: how many jobs it runs at once (its credit beyond its free slots is prefetch)
    slots: int = 1

    def body(self) -> dict[str, Any]:
        body = {
            "reqs": self.requirements.to_wire(),
            "heartbeat": self.heartbeat,
            "host": self.host,
            "pid": self.pid,
            "credit": self.credit,
            "held": list(self.held),
        }
        if self.slots != 1:
            body["slots"] = self.slots
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Register:
        heartbeat = _seconds(body, "heartbeat", ...)
        if not 0.001 <= heartbeat <= 3600:
            raise ProtocolError(f"heartbeat interval {heartbeat} s is outside 0.001–3600 s")
        credit = _field(body, "credit", int, 0)
        if credit < 0:
            raise ProtocolError("credit must not be negative")
        if credit > 1_000_000:
            raise ProtocolError(f"credit {credit} is over the limit of 1,000,000")
        return cls(
            _reqs(_field(body, "reqs", list)),
            heartbeat,
            _field(body, "host", str),
            _field(body, "pid", int),
            credit,
            _str_list(body, "held") if "held" in body else [],
            _slots(body),
        )


@dataclass(frozen=True, slots=True)
class Report(Message):
    """Everything a worker has to say since its last report, in one message.

    Applied in this order: ``started`` ids, ``progress`` ``[id, value, message]``, ``results``
    ``[id, bin or nil]`` (nil: the next blob) or ``[id, bin or nil, files]`` for a file result,
    ``failures`` ``[id, reason, traceback]``, then ``credit`` (how many more jobs it wants).

    ``seq`` (> 0) numbers the reports the worker keeps until the broker acknowledges them
    (``ack``; docs/protocol.md); 0 for a credit-only report, which nobody needs to keep.

    ``used`` ``[id, peak_rss, cpu_seconds]`` says what each ended job used, ``usage`` what the
    worker process uses now (as in :class:`Heartbeat`); both optional. ``stopped`` lists jobs
    whose handler stopped after a ``cancel`` (no result follows); ``checkpoints``
    ``[id, bin or nil]`` each job's latest checkpoint (applied before the results).
    """

    COMMAND = Command.REPORT
    started: Sequence[str] = ()
    progress: Sequence[tuple[str, int | None, str]] = ()
    results: Sequence[tuple[str, Blob] | tuple[str, Blob, FileSet]] = ()
    failures: Sequence[tuple[str, str, str]] = ()
    credit: int = 0
    seq: int = 0
    used: Sequence[tuple[str, int, float]] = ()
    usage: Usage | None = None
    stopped: Sequence[str] = ()
    checkpoints: Sequence[tuple[str, Blob]] = ()

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        body: dict[str, Any] = {}
        if self.seq:
            body["seq"] = self.seq
        if self.stopped:
            body["stopped"] = list(self.stopped)
        if self.used:
            body["used"] = [list(u) for u in self.used]
        if self.usage is not None:
            body["usage"] = list(self.usage)
        frames: list[Blob] = []
        if self.checkpoints:  # (their blobs first: they are applied before the results)
            body["checkpoints"] = [[c[0], inline(c[1], frames)] for c in self.checkpoints]
        if self.started:
            body["started"] = list(self.started)
        if self.progress:
            body["progress"] = self.progress  # (tuples go as arrays)
        if self.results:
            body["results"] = [
                [r[0], inline(r[1], frames)]
                if len(r) == 2
                else [r[0], inline(r[1], frames), pack_files(r[2], frames)]
                for r in self.results
            ]
        if self.failures:
            body["failures"] = [list(f) for f in self.failures]
        if self.credit:
            body["credit"] = self.credit
        return body, frames

    def body(self) -> dict[str, Any]:
        return self.parts()[0]

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Report:
        progress = []
        for p in _field(body, "progress", list, []):
            if type(p) is not list or len(p) != 3:
                raise ProtocolError("each progress entry must be [id, value, message]")
            jid, value, message = p
            if type(jid) is not str or type(message) is not str:
                raise ProtocolError("progress id and message must be strings")
            if value is not None and (type(value) is not int or not 0 <= value <= 100):
                raise ProtocolError(f"progress value {value!r} must be an int 0–100 or nil")
            progress.append((jid, value, message))
        failures = []
        for f in _field(body, "failures", list, []):
            if type(f) is not list or len(f) != 3 or any(type(x) is not str for x in f):
                raise ProtocolError("each failure must be [id, reason, traceback] strings")
            failures.append((f[0], f[1], f[2]))
        frames = iter(blobs)
        checkpoints = []
        for c in _field(body, "checkpoints", list, []):
            if type(c) is not list or len(c) != 2 or type(c[0]) is not str:
                raise ProtocolError("each checkpoint must be [id, bin or nil]")
            checkpoints.append((c[0], take(c[1], frames, f"checkpoint of {c[0]}")))
        results: list[tuple[str, Blob] | tuple[str, Blob, FileSet]] = []
        for r in _field(body, "results", list, []):
            if type(r) is not list or len(r) not in (2, 3) or type(r[0]) is not str:
                raise ProtocolError("each result must be [id, bin or nil, files?]")
            value = take(r[1], frames, f"result of {r[0]}")
            if len(r) == 2:
                results.append((r[0], value))
            else:
                results.append((r[0], value, take_files(r[2], frames, f"result of {r[0]}")))
        _no_frames_left(frames, "report")
        credit = _field(body, "credit", int, 0)
        if not 0 <= credit <= 1_000_000:
            raise ProtocolError(f"credit {credit} must be 0–1,000,000")
        started = _str_list(body, "started") if "started" in body else []
        used = _used(body["used"]) if "used" in body else []
        usage = _usage(body["usage"], "usage") if "usage" in body else None
        stopped = _str_list(body, "stopped") if "stopped" in body else []
        return cls(
            started,
            progress,
            results,
            failures,
            credit,
            _seq(body, "seq"),
            used,
            usage,
            stopped,
            checkpoints,
        )


@dataclass(frozen=True, slots=True)
class _Empty(Message):
    """A message whose command says it all: an empty body."""

    def body(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Alive. From a worker it may carry ``usage``: [rss, peak_rss, cpu_seconds] of its
    process (bytes, bytes, seconds); from the broker it is empty, except in the answer to a
    ``register``, which names the broker's ``client`` endpoint (where assistants are
    submitted)."""

    COMMAND = Command.HEARTBEAT
    usage: Usage | None = None
    #: from the broker, in its answer to a register: its client endpoint (for assistants)
    client: str = ""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.usage is not None:
            body["usage"] = list(self.usage)
        if self.client:
            body["client"] = self.client
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Heartbeat:
        usage = _usage(body["usage"], "usage") if "usage" in body else None
        return cls(usage, _field(body, "client", str, ""))


@dataclass(frozen=True, slots=True)
class Goodbye(_Empty):
    COMMAND = Command.GOODBYE


# broker -> worker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssignedJob:
    id: str
    requirements: JobRequirements
    keys: tuple[str, ...] = ()
    values: Sequence[Blob] = ()
    files: FileSet | None = None
    #: the job's latest checkpoint (it ran before: preempted, or its worker was lost)
    checkpoint: Blob | None = None
    #: the master job's id, for an assistant
    parent: str = ""
    #: False for a spare-capacity job, the first to be preempted
    protected: bool = True
    #: a job submitted ``after`` others: per predecessor (id, its first file, its file count);
    #: its result is the content ``@id``, its result files those entries of ``files``
    after: Sequence[tuple[str, int, int]] = ()
    #: a work package's jobs (same message, one after the other) carry its first job's id:
    #: the worker runs them in one slot and gives back one credit for all of them
    package: str = ""

    def extra(self, frames: list[Blob]) -> dict[str, Any] | None:
        """The optional fifth element of a job row (None when there is nothing to say)."""
        if (
            self.checkpoint is None
            and not self.parent
            and self.protected
            and not self.after
            and not self.package
        ):
            return None
        extra: dict[str, Any] = {}
        if self.package:
            extra["package"] = self.package
        if self.after:
            extra["after"] = [list(a) for a in self.after]
        if self.checkpoint is not None:
            extra["checkpoint"] = inline(self.checkpoint, frames)
        if self.parent:
            extra["parent"] = self.parent
        if not self.protected:
            extra["protected"] = False
        return extra


@dataclass(frozen=True, slots=True)
class Jobs(Message):
    """Jobs for a worker, as many as it had credit for; contents as in SubmitRequest.
    ``ack`` (> 0) acknowledges the worker's reports up to that ``seq``, as :class:`Ack` does."""

    COMMAND = Command.JOBS
    jobs: Sequence[AssignedJob]
    ack: int = 0

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        table, index = _table_of([j.requirements for j in self.jobs])
        frames: list[Blob] = []
        jobs = []
        for j in self.jobs:
            row = _job_row(
                j.id,
                index[j.requirements],
                _pack_contents(j.keys, j.values, frames),
                j.files,
                frames,
            )
            extra = j.extra(frames)
            if extra is not None:
                if len(row) == 3:
                    row.append(None)  # no files
                row.append(extra)
            jobs.append(row)
        body: dict[str, Any] = {"reqs": table, "jobs": jobs}
        if self.ack:
            body["ack"] = self.ack
        return body, frames

    def body(self) -> dict[str, Any]:
        return self.parts()[0]

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Jobs:
        table = _reqs_table(body)
        frames = iter(blobs)
        jobs = []
        for raw in _field(body, "jobs", list):
            if type(raw) is not list or len(raw) not in (3, 4, 5) or type(raw[0]) is not str:
                raise ProtocolError("each job must be [id, reqs index, contents, files?, extra?]")
            jid, idx, contents = raw[:3]
            keys, values = _unpack_contents(contents, frames, jid)
            fs = (
                take_files(raw[3], frames, f"job {jid}")
                if len(raw) > 3 and raw[3] is not None
                else None
            )
            if len(raw) == 5:
                extra = raw[4]
                if type(extra) is not dict:
                    raise ProtocolError(f"job {jid}: its fifth element must be a map")
                checkpoint = (
                    take(extra["checkpoint"], frames, f"checkpoint of {jid}")
                    if "checkpoint" in extra
                    else None
                )
                after = []
                for a in _field(extra, "after", list, []):
                    if (
                        type(a) is not list
                        or len(a) != 3
                        or type(a[0]) is not str
                        or any(type(x) is not int or x < 0 for x in a[1:])
                    ):
                        raise ProtocolError(f"job {jid}: each 'after' entry is [id, first, count]")
                    after.append((a[0], a[1], a[2]))
                # (one constructor call: a dataclasses.replace per job cost more than the rest
                # of its decoding)
                job = AssignedJob(
                    jid,
                    _pick(table, idx),
                    keys,
                    values,
                    fs,
                    checkpoint,
                    _field(extra, "parent", str, ""),
                    _field(extra, "protected", bool, True),
                    after,
                    _field(extra, "package", str, ""),
                )
            else:
                job = AssignedJob(jid, _pick(table, idx), keys, values, fs)
            jobs.append(job)
        _no_frames_left(frames, "jobs")
        return cls(jobs, _seq(body, "ack"))


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Stop working on these jobs, for ``reason``: ``terminated`` (by a client), ``time
    limit``, ``preempted`` (a protected job needs the slot: the job runs again later) or
    ``parent ended`` (an assistant whose master job is over)."""

    COMMAND = Command.CANCEL
    ids: Sequence[str]
    reason: str = ""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ids": list(self.ids)}
        if self.reason:
            body["reason"] = self.reason
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Cancel:
        return cls(_str_list(body, "ids"), _field(body, "reason", str, ""))


@dataclass(frozen=True, slots=True)
class Controls(Message):
    """Control messages for jobs the worker holds: ``[id, seq, bin or nil]`` each, in the
    order clients sent them (``seq`` counts a job's messages from 1)."""

    COMMAND = Command.CONTROLS
    messages: Sequence[tuple[str, int, Blob]]

    def parts(self) -> tuple[dict[str, Any], Sequence[Blob]]:
        frames: list[Blob] = []
        rows = [[jid, seq, inline(data, frames)] for jid, seq, data in self.messages]
        return {"messages": rows}, frames

    def body(self) -> dict[str, Any]:
        return self.parts()[0]

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Controls:
        frames = iter(blobs)
        messages = []
        for m in _field(body, "messages", list):
            if type(m) is not list or len(m) != 3 or type(m[0]) is not str or type(m[1]) is not int:
                raise ProtocolError("each control message must be [id, seq, bin or nil]")
            messages.append((m[0], m[1], take(m[2], frames, f"control message of {m[0]}")))
        _no_frames_left(frames, "controls")
        return cls(messages)


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    COMMAND = Command.SHUTDOWN
    reason: str = ""

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Shutdown:
        return cls(_field(body, "reason", str, ""))


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The broker has applied (and journaled) the worker's reports up to ``seq``: the worker
    may forget them. ``dropped`` lists ``(id, why)`` for results and failures among them that
    the broker refused because the job is no longer this worker's (terminated, over its time
    limit, given to another worker, unknown)."""

    COMMAND = Command.ACK
    seq: int
    dropped: Sequence[tuple[str, str]] = ()

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"seq": self.seq}
        if self.dropped:
            body["dropped"] = [list(d) for d in self.dropped]
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], blobs: list[Blob]) -> Ack:
        dropped = []
        for d in _field(body, "dropped", list, []):
            if type(d) is not list or len(d) != 2 or any(type(x) is not str for x in d):
                raise ProtocolError("each dropped entry must be [id, why] strings")
            dropped.append((d[0], d[1]))
        if "seq" not in body:
            raise ProtocolError("missing field 'seq'")
        return cls(_seq(body, "seq"), dropped)


# ---------------------------------------------------------------------------- encode / decode

MESSAGES: dict[bytes, type[Message]] = {
    cls.COMMAND.value: cls
    for cls in (
        HelloRequest,
        IoTypesRequest,
        CanMeshRequest,
        RequirementsRequest,
        SubmitRequest,
        StatusRequest,
        TerminateRequest,
        ProgressRequest,
        ResultRequest,
        CollectRequest,
        WorkersRequest,
        ListJobsRequest,
        StatsRequest,
        ControlRequest,
        PutRequest,
        GetRequest,
        Reply,
        Error,
        Register,
        Report,
        Heartbeat,
        Goodbye,
        Jobs,
        Cancel,
        Controls,
        Shutdown,
        Ack,
    )
}


def encode(msg: Message) -> list[Blob]:
    """The frames of a message: version, command, body, blobs."""
    body, blobs = msg.parts()
    return [VERSION, msg.COMMAND.value, pack(body), *blobs]


def check_envelope(frames: Sequence[Any], allowed: frozenset[bytes]) -> bytes:
    """Check version and command without decoding the body; return the command.

    ``frames`` starts at the version frame (the ROUTER identity already removed).
    """
    if len(frames) < 3:
        raise ProtocolError(
            f"a message needs at least 3 frames (version, command, body), got {len(frames)}",
            code="bad-envelope",
        )
    version = bytes(frames[0])
    if version != VERSION:
        raise ProtocolError(
            f"protocol version mismatch: this broker speaks {VERSION.decode()}, "
            f"the message says {version[:32]!r}",
            code="version",
        )
    command = bytes(frames[1])
    if command not in allowed:
        raise ProtocolError(f"unknown command {command[:32]!r}", code="unknown-command")
    return command


def decode(frames: Sequence[Any], allowed: frozenset[bytes] | None = None) -> Message:
    """Decode a whole message (version, command, body, blobs) into its dataclass."""
    command = check_envelope(frames, allowed if allowed is not None else _ALL)
    body = unpack(bytes(frames[2]))
    if not isinstance(body, dict):
        raise ProtocolError("body must be a msgpack map")
    return MESSAGES[command].from_body(body, list(frames[3:]))


def request_id(frames: Sequence[Any]) -> int:
    """Best effort: the ``rid`` of a request too broken to decode, or -1."""
    try:
        body = unpack(bytes(frames[2]))
        rid = body.get("rid", -1) if isinstance(body, dict) else -1
        return rid if type(rid) is int else -1
    except Exception:
        return -1


_ALL = frozenset(c.value for c in Command)


def job_ids(msg: Message) -> list[str]:
    """The ids of the jobs a message is about, in order (for trace lines; none if it names
    none)."""
    if isinstance(msg, Report):
        ids = [*msg.started, *(p[0] for p in msg.progress), *(r[0] for r in msg.results)]
        return list(dict.fromkeys([*ids, *(f[0] for f in msg.failures)]))
    if isinstance(msg, (SubmitRequest, Jobs)):
        return [j.id for j in msg.jobs]
    if isinstance(msg, (StatusRequest, Cancel)):
        return list(msg.ids)
    if isinstance(msg, (ProgressRequest, ControlRequest)):
        return [msg.id]
    if isinstance(msg, Controls):
        return list(dict.fromkeys(m[0] for m in msg.messages))
    if isinstance(msg, CollectRequest):
        return list(msg.add)
    if isinstance(msg, Register):
        return list(msg.held)
    if isinstance(msg, Ack):
        return [d[0] for d in msg.dropped]
    if isinstance(msg, Reply):
        data = msg.data
        rows = data.get("results") if isinstance(data, dict) else data
        if isinstance(rows, list):
            return [r[0] for r in rows if isinstance(r, list) and r and isinstance(r[0], str)]
    return []


def name_jobs(ids: Sequence[str], first: int = 3) -> str:
    """ " jobs=a,b,c (+N more)" for a trace line; "" for none."""
    if not ids:
        return ""
    more = f" (+{len(ids) - first} more)" if len(ids) > first else ""
    return f" jobs={','.join(ids[:first])}{more}"
