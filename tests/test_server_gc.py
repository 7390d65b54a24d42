"""An in-process broker gets the collector tuning `remus server` has, and gives it back."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from remus.server import Server, ServerConfig, ServerPorts

pytestmark = pytest.mark.timeout(30)

TUNED = ServerConfig().gc_threshold


@pytest.fixture
def host_thresholds() -> Iterator[tuple[int, ...]]:
    """The host process's own thresholds (distinct from the broker's), restored after."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_a_running_broker_collects_rarely_and_restores_the_hosts_setting(
    host_thresholds: tuple[int, ...],
) -> None:
    assert TUNED is not None and host_thresholds != TUNED
    with Server(ServerPorts.ephemeral()):
        assert gc.get_threshold() == TUNED
        with Server(ServerPorts.ephemeral()):
            assert gc.get_threshold() == TUNED
        assert gc.get_threshold() == TUNED, "the first broker still runs"
    assert gc.get_threshold() == host_thresholds


def test_none_leaves_the_collector_alone(host_thresholds: tuple[int, ...]) -> None:
    with Server(ServerPorts.ephemeral(), config=ServerConfig(gc_threshold=None)):
        assert gc.get_threshold() == host_thresholds
    assert gc.get_threshold() == host_thresholds


def test_a_broker_that_cannot_start_gives_the_setting_back(
    host_thresholds: tuple[int, ...],
) -> None:
    with Server(ServerPorts.ephemeral()) as first:
        taken = first.ports.client
        with pytest.raises(Exception, match="cannot bind"):
            Server(ServerPorts(taken, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")).start()
        assert gc.get_threshold() == TUNED
    assert gc.get_threshold() == host_thresholds
