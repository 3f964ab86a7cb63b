"""The lean line mode (``handlers.LineResponder`` serving a ``LineHandler``)
on real loopback sockets: served by the loop itself on a ``SyncDispatcher``
(``Server._inline_lines``), and through jobs on a pool, with TLS, with
observers.  Every wait is bounded by an event or a count, never by a sleep
that must be long enough.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from composable_server import (
    Budget,
    ConnectionTimeouts,
    Server,
    StreamAcceptor,
    SyncDispatcher,
    TCPTransport,
    ThreadPoolDispatcher,
    TLSTransport,
)
from composable_server.factories import make_tcp_server, make_unix_stream_server
from composable_server.handlers import LineResponder
from composable_server.interfaces import Dispatcher
from composable_server.testing import RecordingObserver

from ..unit.test_handlers import UpperLines
from ._support import CLIENT_TIMEOUT, RecordingErrorPolicy, running
from .test_parking import CountingVerifier, wait_until

LOCAL = "127.0.0.1"


def make_server(
    dispatcher: Dispatcher | None = None,
    *,
    handler: UpperLines | None = None,
    idle: float = 60.0,
    max_parked: int = 1000,
    errors: RecordingErrorPolicy | None = None,
    verifier: Any = None,
    max_line_length: int = 64,
    observers: tuple[RecordingObserver, ...] = (),
    transport: Any = None,
) -> Server[socket.socket, Any]:
    return Server(
        transport=TCPTransport((LOCAL, 0)) if transport is None else transport,
        acceptor=StreamAcceptor(),
        handler=LineResponder(UpperLines() if handler is None else handler, max_line_length),
        dispatcher=SyncDispatcher() if dispatcher is None else dispatcher,
        error_policy=errors,
        timeout_policy=ConnectionTimeouts(Budget(idle=idle)),
        verifier=verifier,
        max_parked=max_parked,
        observers=observers,
    )


def connect(server: Server[socket.socket, Any]) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    return got


def ask(sock: socket.socket, line: bytes, reply: bytes) -> bool:
    sock.sendall(line)
    return read_exactly(sock, len(reply)) == reply


def test_a_plain_sync_server_serves_kept_connections_in_its_loop() -> None:
    """The inline path applies to a LineResponder on SyncDispatcher with a plain TCP transport, only there."""
    server = make_server()
    pool = make_server(ThreadPoolDispatcher(2))
    observed = make_server(observers=(RecordingObserver(),))
    try:
        assert server._inline_lines() is not None
        assert pool._inline_lines() is None
        assert observed._inline_lines() is None
    finally:
        for s in (server, pool, observed):
            s.server_close()


def test_partial_lines_stay_buffered_while_the_loop_serves_another_connection() -> None:
    """A kept connection's partial line waits on the connection, not in the loop: another client is served meanwhile."""
    handler = UpperLines()
    with running(make_server(handler=handler)) as server, connect(server) as slow, connect(server) as other:
        assert ask(slow, b"a\n", b"A\n")
        assert wait_until(lambda: server.parked_connections == 2)  # other: kept unread, from its accept on
        slow.sendall(b"hal")
        assert ask(other, b"b\n", b"B\n")
        slow.sendall(b"f\n")
        assert read_exactly(slow, 5) == b"HALF\n"
        assert handler.seen == [b"a\n", b"b\n", b"half\n"]


def test_pipelined_lines_are_answered_in_order_in_one_send() -> None:
    """Lines sent together are all answered, in order; b"" gets no reply."""
    with running(make_server()) as server, connect(server) as client:
        assert ask(client, b"first\n", b"FIRST\n")
        assert wait_until(lambda: server.parked_connections == 1)
        client.sendall(b"a\nquiet\nb\nc")
        client.sendall(b"\n")
        assert read_exactly(client, 6) == b"A\nB\nC\n"


