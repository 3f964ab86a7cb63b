"""Unit tests of examples/rate_limit_verifier.py with composable_server.testing
(no sockets): run with ``python -m pytest examples/test_rate_limit_verifier.py``."""

from __future__ import annotations

from composable_server import Server
from composable_server.testing import MemoryAcceptor, MemoryTransport, RecordingHandler, check_verifier
from rate_limit_verifier import PerClientRateLimit


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refuse() -> None:
    """Admits *burst* requests from one client at once, then refuses."""
    verifier = PerClientRateLimit(rate=1.0, burst=2, clock=FakeClock())
    verdicts = [verifier.verify(None, ("192.0.2.1", 1000 + n)) for n in range(3)]
    assert verdicts == [True, True, False]


def test_refills_over_time() -> None:
    """A refused client is admitted again once a token has accrued."""
    clock = FakeClock()
    verifier = PerClientRateLimit(rate=2.0, burst=1, clock=clock)
    assert verifier.verify(None, ("192.0.2.1", 1))
    assert not verifier.verify(None, ("192.0.2.1", 2))
    clock.now += 0.5  # 2 tokens per second: one token
    assert verifier.verify(None, ("192.0.2.1", 3))


def test_clients_are_independent() -> None:
    """One client's burst does not use up another client's tokens."""
    verifier = PerClientRateLimit(rate=0.0, burst=1, clock=FakeClock())
    assert verifier.verify(None, ("192.0.2.1", 1))
    assert not verifier.verify(None, ("192.0.2.1", 2))
    assert verifier.verify(None, ("192.0.2.2", 1))


def test_meets_the_verifier_contract() -> None:
    """Satisfies the Verifier contract suite of composable_server.testing."""
    samples = [(None, ("192.0.2.1", 1)), (None, ("::1", 2, 0, 0)), (None, "/tmp/sock")] * 3
    check_verifier(lambda: PerClientRateLimit(rate=1.0, burst=2), samples)


def test_refused_requests_are_closed_unserved() -> None:
    """On a server, requests over the limit never reach the handler and are shut down."""
    transport: MemoryTransport[str, tuple[str, int]] = MemoryTransport(("memory", 0))
    handler: RecordingHandler[str, tuple[str, int]] = RecordingHandler()
    verifier = PerClientRateLimit(rate=0.0, burst=2, clock=FakeClock())
    with Server(transport=transport, acceptor=MemoryAcceptor(), handler=handler, verifier=verifier) as server:
        for n in range(3):
            transport.connect(f"request {n}", ("192.0.2.1", 5000 + n))
            server.handle_request()
    assert [request for request, _ in handler.calls] == ["request 0", "request 1"]
    assert transport.shutdown_requests == ["request 0", "request 1", "request 2"]
