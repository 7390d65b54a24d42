"""Remus worker files (``*.rw``): what a worker executable offers and how to start it.

A worker file is a JSON object, as in Kitware's Remus::

    {
      "InputType": "Points",
      "OutputType": "Mesh2D",
      "ExecutableName": "triangulate.py",
      "WorkerName": "Triangulator",
      "Tag": {"quality": "draft"},
      "Arguments": ["--config", "@SELF@"],
      "Environment": {"OMP_NUM_THREADS": "1"},
      "File": "requirements.json",
      "FileFormat": "JSON"
    }

Only ``ExecutableName``, ``InputType`` and ``OutputType`` are required. The format is documented
for users in ``docs/workers.md``. Nothing here starts a process: see :mod:`remus.server.factory`.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from remus.errors import WorkerFileError
from remus.types import IOType, JobRequirements

log = logging.getLogger(__name__)

EXTENSION = ".rw"
SELF_MARKER = "@SELF@"
FILE_FORMATS = ("USER", "JSON", "XML", "BSON")
KNOWN_KEYS = (
    "ExecutableName",
    "InputType",
    "OutputType",
    "WorkerName",
    "Tag",
    "Arguments",
    "Environment",
    "File",
    "FileFormat",
    "Slots",
)
#: the variable a spawned worker finds its worker file's "Slots" in
SLOTS_VARIABLE = "REMUS_SLOTS"
MAX_WORKER_FILE_BYTES = 1 << 20
MAX_REQUIREMENT_FILE_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class WorkerFile:
    """One parsed, usable worker file.

    ``path`` and ``executable`` are absolute; ``arguments`` already have ``@SELF@`` replaced;
    ``environment`` holds only the variables the file sets (the factory merges them).
    """

    path: str
    requirements: JobRequirements
    executable: str
    arguments: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def io_type(self) -> IOType:
        return self.requirements.io_type

    @property
    def worker_name(self) -> str:
        return self.requirements.worker_name


def is_worker_file(name: str) -> bool:
    """True for names ending in ``.rw``, in any case (``mesher.RW`` counts)."""
    return name.lower().endswith(EXTENSION)


def load_worker_file(path: str | os.PathLike[str]) -> WorkerFile:
    """Parse and check one worker file; raise :class:`WorkerFileError` saying what to fix."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    raw = _read_json(path)

    for key in raw:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            log.warning("%s: ignoring unknown key %r%s", path, key, hint)

    input_type = _required_str(path, raw, "InputType")
    output_type = _required_str(path, raw, "OutputType")
    exe_name = _required_str(path, raw, "ExecutableName")
    executable = _resolve_executable(path, folder, exe_name)

    worker_name = raw.get("WorkerName")
    if worker_name is None:
        worker_name = os.path.splitext(os.path.basename(exe_name))[0]
    elif not isinstance(worker_name, str):
        raise WorkerFileError(path, f'"WorkerName" must be a string, got {worker_name!r}')

    arguments = _arguments(path, raw.get("Arguments", []))
    environment = _environment(path, raw.get("Environment", {}))
    slots = raw.get("Slots", 1)
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1024:
        raise WorkerFileError(path, f'"Slots" must be a whole number from 1 to 1024, got {slots!r}')
    if "Slots" in raw:  # the worker reads it (remus.worker.Worker's default slots)
        environment = {**environment, SLOTS_VARIABLE: str(slots)}
    content, content_format = _requirement_content(path, folder, raw)

    try:
        requirements = JobRequirements(
            IOType(input_type, output_type),
            worker_name=worker_name,
            tag=raw.get("Tag"),
            content=content,
            content_format=content_format,
        )
    except (TypeError, ValueError) as e:
        raise WorkerFileError(path, str(e)) from e
    return WorkerFile(path, requirements, executable, arguments, MappingProxyType(environment))


def scan(
    search_paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[WorkerFile], list[WorkerFileError]]:
    """Load every worker file in the given folders (not recursive); a path may also be a file.

    Returns the usable files (in a stable order, each real file once) and one error per file or
    folder that could not be used. Nothing is raised for a bad file: the caller logs the errors.
    """
    found: list[WorkerFile] = []
    errors: list[WorkerFileError] = []
    seen: set[str] = set()
    for candidate in _candidates(search_paths, errors):
        real = os.path.realpath(candidate)
        if real in seen:
            continue
        seen.add(real)
        try:
            found.append(load_worker_file(candidate))
        except WorkerFileError as e:
            errors.append(e)
    return found, errors


def check_worker_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, str | None]]:
    """The verdict for every worker file under ``paths``: ``(path, problem)``, problem None if ok.

    A folder that does not exist or holds no worker file is reported too, so that
    ``remus server --check-workers DIR`` never answers a typo with silence.
    """
    results: list[tuple[str, str | None]] = []
    for folder in paths:
        folder = os.fspath(folder)
        errors: list[WorkerFileError] = []
        candidates = list(_candidates([folder], errors))
        results.extend((e.path, e.problem) for e in errors)
        if not candidates and not errors:
            results.append((os.path.abspath(folder), f"no {EXTENSION} worker files here"))
        for candidate in candidates:
            try:
                load_worker_file(candidate)
            except WorkerFileError as e:
                results.append((e.path, e.problem))
            else:
                results.append((os.path.abspath(candidate), None))
    return results


