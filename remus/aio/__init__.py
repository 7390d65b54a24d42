"""remus for asyncio: ``AsyncClient`` (also ``remus.aio.Client``), the calls of ``Client`` and
``BasicClient`` as coroutines and async iterators, many coroutines on one connection.

::

    from remus.aio import AsyncClient

    async with AsyncClient(timeout=10) as c:
        result = await c.run(IOType("Text", "Upper"), b"hello")

See docs/aio.md.
"""

from remus.aio.client import AsyncClient
from remus.aio.connection import Connection

#: the asyncio client under the name of the synchronous one
Client = AsyncClient

__all__ = ["AsyncClient", "Client", "Connection"]
