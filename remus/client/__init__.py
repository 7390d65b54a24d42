"""Client side: ``Client`` (one method per broker request) and ``BasicClient`` (for scripts)."""

from remus.client.basic import BasicClient
from remus.client.client import Client
from remus.client.workflow import Step

__all__ = ["BasicClient", "Client", "Step"]
