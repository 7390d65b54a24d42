"""The remus broker: ``Server`` and its configuration."""

from remus.server.config import ServerConfig, ServerPorts
from remus.server.server import Server

__all__ = ["Server", "ServerConfig", "ServerPorts"]
