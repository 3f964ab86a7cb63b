"""Kept connections reuse their files, and a loop that serves inline keeps them
registered, on real loopback sockets (issue 17: what a parked message costs).

A :class:`ParkingRequestHandler` leaves its ``rfile``/``wfile`` on the
server (``server.kept_files``) when it says KEEP, and the connection's next
message takes them back; with a :class:`SyncDispatcher` the loop serves
ready kept connections itself, registered level-triggered once.  Each test
runs on the pool and on the loop alone; waits are bounded by counts.
"""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

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
from composable_server.handlers import ParkingRequestHandler
from composable_server.interfaces import Dispatcher, Verdict

from ._support import CLIENT_TIMEOUT, RecordingErrorPolicy, running, tls_contexts

LOCAL = "127.0.0.1"

DISPATCHERS = pytest.mark.parametrize(
    "dispatcher", [SyncDispatcher, lambda: ThreadPoolDispatcher(2)], ids=["sync", "pool"]
)


class Echo(ParkingRequestHandler[Any]):
    """Upper-case each line back; record each message's files and connection."""

    seen: list[tuple[socket.socket, io.BufferedIOBase, io.BufferedIOBase]] = []
    lock = threading.Lock()

    def handle_message(self) -> Verdict:
        with Echo.lock:
            Echo.seen.append((self.connection, self.rfile, self.wfile))
        line = self.rfile.readline()
        if not line:
            return Verdict.CLOSE
        self.wfile.write(line.upper())
        return Verdict.KEEP


class SmallEcho(Echo):
    """rbufsize 2: a TLS record's rest stays in the SSL object."""

    rbufsize = 2


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    Echo.seen.clear()
    yield


def make_server(
    dispatcher: Dispatcher,
    *,
    handler: Any = Echo,
    idle: float = 60.0,
    max_parked: int = 1000,
    max_kept_files: int = 256,
    transport: Any = None,
    errors: RecordingErrorPolicy | None = None,
    timeouts: ConnectionTimeouts | None = None,
) -> Server[socket.socket, Any]:
    return Server(
        transport=TCPTransport((LOCAL, 0)) if transport is None else transport,
        acceptor=StreamAcceptor(),
        handler=handler,
        dispatcher=dispatcher,
        error_policy=errors,
        # A first-byte budget: on the loop alone a connected but silent client
        # waits in the poll set instead of blocking the loop in its first read.
        timeout_policy=ConnectionTimeouts(Budget(first_byte=CLIENT_TIMEOUT, idle=idle)) if timeouts is None else timeouts,
        max_parked=max_parked,
        max_kept_files=max_kept_files,
    )


def connect(server: Server[socket.socket, Any]) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)


def ask(sock: socket.socket, line: bytes) -> bytes:
    """Send *line*, read its reply (one line, byte by byte: nothing of a later reply is read)."""
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        reply += byte
    return reply