def test_a_reply_of_none_closes_after_the_earlier_replies() -> None:
    """None closes the connection; the replies of the lines before it are sent first."""
    with running(make_server()) as server, connect(server) as client:
        assert ask(client, b"x\n", b"X\n")
        assert wait_until(lambda: server.parked_connections == 1)
        client.sendall(b"y\nquit\nz\n")
        assert read_exactly(client, 10) == b"Y\n"
        assert wait_until(lambda: server.parked_connections == 0)


def test_a_line_over_the_bound_closes_the_connection_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line longer than max_line_length (kept connection, or buffered partial) closes it, logged."""
    errors = RecordingErrorPolicy()
    with caplog.at_level(logging.WARNING, logger="composable_server"):
        with running(make_server(errors=errors, max_line_length=8)) as server:
            with connect(server) as client:
                assert ask(client, b"ok\n", b"OK\n")
                assert wait_until(lambda: server.parked_connections == 1)
                client.sendall(b"123456789\n")
                assert read_exactly(client, 1) == b""
            with connect(server) as partial:
                assert ask(partial, b"ok\n", b"OK\n")
                partial.sendall(b"12345678")  # no newline: it can only grow past the bound
                assert read_exactly(partial, 1) == b""
            assert wait_until(lambda: server.parked_connections == 0)
    assert len([r for r in caplog.records if "longer than 8 bytes" in r.getMessage()]) == 2
    assert errors.errors == []


def test_a_client_gone_is_closed_without_an_error_and_its_partial_line_dropped() -> None:
    """EOF on a kept connection closes it; an unterminated last line never reaches the handler."""
    errors, handler = RecordingErrorPolicy(), UpperLines()
    with running(make_server(errors=errors, handler=handler)) as server:
        client = connect(server)
        assert ask(client, b"x\n", b"X\n")
        assert wait_until(lambda: server.parked_connections == 1)
        client.sendall(b"unterminated")
        client.close()
        assert wait_until(lambda: server.parked_connections == 0)
        with connect(server) as next_client:
            assert ask(next_client, b"y\n", b"Y\n")
    assert handler.seen == [b"x\n", b"y\n"]
    assert errors.errors == []


@pytest.mark.parametrize("dispatcher", [SyncDispatcher, lambda: ThreadPoolDispatcher(2)], ids=["sync", "pool"])
def test_a_raising_handler_goes_to_the_error_policy_and_the_server_serves_on(
    dispatcher: Callable[[], Dispatcher],
) -> None:
    """The exception reaches the error policy, that connection is closed, the others are served."""
    errors = RecordingErrorPolicy()
    with running(make_server(dispatcher(), errors=errors)) as server:
        with connect(server) as other, connect(server) as client:
            assert ask(other, b"a\n", b"A\n")
            assert ask(client, b"x\n", b"X\n")
            client.sendall(b"boom\n")
            assert read_exactly(client, 1) == b""
            assert errors.wait_for(1)
            assert ask(other, b"b\n", b"B\n")
    assert [type(exc) for _, exc in errors.errors] == [ValueError]


def test_the_verifier_admits_a_connection_once_not_per_line() -> None:
    verifier = CountingVerifier()
    with running(make_server(verifier=verifier)) as server, connect(server) as client:
        for line in (b"a\n", b"b\n", b"c\n"):
            assert ask(client, line, line.upper())
    assert verifier.calls == 1


def test_a_kept_connection_idle_too_long_is_closed_and_reported() -> None:
    """The idle budget closes a kept connection in the lean mode as on the job path."""
    timeouts = ConnectionTimeouts(Budget(idle=0.3))
    server = Server(
        transport=TCPTransport((LOCAL, 0)), acceptor=StreamAcceptor(), handler=LineResponder(UpperLines()),
        dispatcher=SyncDispatcher(), timeout_policy=timeouts,
    )
    with running(server), connect(server) as client:
        assert ask(client, b"x\n", b"X\n")
        assert ask(client, b"y\n", b"Y\n")  # served inline: the deadline moves on
        assert client.recv(1) == b""
        assert timeouts.statistics() == {"idle": 1}
        assert server.parked_connections == 0


def test_beyond_max_parked_the_least_recently_used_is_closed() -> None:
    with running(make_server(max_parked=1)) as server, connect(server) as first:
        assert ask(first, b"a\n", b"A\n")
        assert ask(first, b"b\n", b"B\n")
        with connect(server) as second:
            assert ask(second, b"c\n", b"C\n")
            assert first.recv(1) == b""
            assert ask(second, b"d\n", b"D\n")


def test_shutdown_closes_kept_connections() -> None:
    """Leaving the loop closes every kept connection at once."""
    server = make_server()
    with running(server), connect(server) as first, connect(server) as second:
        assert ask(first, b"a\n", b"A\n")
        assert ask(second, b"b\n", b"B\n")
        assert wait_until(lambda: server.parked_connections == 2)
        server.shutdown()
        assert first.recv(1) == b""
        assert second.recv(1) == b""


def test_drain_closes_kept_connections() -> None:
    server = make_server()
    with running(server), connect(server) as client:
        assert ask(client, b"a\n", b"A\n")
        assert wait_until(lambda: server.parked_connections == 1)
        report = server.drain(CLIENT_TIMEOUT)
        assert client.recv(1) == b""
        assert report.finished


def test_observers_take_the_job_path_and_see_one_request_per_connection() -> None:
    observer = RecordingObserver()
    with running(make_server(observers=(observer,))) as server, connect(server) as client:
        for line in (b"a\n", b"b\n"):
            assert ask(client, line, line.upper())
    assert observer.wait_for("request_finished", 1, CLIENT_TIMEOUT)
    assert observer.names().count("request_started") == 1


def test_tls_composes_on_the_job_path(tmp_path: Path) -> None:
    """Over TLS the lines are served through jobs (pending TLS bytes included)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = make_server(transport=TLSTransport(TCPTransport((LOCAL, 0)), server_context))
    assert server._inline_lines() is None
    with running(server):
        raw = socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)
        with client_context.wrap_socket(raw, server_hostname="localhost") as client:
            assert ask(client, b"a\n", b"A\n")
            client.sendall(b"b\nc\n")
            assert read_exactly(client, 4) == b"B\nC\n"


