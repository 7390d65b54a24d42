"""Helpers shared by the asyncio tests (remus.aio, the HTTP gateway, the dashboard)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def arun(main: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Run ``main()`` in a fresh event loop; fail the test if it takes over ``timeout``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()

    return asyncio.run(bounded())


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "", every: float = 0.01
) -> Any:
    """Check ``predicate`` (a function or a coroutine function) every ``every`` s until it is
    truthy, and return its value; fail the test at the deadline, saying ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(every)
