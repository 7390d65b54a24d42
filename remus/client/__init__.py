"""Client side: ``Client`` (one method per broker request) and ``BasicClient`` (for scripts)."""

from remus.client.basic import BasicClient
from remus.client.client import Client

__all__ = ["BasicClient", "Client"]
