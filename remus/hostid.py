"""Which host a peer runs on: files are handed over as paths only between peers on one host."""

from __future__ import annotations

import functools
import os
import socket


@functools.cache
def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


def host_id() -> str:
    """``REMUS_HOST_ID`` when set (tests use it to play several hosts), else machine id + name."""
    override = os.environ.get("REMUS_HOST_ID")
    if override:
        return override
    return f"{_machine_id()}/{socket.gethostname()}"