def format_check_report(results: Iterable[tuple[str, str | None]]) -> str:
    """One line per path (``ok`` or ``FAIL: problem``) and a count, for ``--check-workers``."""
    lines = []
    good = bad = 0
    for path, problem in results:
        if problem is None:
            good += 1
            lines.append(f"ok    {path}")
        else:
            bad += 1
            lines.append(f"FAIL  {path}: {problem}")
    lines.append(f"{good} usable, {bad} with problems")
    return "\n".join(lines)


def _candidates(
    search_paths: Iterable[str | os.PathLike[str]], errors: list[WorkerFileError]
) -> Iterable[str]:
    for entry in search_paths:
        entry = os.path.abspath(os.fspath(entry))
        if os.path.isfile(entry):
            yield entry
            continue
        try:
            names = sorted(os.listdir(entry))
        except OSError as e:
            problem = "no such folder" if isinstance(e, FileNotFoundError) else e.strerror
            errors.append(WorkerFileError(entry, f"cannot search for worker files: {problem}"))
            continue
        for name in names:
            full = os.path.join(entry, name)
            if is_worker_file(name) and os.path.isfile(full):
                yield full


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_WORKER_FILE_BYTES + 1)
    except OSError as e:
        raise WorkerFileError(path, f"cannot read the worker file: {e.strerror}") from e
    if len(data) > MAX_WORKER_FILE_BYTES:
        raise WorkerFileError(path, "the worker file is larger than 1 MiB; is it a worker file?")
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise WorkerFileError(path, "the worker file is not UTF-8 text") from e
    except json.JSONDecodeError as e:
        raise WorkerFileError(
            path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from e
    if not isinstance(raw, dict):
        raise WorkerFileError(
            path, f"a worker file must be a JSON object {{...}}, not a {type(raw).__name__}"
        )
    return raw


def _required_str(path: str, raw: Mapping[str, Any], key: str) -> str:
    if key not in raw:
        raise WorkerFileError(path, f'missing required key "{key}"')
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise WorkerFileError(path, f'"{key}" must be a non-empty string, got {value!r}')
    return value


def _resolve_executable(path: str, folder: str, name: str) -> str:
    """Absolute as given; a bare name found on PATH; otherwise relative to the file's folder."""
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded):
        candidate = expanded
    else:
        found = None if os.sep in name or (os.altsep and os.altsep in name) else shutil.which(name)
        candidate = found or os.path.join(folder, expanded)
    candidate = os.path.normpath(candidate)
    if not os.path.isfile(candidate):
        raise WorkerFileError(
            path,
            f'"ExecutableName" {name!r} not found: looked for {candidate}'
            + ("" if os.path.isabs(expanded) else " and on PATH")
            + "; fix the name or give an absolute path",
        )
    if not os.access(candidate, os.X_OK):
        raise WorkerFileError(
            path, f'"ExecutableName" {candidate} is not executable; run: chmod +x {candidate}'
        )
    return candidate


def _arguments(path: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise WorkerFileError(path, f'"Arguments" must be a list of strings, got {value!r}')
    return tuple(a.replace(SELF_MARKER, path, 1) for a in value)


def _environment(path: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise WorkerFileError(path, f'"Environment" must be an object of strings, got {value!r}')
    for key, val in value.items():
        if not isinstance(val, str):
            raise WorkerFileError(
                path, f'"Environment" value of {key!r} must be a string: write "{val}" in quotes'
            )
        if not key or "=" in key or "\0" in key or "\0" in val:
            raise WorkerFileError(path, f'"Environment" has an invalid variable name {key!r}')
    return dict(value)


def _requirement_content(path: str, folder: str, raw: Mapping[str, Any]) -> tuple[bytes, str]:
    fmt = raw.get("FileFormat", "USER")
    if not isinstance(fmt, str) or fmt.upper() not in FILE_FORMATS:
        raise WorkerFileError(
            path, f'"FileFormat" must be one of {", ".join(FILE_FORMATS)}, got {fmt!r}'
        )
    fmt = fmt.upper()
    name = raw.get("File")
    if name is None:
        return b"", fmt
    if not isinstance(name, str) or not name:
        raise WorkerFileError(path, f'"File" must be a file name, got {name!r}')
    full = os.path.join(folder, os.path.expanduser(name))
    try:
        with open(full, "rb") as f:
            content = f.read(MAX_REQUIREMENT_FILE_BYTES + 1)
    except OSError as e:
        raise WorkerFileError(
            path, f'"File" {name!r}: cannot read {full}: {e.strerror}; put it next to the .rw file'
        ) from e
    if len(content) > MAX_REQUIREMENT_FILE_BYTES:
        raise WorkerFileError(path, f'"File" {full} is larger than 16 MiB')
    _check_content(path, full, content, fmt)
    return content, fmt


def _check_content(path: str, full: str, content: bytes, fmt: str) -> None:
    """JSON and XML requirement files must parse; USER and BSON are passed through as bytes."""
    try:
        if fmt == "JSON":
            json.loads(content.decode("utf-8-sig"))
        elif fmt == "XML":
            ET.fromstring(content)
    except (UnicodeDecodeError, ValueError, ET.ParseError) as e:
        raise WorkerFileError(
            path, f'"File" {full} is not valid {fmt} ({e}); fix it or set "FileFormat": "USER"'
        ) from e
