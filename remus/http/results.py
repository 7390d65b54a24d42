"""A job's result as an HTTP answer.

- bytes: the body, ``application/octet-stream``;
- one file: its bytes, with ``Content-Disposition: attachment; filename="NAME"``;
- several files: ``multipart/mixed``, one part per file in order, each with its own
  ``Content-Disposition`` (any MIME library splits it; Python's ``email`` module does).

Headers on every answer: ``X-Remus-Job`` (the job id), ``X-Remus-Status: FINISHED``, and when
the worker measured them ``X-Remus-Peak-RSS`` (bytes) and ``X-Remus-CPU`` (seconds). A file
over 4 MiB reaches the gateway through the broker's spool into a private folder of the result
(``JobFileResult.folder``); it is sent from there with ``sendfile`` and goes with the result.
"""

from __future__ import annotations

import contextlib
import io
import os
import urllib.parse
from typing import IO, Any

from aiohttp import MultipartWriter, web

from remus.files import JobFileResult
from remus.types import Buffer, FileHandle, JobResult

OCTETS = "application/octet-stream"
#: bodies up to this size are sent as plain responses
SMALL = 1024**2


def result_headers(result: JobResult) -> dict[str, str]:
    headers = {"X-Remus-Job": result.job_id, "X-Remus-Status": "FINISHED"}
    if result.peak_rss is not None:
        headers["X-Remus-Peak-RSS"] = str(result.peak_rss)
    if result.cpu is not None:
        headers["X-Remus-CPU"] = f"{result.cpu:.6f}"
    return headers


async def write_result(request: web.Request, result: JobResult) -> web.StreamResponse:
    """Answer ``request`` with ``result`` (200). The answer is sent before this returns, so a
    fetched file is read while ``result`` (which owns its folder) is still alive."""
    headers = result_headers(result)
    if not isinstance(result, JobFileResult) or not result.files:
        return await _bytes(request, result.data, headers)
    if len(result.files) == 1:
        return await _one_file(request, result.files[0], headers)
    return await _files(request, result.files, headers)


async def _bytes(request: web.Request, data: Buffer, headers: dict[str, str]) -> web.StreamResponse:
    """``data`` as the body. Small: a plain response; large (a result over 1 MiB comes as a
    view of the message it arrived in): written from that view, without a copy."""
    if not isinstance(data, memoryview) and len(data) <= SMALL:
        return web.Response(body=data, content_type=OCTETS, headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": OCTETS})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data)
    await response.write_eof()
    return response


def _part(f: FileHandle, opened: list[IO[bytes]]) -> Any:
    """What a file's part is made of: its bytes, or its file opened (noted in ``opened``)."""
    if f.data is None:
        handle = open(f.path, "rb")  # noqa: SIM115 (closed by the caller, once sent)
        opened.append(handle)
        return handle
    if isinstance(f.data, memoryview) or len(f.data) > SMALL:
        return io.BytesIO(f.data)  # (aiohttp warns about a large bytes part)
    return f.data


def _name(f: FileHandle) -> str:
    return os.path.basename(f.path) or "result"


def attachment(name: str) -> str:
    """``Content-Disposition`` for a file (RFC 6266): the name as a quoted string, and as
    ``filename*`` (UTF-8, percent-encoded) too when it is not plain ASCII."""
    plain = name.isascii() and name.isprintable()
    ascii_name = "".join(c if c.isascii() and c.isprintable() else "_" for c in name)
    quoted = ascii_name.replace("\\", "\\\\").replace('"', '\\"')
    value = f'attachment; filename="{quoted}"'
    if not plain:
        value += f"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"
    return value


async def _one_file(
    request: web.Request, f: FileHandle, headers: dict[str, str]
) -> web.StreamResponse:
    headers["Content-Disposition"] = attachment(_name(f))
    if f.data is not None:
        return await _bytes(request, f.data, headers)
    response = web.FileResponse(f.path, headers={**headers, "Content-Type": OCTETS})
    await response.prepare(request)
    return response


async def _files(
    request: web.Request, files: tuple[FileHandle, ...], headers: dict[str, str]
) -> web.StreamResponse:
    opened: list[IO[bytes]] = []
    try:
        with MultipartWriter("mixed") as parts:
            for f in files:
                part_headers = {"Content-Type": OCTETS, "Content-Disposition": attachment(_name(f))}
                parts.append(_part(f, opened), part_headers)
        response = web.Response(body=parts, headers=headers)
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        for handle in opened:
            with contextlib.suppress(OSError):
                handle.close()