def test_the_factories_serve_a_line_handler(tmp_path: Path) -> None:
    """make_tcp_server and make_unix_stream_server with line_handler= answer lines."""
    tcp = make_tcp_server((LOCAL, 0), line_handler=UpperLines())
    unix = make_unix_stream_server(str(tmp_path / "s"), line_handler=UpperLines())
    with running(tcp), connect(tcp) as client:
        assert ask(client, b"t\n", b"T\n")
        assert ask(client, b"u\n", b"U\n")
    with running(unix):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(CLIENT_TIMEOUT)
            client.connect(str(tmp_path / "s"))
            assert ask(client, b"v\n", b"V\n")
            assert ask(client, b"w\n", b"W\n")


def test_a_pool_waits_in_the_worker_for_the_end_of_a_partial_line() -> None:
    """On the job path a partial line is completed in the worker (each read bounded by the idle budget)."""
    with running(make_server(ThreadPoolDispatcher(2))) as server, connect(server) as client:
        client.sendall(b"par")
        client.sendall(b"tial\n")
        assert read_exactly(client, 8) == b"PARTIAL\n"
        assert ask(client, b"next\n", b"NEXT\n")


def test_a_silent_new_connection_costs_the_loop_no_wait() -> None:
    """Without a first-byte budget a new connection that says nothing is kept unread: the loop serves the others."""
    with running(make_server()) as server, connect(server) as silent, connect(server) as client:
        assert ask(client, b"a\n", b"A\n")
        assert wait_until(lambda: server.parked_connections == 2)
        assert ask(silent, b"late\n", b"LATE\n")
