"""composable_server.metrics on real sockets: the accept-queue depth, and a --metrics scrape."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from composable_server.metrics import QueueDepthCollector, accept_queue_depth

WAIT = 10.0


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape of *registry*, parsed by prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The samples() key of metric *name* with *labels*."""
    return name, tuple(sorted(labels.items()))


class TestQueueDepth:
    @pytest.mark.timeout(10)
    def test_depth_counts_unaccepted_connections(self) -> None:
        """The accept-queue depth of a listening socket is the connections not yet accepted."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=8)
        clients = []
        try:
            if accept_queue_depth(listener) is None:
                pytest.skip("TCP_INFO on a listening socket is Linux-only")
            assert accept_queue_depth(listener) == 0
            for _ in range(3):
                clients.append(socket.create_connection(listener.getsockname(), timeout=WAIT))
            registry = CollectorRegistry()
            registry.register(QueueDepthCollector(listener, transport="tcp", address="l"))
            assert samples(registry)[key("composable_server_queued_connections", address="l", transport="tcp")] == 3
            listener.accept()[0].close()
            assert accept_queue_depth(listener) == 2
        finally:
            for client in clients:
                client.close()
            listener.close()

    @pytest.mark.timeout(5)
    def test_not_a_tcp_listener(self) -> None:
        """A Unix or closed socket has no readable depth, and the collector then reports no sample."""
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert accept_queue_depth(unix) is None
        finally:
            unix.close()
        registry = CollectorRegistry()
        registry.register(QueueDepthCollector(lambda: None, transport="tcp", address="l"))
        assert not [key for key in samples(registry) if key[0].endswith("queued_connections")]
