"""Files that travel with jobs and results: absolute paths on one host, bytes between hosts.

Who does what (docs/files.md says it in prose, with permissions):

- a client sends paths when the broker shares its host, else it reads each file and sends the
  bytes (:func:`request_files`); a file it cannot read fails the submit at once;
- the broker accepts paths only from a client on its own host (:func:`accept_files`). A job of
  paths goes as paths to a worker on the submitter's host; for a worker on another host the
  broker reads the files itself, and only inside its operator's ``file_roots`` allow-list
  (:func:`files_for_worker`);
- a worker writes inline inputs into a private folder that is removed when the job ends
  (:class:`Scratch`, :func:`materialize`), and inlines its file results unless the submitter
  shares its host (:func:`result_files`);
- a client turns result files into :class:`FileHandle` objects and refuses a path that lives on
  another host (:func:`result_from_wire`); :meth:`JobFileResult.save` writes inline ones out.

Memory: a file is read with one ``readinto`` into one buffer that becomes a ZeroMQ frame as is,
and a received frame is written to disk straight from its buffer, so each process holds a file
at most once and msgpack never sees it. Past :data:`MAX_FILE_BYTES` nothing is read at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from remus import protocol as p
from remus.errors import FileError
from remus.types import Buffer, FileHandle, JobRequirements, JobResult

#: the most bytes the files of one job, or of one result, carry inline (together): just under
#: the broker's default 2 GiB message limit (``ServerConfig.max_message_bytes``), so that a job
#: at the limit still fits in one message with its body
MAX_FILE_BYTES = 2 * 1024**3 - 1024**2
#: largest single write() when a received file goes to disk
WRITE_CHUNK = 64 * 1024**2
#: read size when hashing
HASH_CHUNK = 1024**2

PathLike = FileHandle | str | os.PathLike[str]
#: uploads an open file to the broker's spool: (path, fd, size) -> its reference
Upload = Callable[[str, int, int], p.BlobRef]
#: fetches a spooled file into a local path: (ref, target path)
Fetch = Callable[[p.BlobRef, str], None]
#: files larger than this stream through the broker's spool in chunks (remus.transfer)
STREAM_FROM = 4 * 1024 * 1024


def handle(value: PathLike, mode: str = "rb") -> FileHandle:
    """A FileHandle from a handle, a str or a path-like (made absolute now)."""
    if isinstance(value, FileHandle):
        return value
    if isinstance(value, (str, os.PathLike)):
        return FileHandle(os.fspath(value), mode)
    raise TypeError(f"expected a FileHandle or a path, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class JobFileRequest:
    """Requirements plus input files and command-line ``args`` for the worker.

    Paths (str or path-like) become :class:`FileHandle` objects, absolute against the current
    directory. Submit it like a JobSubmission: ``client.submit_job(JobFileRequest(...))``.
    """

    requirements: JobRequirements
    files: Sequence[FileHandle] = ()
    args: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", JobRequirements.of(self.requirements))
        if isinstance(self.files, (str, os.PathLike, FileHandle)):
            raise TypeError("files must be a list of files, not one file")
        object.__setattr__(self, "files", tuple(handle(f) for f in self.files))
        if isinstance(self.args, str) or not all(isinstance(a, str) for a in self.args):
            raise TypeError("args must be a list of strings")
        object.__setattr__(self, "args", tuple(self.args))

    @property
    def inline_size(self) -> int:
        """Bytes already held in the handles (files with ``data``)."""
        return sum(len(f.data) for f in self.files if f.data is not None)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class JobFileResult(JobResult):
    """A result with files: each a local path (the worker shares this host, or a large file
    was fetched in chunks into :attr:`folder`) or inline bytes."""

    files: tuple[FileHandle, ...] = ()
    #: where large result files were fetched to (removed with this object; save() moves
    #: them out), or "" if none was
    folder: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        if self.folder:
            weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)

    def save(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write the inline files into ``directory`` (made if missing) under their base names
        (a name used twice gets its index in front) and return every file's local path, in
        order. A file fetched in chunks is moved there (a rename on the same file system: no
        second copy); a file that came as a path is already local and is returned as it is."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        used: set[str] = set()
        paths = []
        for i, f in enumerate(self.files):
            if f.data is None and not (self.folder and _inside(f.path, self.folder)):
                paths.append(f.path)
                continue
            target = os.path.join(directory, _local_name(f.path, i, used))
            if f.data is None:
                if os.path.exists(f.path):
                    shutil.move(f.path, target)
                elif not os.path.exists(target):  # (moved out by an earlier save)
                    raise FileError(f.path, "was moved by an earlier save() elsewhere")
            else:
                write_file(target, f.data)
            paths.append(target)
        return paths


# ---------------------------------------------------------------------------- reading, writing


def _open_regular(path: str) -> tuple[int, int]:
    """Open ``path`` for reading; (fd, size). A FIFO or device is refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileError(path, "no such file") from None
    except PermissionError:
        raise FileError(path, "permission denied: this process's user cannot read it") from None
    except OSError as e:
        raise FileError(path, f"cannot be opened: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file"
            raise FileError(path, f"is {kind}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _check_size(path: str, size: int, limit: int, already: int = 0) -> None:
    """FileError if a file of ``size`` bytes, after ``already`` bytes of the same job's other
    files, is over ``limit``."""
    if already + size > limit:
        others = f" (plus {already:,} bytes of other files)" if already else ""
        raise FileError(
            path,
            f"is {size:,} bytes{others}, over the {limit:,} bytes that one job or one result "
            f"may carry as file bytes (remus.files.MAX_FILE_BYTES is {MAX_FILE_BYTES:,}; the "
            "broker's max_message_bytes also applies)",
        )


def check_file(path: str) -> int:
    """Raise FileError unless ``path`` is a regular file this process can read; its size."""
    fd, size = _open_regular(path)
    os.close(fd)
    return size


def read_file(
    path: str,
    *,
    limit: int | None = None,
    already: int = 0,
    roots: Sequence[str] | None = None,
) -> bytearray:
    """The whole file in one buffer, read in place (no copy); refused, unread, past ``limit``
    (less ``already`` bytes of other files). With ``roots``, the file (after every symlink is
    resolved) must lie inside one of them."""
    fd, size = _open_regular(path)
    try:
        if roots is not None:
            check_roots(path, fd, roots)
        _check_size(path, size, MAX_FILE_BYTES if limit is None else limit, already)
        buf = bytearray(size)
        with open(fd, "rb", buffering=0, closefd=False) as f, memoryview(buf) as view:
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise FileError(path, f"shrank while being read ({got:,} of {size:,} bytes)")
                got += n
        return buf
    finally:
        os.close(fd)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_roots(path: str, fd: int, roots: Sequence[str]) -> None:
    if not roots:
        raise FileError(
            path,
            "the broker would have to read this file for a worker on another host, and its "
            "operator allows it to read none (remus server --file-root DIR)",
        )
    try:  # what was really opened, after symlinks, with no window for a swap
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
    if not any(_inside(real, root) for root in roots):
        raise FileError(
            path,
            "is outside the folders this broker may read for workers on other hosts "
            f"(--file-root: {', '.join(roots)})",
        )


def write_file(path: str, data: Buffer, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` straight from its buffer (``private``: mode 0600, new file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_EXCL if private else os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o666)
    try:
        with memoryview(data) as raw, raw.cast("B") as view:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done : done + WRITE_CHUNK])
    finally:
        os.close(fd)


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in job_id)[:40]


def _local_name(path: str, index: int, used: set[str]) -> str:
    """A safe file name for a file that came from elsewhere: its base name, never a path."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        name = f"file-{index}"
    while name in used:
        name = f"{index}-{name}"
    used.add(name)
    return name


def _buffer(blob: Any) -> Buffer:
    """Bytes as they came: small ones are bytes, large ones a view of their frame (no copy)."""
    return blob if isinstance(blob, (bytes, bytearray, memoryview)) else blob.buffer


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


def inline_size(fs: p.FileSet) -> int:
    return sum(len(e.data) for e in fs.files if e.data is not None)


# ---------------------------------------------------------------------------- client side


def streamed(path: str, upload: Upload) -> p.BlobRef | None:
    """Upload the file at ``path`` if it is large (over STREAM_FROM); None if it is not."""
    fd, size = _open_regular(path)
    try:
        return upload(path, fd, size) if size > STREAM_FROM else None
    finally:
        os.close(fd)


def request_files(
    req: JobFileRequest, *, inline: bool, limit: int | None = None, upload: Upload | None = None
) -> p.FileSet:
    """The wire form of a request's files: bytes if ``inline`` (the broker is on another host)
    or the handle has ``data``, else the path after checking it can be read. With ``upload``,
    a file to send whose size is over STREAM_FROM is uploaded in chunks and named by its
    reference instead. Raises FileError naming the first file that cannot be used."""
    limit = MAX_FILE_BYTES if limit is None else min(limit, MAX_FILE_BYTES)
    entries = []
    total = 0
    for h in req.files:
        data: Buffer | None = h.data
        if data is None:
            if inline and upload is not None:
                ref = streamed(h.path, upload)
                if ref is not None:
                    entries.append(p.FileEntry(h.path, h.mode, None, ref))
                    continue
            if inline:
                data = read_file(h.path, limit=limit, already=total)
            else:
                check_file(h.path)
        if data is not None:
            _check_size(h.path, len(data), limit, total)
            total += len(data)
        entries.append(p.FileEntry(h.path, h.mode, data))
    return p.FileSet(entries, req.args)


def result_from_wire(
    job_id: str,
    data: Buffer,
    fs: p.FileSet,
    own_host: str,
    *,
    peak_rss: int | None = None,
    cpu: float | None = None,
    fetch: Fetch | None = None,
) -> JobFileResult:
    """A file result as the client hands it over; FileError for a path on another host.
    Files in the broker's spool are fetched with ``fetch`` into a new private folder (the
    result's ``folder``)."""
    handles = []
    folder = ""
    used: set[str] = set()
    for i, e in enumerate(fs.files):
        if e.ref is not None:
            if fetch is None:
                raise FileError(e.path, "is in the broker's spool and this call cannot fetch it")
            if not folder:
                folder = tempfile.mkdtemp(prefix=f"remus-result-{_safe(job_id)}-")
            target = os.path.join(folder, _local_name(e.path, i, used))
            try:
                fetch(e.ref, target)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            handles.append(FileHandle(target, e.mode))
            continue
        if e.data is None and fs.host != own_host:
            raise FileError(
                e.path,
                f"the result of job {job_id} names this path on the worker's host "
                f"{fs.host or '(unknown)'}, and this client runs on {own_host}: retrieve it "
                "from that host",
            )
        handles.append(FileHandle(e.path, e.mode, None if e.data is None else _buffer(e.data)))
    raw = data if isinstance(data, bytes) else bytes(data)
    return JobFileResult(job_id, raw, tuple(handles), peak_rss=peak_rss, cpu=cpu, folder=folder)


# ---------------------------------------------------------------------------- broker side


def accept_files(fs: p.FileSet, submitter: str, broker: str) -> p.FileSet:
    """A submitted file set, stamped with the submitter's host. Paths are taken only from a
    client on the broker's own host (elsewhere nobody here could open them)."""
    for e in fs.files:
        if e.data is None and e.ref is None:
            if not os.path.isabs(e.path):
                raise FileError(e.path, "is not an absolute path")
            if not submitter or submitter != broker:
                raise FileError(
                    e.path,
                    f"is a path on host {submitter or '(undeclared)'}, not on the broker's host "
                    f"{broker or '(unknown)'}: send the file's bytes instead",
                )
    return dataclasses.replace(fs, host=submitter)


def files_for_worker(
    fs: p.FileSet,
    worker_host: str,
    roots: Sequence[str],
    serve: Callable[[str], p.BlobRef] | None = None,
) -> p.FileSet:
    """The files as a worker on ``worker_host`` gets them: as they are if it shares the
    submitter's host or every file is inline or spooled; else the broker sends the path-only
    ones, and only inside ``roots``, as references that ``serve`` makes: the spool thread reads
    them (in chunks when large), so the core thread only opens each to check it. Without
    ``serve`` they are read here. Raises FileError naming the file that cannot go."""
    if worker_host == fs.host or all(e.data is not None or e.ref for e in fs.files):
        return fs
    entries = []
    total = inline_size(fs)
    for e in fs.files:
        if e.data is None and e.ref is None and serve is not None:
            fd, _ = _open_regular(e.path)
            try:
                check_roots(e.path, fd, roots)
            finally:
                os.close(fd)
            entries.append(dataclasses.replace(e, ref=serve(e.path)))
            continue
        if e.data is None and e.ref is None:
            data = read_file(e.path, already=total, roots=roots)
            total += len(data)
            e = dataclasses.replace(e, data=data)
        entries.append(e)
    return dataclasses.replace(fs, files=entries)


# ---------------------------------------------------------------------------- worker side


class Scratch:
    """A job's private folder (mode 0700, in the temp directory), made on first use and
    removed with everything in it when the job ends."""

    __slots__ = ("_path", "_prefix", "_removed")

    def __init__(self, job_id: str) -> None:
        self._prefix = f"remus-{_safe(job_id)}-"
        self._path = ""
        self._removed = False

    @property
    def path(self) -> str:
        if self._removed:
            raise RuntimeError("this job has ended and its folder is removed")
        if not self._path:
            self._path = tempfile.mkdtemp(prefix=self._prefix)
        return self._path

    @property
    def made(self) -> bool:
        return bool(self._path)

    def holds(self, path: str) -> bool:
        return bool(self._path) and _inside(os.path.realpath(path), os.path.realpath(self._path))

    def remove(self) -> None:
        self._removed = True
        if self._path:
            shutil.rmtree(self._path, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<Scratch {self._path or '(not made)'}{' removed' if self._removed else ''}>"


def materialize(
    fs: p.FileSet, own_host: str, scratch: Scratch, fetch: Fetch | None = None
) -> tuple[FileHandle, ...]:
    """Each input as a local path: inline files are written into ``scratch``, spooled ones
    fetched there with ``fetch``; a path is used where it is, and only if it is on this host."""
    out = []
    used: set[str] = set()
    for i, e in enumerate(fs.files):
        if e.ref is not None:
            if fetch is None:
                raise FileError(e.path, "is in the broker's spool and this worker cannot fetch it")
            target = os.path.join(scratch.path, _local_name(e.path, i, used))
            fetch(e.ref, target)
            out.append(FileHandle(target, e.mode))
            continue
        if e.data is None:
            if fs.host != own_host:
                raise FileError(
                    e.path,
                    f"is a path on host {fs.host or '(unknown)'} and this worker runs on "
                    f"{own_host}; the broker should have sent its bytes",
                )
            out.append(FileHandle(e.path, e.mode))
            continue
        target = os.path.join(scratch.path, _local_name(e.path, i, used))
        try:
            write_file(target, _buffer(e.data), private=True)
        except OSError as err:
            raise FileError(target, f"cannot be written: {err.strerror}") from None
        out.append(FileHandle(target, e.mode))
    return tuple(out)


def result_files(
    values: Iterable[PathLike],
    *,
    inline: bool,
    scratch: Scratch | None = None,
    upload: Upload | None = None,
) -> p.FileSet:
    """A worker's file result on the wire. Bytes when ``inline`` (the submitter is on another
    host, or unknown) or when the file lies in the job's scratch folder (about to be removed),
    uploaded in chunks instead with ``upload`` when over STREAM_FROM; else the path, after
    checking it exists. Raises FileError for a file that cannot go."""
    entries = []
    total = 0
    for value in values:
        h = handle(value)
        data: Buffer | None = h.data
        if data is None:
            if inline or (scratch is not None and scratch.holds(h.path)):
                ref = streamed(h.path, upload) if upload is not None else None
                if ref is not None:
                    entries.append(p.FileEntry(h.path, h.mode, None, ref))
                    continue
                data = read_file(h.path, already=total)
            else:
                check_file(h.path)
        if data is not None:
            _check_size(h.path, len(data), MAX_FILE_BYTES, total)
            total += len(data)
        entries.append(p.FileEntry(h.path, h.mode, data))
    return p.FileSet(entries)
