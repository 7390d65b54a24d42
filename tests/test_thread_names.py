"""The operating system sees remus's threads by name: ``top -H`` shows which one is busy."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from remus import IOType
from remus.log import name_os_thread

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc names"),
]


def os_names() -> set[str]:
    names = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:
            pass  # a thread that ended meanwhile
    return names


def test_the_broker_and_worker_threads_have_their_names_in_the_os(
    make_server: Callable[..., Any], make_worker: Callable[..., Any]
) -> None:
    server = make_server()
    w = make_worker(IOType("Names", "Shown"), server.ports.worker)
    connection = w._conn.name[:15]
    wanted = {"remus-core", "remus-client", "remus-worker", "remus-spool", connection}
    wait_for(lambda: wanted <= os_names(), timeout=10)


def test_a_long_name_is_cut_to_what_linux_keeps() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread()
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text())

    t = threading.Thread(target=run, name="remus-a-very-long-thread-name")
    t.start()
    t.join(5)
    assert seen == ["remus-a-very-lo\n"]