def wait_until(predicate: Callable[[], bool], timeout: float = CLIENT_TIMEOUT) -> bool:
    """Poll *predicate* until true, at most *timeout* seconds (a bound, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@DISPATCHERS
def test_a_kept_connection_reuses_its_files_and_never_another_connections(dispatcher: Callable[[], Dispatcher]) -> None:
    """Every message of a connection gets the same rfile and wfile; two connections never share one."""
    with running(make_server(dispatcher())) as server, connect(server) as first, connect(server) as second:
        for round_ in range(3):
            assert ask(first, b"a%d\n" % round_) == b"A%d\n" % round_
            assert ask(second, b"b%d\n" % round_) == b"B%d\n" % round_
        assert wait_until(lambda: len(server.kept_files) == 2)
    by_connection: dict[int, set[int]] = {}
    for connection, rfile, wfile in Echo.seen:
        by_connection.setdefault(id(connection), set()).add(id(rfile))
    assert len(by_connection) == 2
    assert all(len(files) == 1 for files in by_connection.values())
    assert len(set.union(*by_connection.values())) == 2


@DISPATCHERS
def test_beyond_max_kept_files_the_least_recently_kept_files_are_closed(dispatcher: Callable[[], Dispatcher]) -> None:
    """With max_kept_files=2 and four kept connections, two keep files; the others get new ones and are served."""
    with running(make_server(dispatcher(), max_kept_files=2)) as server:
        clients = [connect(server) for _ in range(4)]
        try:
            for client in clients:
                assert ask(client, b"x\n") == b"X\n"
            assert wait_until(lambda: server.parked_connections == 4)
            assert len(server.kept_files) == 2
            # Two files were closed on eviction (which two depends on the workers' order), the connections kept.
            first_files = [rfile for _, rfile, _ in Echo.seen]
            kept = {id(entry[0]) for entry in server.kept_files.values()}
            assert sorted(rfile.closed for rfile in first_files) == [False, False, True, True]
            assert {id(rfile) for rfile in first_files if not rfile.closed} == kept
            for client in clients:
                assert ask(client, b"again\n") == b"AGAIN\n"
            assert len(server.kept_files) <= 2
        finally:
            for client in clients:
                client.close()


@DISPATCHERS
def test_a_kept_rfile_holds_no_stale_bytes_between_messages(dispatcher: Callable[[], Dispatcher]) -> None:
    """Lines split across sends and pipelined lines are each answered once, in order, from the reused rfile."""
    with running(make_server(dispatcher())) as server, connect(server) as client:
        reader = client.makefile("rb")
        client.sendall(b"one\ntw")  # the second line's start waits in the buffer: served in the same dispatch
        assert reader.readline() == b"ONE\n"
        client.sendall(b"o\n")
        assert reader.readline() == b"TWO\n"
        assert wait_until(lambda: server.parked_connections == 1)
        client.sendall(b"three\n")
        assert reader.readline() == b"THREE\n"
        client.sendall(b"four\nfive\n")
        assert reader.readline() == b"FOUR\n"
        assert reader.readline() == b"FIVE\n"


@DISPATCHERS
def test_a_client_that_closes_while_parked_leaves_no_kept_files(dispatcher: Callable[[], Dispatcher]) -> None:
    """EOF on a parked connection with kept files: the handler says CLOSE, its files are closed, nothing reported."""
    errors = RecordingErrorPolicy()
    with running(make_server(dispatcher(), errors=errors)) as server:
        client = connect(server)
        assert ask(client, b"x\n") == b"X\n"
        assert wait_until(lambda: len(server.kept_files) == 1)
        rfile = Echo.seen[0][1]
        client.close()
        assert wait_until(lambda: server.parked_connections == 0 and len(server.kept_files) == 0)
        assert wait_until(lambda: rfile.closed)
    assert errors.errors == []


@DISPATCHERS
def test_a_parked_connection_closed_by_the_server_drops_its_kept_files(dispatcher: Callable[[], Dispatcher]) -> None:
    """The idle budget closes a parked connection: its kept files are closed with it, and it is counted once."""
    timeouts = ConnectionTimeouts(Budget(first_byte=CLIENT_TIMEOUT, idle=0.3))
    with running(make_server(dispatcher(), timeouts=timeouts)) as server, connect(server) as client:
        assert ask(client, b"x\n") == b"X\n"
        assert client.recv(1) == b""  # closed by the server
        assert wait_until(lambda: len(server.kept_files) == 0)
        assert Echo.seen[0][1].closed
        assert timeouts.statistics() == {"idle": 1}


@DISPATCHERS
def test_the_least_recently_used_parked_connection_is_closed_beyond_the_cap(dispatcher: Callable[[], Dispatcher]) -> None:
    """With max_parked=2 a third kept connection closes the least recently used one, inline or on the pool."""
    timeouts = ConnectionTimeouts(Budget(first_byte=CLIENT_TIMEOUT, idle=60.0))
    with running(make_server(dispatcher(), max_parked=2, timeouts=timeouts)) as server:
        clients: list[socket.socket] = []
        try:
            for count in (1, 2):  # connected one by one: a silent one would count as parked too
                clients.append(connect(server))
                assert ask(clients[-1], b"x\n") == b"X\n"
                assert wait_until(lambda: server.parked_connections == count)  # called at once: no late binding
            assert ask(clients[0], b"used\n") == b"USED\n"  # now clients[1] is the least recently used
            assert wait_until(lambda: server.parked_connections == 2)
            clients.append(connect(server))
            assert ask(clients[2], b"x\n") == b"X\n"
            assert clients[1].recv(1) == b""
            assert timeouts.statistics() == {"parked": 1}
            assert ask(clients[0], b"still\n") == b"STILL\n"
            assert ask(clients[2], b"here\n") == b"HERE\n"
        finally:
            for client in clients:
                client.close()


def test_drain_on_the_loop_alone_closes_parked_connections_and_their_files() -> None:
    """SyncDispatcher: drain closes every parked connection at once and the kept files with them."""
    server = make_server(SyncDispatcher())
    with running(server):
        clients = [connect(server) for _ in range(3)]
        try:
            for client in clients:
                assert ask(client, b"x\n") == b"X\n"
            assert wait_until(lambda: server.parked_connections == 3)
            report = server.drain(CLIENT_TIMEOUT)
            assert report.finished
            for client in clients:
                assert client.recv(1) == b""
            assert len(server.kept_files) == 0
        finally:
            for client in clients:
                client.close()


def test_the_loop_alone_serves_every_ready_connection_and_keeps_them_registered() -> None:
    """SyncDispatcher: many clients talking at once are all served, message after message, with no re-arm per message."""
    with running(make_server(SyncDispatcher())) as server:
        clients = [connect(server) for _ in range(16)]
        try:
            for round_ in range(5):
                for i, client in enumerate(clients):
                    client.sendall(b"c%d-%d\n" % (i, round_))
                for i, client in enumerate(clients):
                    assert ask(client, b"") == b"C%d-%d\n" % (i, round_)
            assert wait_until(lambda: server.parked_connections == 16)
        finally:
            for client in clients:
                client.close()
        assert wait_until(lambda: server.parked_connections == 0)
    assert len(Echo.seen) == 16 * 5 + 16  # one dispatch per message, and one for each EOF


@DISPATCHERS
def test_tls_pending_bytes_are_served_with_kept_files(dispatcher: Callable[[], Dispatcher]) -> None:
    """Over TLS a tiny reused rfile leaves a pipelined line in SSLSocket.pending(): served before parking, once."""
    context, client_context = tls_contexts(LOCAL)
    transport = TLSTransport(TCPTransport((LOCAL, 0)), context)
    with running(make_server(dispatcher(), handler=SmallEcho, transport=transport)) as server:
        raw = connect(server)
        with client_context.wrap_socket(raw, server_hostname=LOCAL) as client:
            reader = client.makefile("rb")
            client.sendall(b"first\nsecond\n")
            assert reader.readline() == b"FIRST\n"
            assert reader.readline() == b"SECOND\n"
            assert wait_until(lambda: server.parked_connections == 1)
            client.sendall(b"third\nfourth\n")
            assert reader.readline() == b"THIRD\n"
            assert reader.readline() == b"FOURTH\n"
            assert wait_until(lambda: server.parked_connections == 1)
    assert len({id(rfile) for _, rfile, _ in Echo.seen}) == 1  # the same files for every message
    assert all(isinstance(connection, ssl.SSLSocket) for connection, _, _ in Echo.seen)


class FakeServer:
    """What a handler sees of a composable server here: its kept files."""

    def __init__(self) -> None:
        from composable_server._request import KeptFiles

        self.kept_files = KeptFiles(4)


def test_the_handler_takes_kept_files_of_matching_buffer_sizes_only() -> None:
    """A KEEP leaves the files on the server; the next handler of the connection takes them, another class's sizes do not."""
    server = FakeServer()
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(CLIENT_TIMEOUT)
        b.sendall(b"one\n")
        first = Echo(a, None, cast(Any, server))
        assert first.verdict is Verdict.KEEP and len(server.kept_files) == 1
        b.sendall(b"two\n")
        second = Echo(a, None, cast(Any, server))
        assert second.rfile is first.rfile and second.wfile is first.wfile
        b.sendall(b"three\n")
        small = SmallEcho(a, None, cast(Any, server))  # rbufsize 2: the kept files do not fit, they are closed
        assert small.rfile is not first.rfile and first.rfile.closed
        b.shutdown(socket.SHUT_WR)
        last = SmallEcho(a, None, cast(Any, server))
        assert last.verdict is Verdict.CLOSE and last.rfile.closed and len(server.kept_files) == 0
        assert b.recv(64) == b"ONE\nTWO\nTHREE\n"


def test_on_a_server_without_kept_files_each_handler_opens_and_closes_its_own() -> None:
    """On a stdlib-style server (no kept_files) the handler opens files per message and closes them, as before."""
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(CLIENT_TIMEOUT)
        b.sendall(b"one\n")
        handler = Echo(a, None, cast(Any, object()))
        assert handler.verdict is Verdict.KEEP and handler.rfile.closed and handler.wfile.closed
