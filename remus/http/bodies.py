"""Request bodies into jobs: the body as the job's ``data``, or ``multipart/form-data`` for
named contents or files.

- Any body that is not ``multipart/form-data`` is the job's ``data`` as it is, whatever its
  content type (``curl -d``'s form encoding included): it is held in memory, up to
  ``--max-body``.
- ``multipart/form-data``: a part with a filename is a file. It is written to disk as it
  arrives (never whole in memory), into a private folder made for the request, and the job is a
  ``JobFileRequest`` of those files, under their own (sanitised) names; parts named ``args``
  are then its command-line arguments, in order. Without any file part, each part is a named
  content (``data`` is the default key). A job takes contents or files, not both (as
  ``BasicClient.submit``): other parts beside files are refused.

Every refusal is a :class:`~remus.http.replies.Problem` (400 bad body, 413 too large), and a
body that is refused leaves no file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import cast

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from remus.files import JobFileRequest
from remus.http.replies import Problem
from remus.types import Buffer, FileHandle, JobRequirements, JobSubmission

#: bytes read from the network at a time
CHUNK = 256 * 1024
#: a part named so is a command-line argument of a file job
ARGS = "args"
#: longest file name kept (bytes of UTF-8); longer ones are cut
MAX_NAME = 200


@dataclass
class Body:
    """A request body, read: named contents, or files on disk and arguments."""

    contents: dict[str, Buffer] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    #: the private folder the files are in ("" if none): see :meth:`remove`
    folder: str = ""
    size: int = 0

    def submission(self, requirements: JobRequirements) -> JobSubmission | JobFileRequest:
        if self.files:
            return JobFileRequest(requirements, [FileHandle(f) for f in self.files], self.args)
        # (a bytearray body is taken as is: a submission takes any buffer, not only bytes)
        return JobSubmission(requirements, cast(dict[str, bytes], self.contents))

    @property
    def data_only(self) -> bool:
        """Just ``data`` (a plain body): the job can be submitted and followed in one call."""
        return not self.files and list(self.contents) == ["data"]

    def remove(self) -> None:
        """Remove the files (once the broker holds their bytes, or the request is refused)."""
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = ""


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "too-large",
        f"the request body is over {limit:,} bytes, the most this gateway takes "
        "(remus http --max-body)",
        limit=limit,
    )


async def read_body(request: web.Request, *, limit: int, upload_dir: str | None) -> Body:
    """The body of ``request``, at most ``limit`` bytes in all."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if request.content_type == "multipart/form-data":
        return await _multipart(request, limit, upload_dir)
    return Body({"data": await _whole(request, limit)})


async def _whole(request: web.Request, limit: int) -> Buffer:
    """A plain body in one buffer (grown in place: no second copy)."""
    if request.content_length is not None and request.content_length <= CHUNK:
        return await request.read()  # (small: aiohttp's own path is the fastest)
    buf = bytearray()
    while chunk := await request.content.read(CHUNK):
        if len(buf) + len(chunk) > limit:
            raise too_large(limit)
        buf += chunk
    return buf


async def _multipart(request: web.Request, limit: int, upload_dir: str | None) -> Body:
    body = Body()
    named: dict[str, list[Buffer]] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise Problem(400, "bad-body", "a part of the body is itself multipart")
            if part.filename is not None:
                if not body.folder:
                    body.folder = tempfile.mkdtemp(prefix="remus-http-", dir=upload_dir)
                body.files.append(await _save(part, body, limit))
                continue
            if not part.name:
                raise Problem(
                    400,
                    "bad-body",
                    "a multipart part has no name: give each part Content-Disposition: "
                    'form-data; name="KEY" (and filename="..." for a file)',
                )
            named.setdefault(part.name, []).append(await _read_part(part, body, limit))
    except Problem:
        body.remove()
        raise
    except (ValueError, AssertionError, HttpProcessingError) as e:  # aiohttp: a malformed body
        body.remove()
        raise Problem(400, "bad-body", f"the multipart body cannot be read: {e}") from None
    except BaseException:
        body.remove()
        raise
    try:
        _settle(body, named)
    except Problem:
        body.remove()
        raise
    return body


def _settle(body: Body, named: dict[str, list[Buffer]]) -> None:
    """Named parts as the job's arguments (beside files) or contents (without)."""
    if body.files:
        others = sorted(set(named) - {ARGS})
        if others:
            raise Problem(
                400,
                "bad-body",
                f"a job takes files or named contents, not both: drop the part(s) {others} "
                f"(beside files, only parts named {ARGS!r} are taken, as arguments)",
            )
        try:
            body.args = [bytes(a).decode() for a in named.get(ARGS, ())]
        except UnicodeDecodeError:
            raise Problem(400, "bad-body", "an 'args' part is not UTF-8 text") from None
        return
    for name, values in named.items():
        if len(values) > 1:
            raise Problem(400, "bad-body", f"the part {name!r} is given {len(values)} times")
        body.contents[name] = values[0]
    if not body.contents:
        raise Problem(400, "bad-body", "the multipart body has no part: nothing to submit")


async def _read_part(part: BodyPartReader, body: Body, limit: int) -> Buffer:
    buf = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        _count(body, len(chunk), limit)
        buf += chunk
    return buf


async def _save(part: BodyPartReader, body: Body, limit: int) -> str:
    """Write a file part into the body's folder as it arrives; its path. (Each write is one
    chunk into the page cache: short enough to do on the event loop.)"""
    name = _file_name(part.filename or "", len(body.files), body.folder)
    path = os.path.join(body.folder, name)
    with open(path, "xb") as f:
        while chunk := await part.read_chunk(CHUNK):
            _count(body, len(chunk), limit)
            f.write(chunk)
    return path


def _count(body: Body, n: int, limit: int) -> None:
    body.size += n
    if body.size > limit:
        raise too_large(limit)


def _file_name(given: str, index: int, folder: str) -> str:
    """A safe local name for an uploaded file: its base name without separators or control
    characters, cut to MAX_NAME bytes; a name used twice (or none) gets its index in front."""
    base = given.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    while len(base.encode()) > MAX_NAME:
        base = base[1:]
    if base in ("", ".", ".."):
        base = f"file{index}"
    name, n = base, index
    while os.path.exists(os.path.join(folder, name)):
        name, n = f"{n}-{base}", n + 1
    return name
