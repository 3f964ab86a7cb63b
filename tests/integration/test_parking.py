"""Kept connections parked between messages, on real loopback sockets.

A :class:`ParkingRequestHandler` answers one line per message and keeps the
connection; the server parks it in its poll set until the next line.  Every
wait is bounded by an event or a count, never by a sleep that must be long
enough.
"""

from __future__ import annotations

import io
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from composable_server import (
    Budget,
    ConnectionTimeouts,
    ForkingDispatcher,
    Server,
    StreamAcceptor,
    SyncDispatcher,
    TCPTransport,
    ThreadPoolDispatcher,
    TLSTransport,
)
from composable_server.handlers import ParkingRequestHandler, SocketFile, buffered_input
from composable_server.interfaces import Dispatcher, RequestFinished, Verdict
from composable_server.testing import RecordingObserver

from ._support import CLIENT_TIMEOUT, IDLE_CLIENTS, RecordingErrorPolicy, cli_address, running, serve_cli, tls_contexts

LOCAL = "127.0.0.1"


class Lines(ParkingRequestHandler[Any]):
    """Upper-case each line back; ``wait`` blocks on :attr:`release` first."""

    release = threading.Event()
    entered = threading.Event()
    instances: list[int] = []  # one entry per instantiation (one per dispatch)
    connections: list[socket.socket] = []  # the request of each instantiation

    def handle_message(self) -> Verdict:
        line = self.rfile.readline()
        if not line:
            return Verdict.CLOSE
        if line == b"wait\n":
            Lines.entered.set()
            assert Lines.release.wait(CLIENT_TIMEOUT)
        self.wfile.write(line.upper())
        return Verdict.KEEP

    def setup(self) -> None:
        Lines.instances.append(1)
        Lines.connections.append(self.request)
        super().setup()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    Lines.release.clear()
    Lines.entered.clear()
    Lines.instances.clear()
    Lines.connections.clear()
    yield
    Lines.release.set()  # never leave a worker blocked


def make_server(
    dispatcher: Dispatcher | None = None,
    *,
    idle: float | None = 60.0,
    max_parked: int = 1000,
    errors: RecordingErrorPolicy | None = None,
    timeouts: ConnectionTimeouts | None = None,
    transport: Any = None,
    verifier: Any = None,
    observers: list[RecordingObserver] | None = None,
    handler: Any = Lines,
) -> Server[socket.socket, Any]:
    if observers:
        return Server(
            transport=TCPTransport((LOCAL, 0)) if transport is None else transport,
            acceptor=StreamAcceptor(),
            handler=handler,
            dispatcher=ThreadPoolDispatcher(4) if dispatcher is None else dispatcher,
            error_policy=errors,
            timeout_policy=ConnectionTimeouts(Budget(idle=idle)) if timeouts is None else timeouts,
            verifier=verifier,
            max_parked=max_parked,
            observers=observers,
        )
    return Server(
        transport=TCPTransport((LOCAL, 0)) if transport is None else transport,
        acceptor=StreamAcceptor(),
        handler=handler,
        dispatcher=ThreadPoolDispatcher(4) if dispatcher is None else dispatcher,
        error_policy=errors,
        timeout_policy=ConnectionTimeouts(Budget(idle=idle)) if timeouts is None else timeouts,
        verifier=verifier,
        max_parked=max_parked,
    )


def connect(server: Server[socket.socket, Any]) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)


def ask(sock: socket.socket, line: bytes) -> bytes:
    """Send *line*, read its reply (one line)."""
    sock.sendall(line)
    return sock.makefile("rb").readline()


def wait_until(predicate: Callable[[], bool], timeout: float = CLIENT_TIMEOUT) -> bool:
    """Poll *predicate* until true, at most *timeout* seconds (a bound, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_message_after_a_long_idle_is_served_and_the_parked_connection_holds_no_worker() -> None:
    """A kept connection waits in the poll set with every worker idle, then is served again."""
    pool = ThreadPoolDispatcher(4)
    with running(make_server(pool)) as server, connect(server) as client:
        assert ask(client, b"one\n") == b"ONE\n"
        assert wait_until(lambda: server.parked_connections == 1)
        assert wait_until(lambda: pool.statistics().busy == 0)
        time.sleep(0.5)  # idle: nothing may happen meanwhile
        assert server.parked_connections == 1
        assert ask(client, b"two\n") == b"TWO\n"
        assert len(Lines.instances) == 2  # one handler per dispatch


def test_pipelined_messages_are_answered_in_one_dispatch() -> None:
    """Two lines in one send are both answered from the rfile buffer, without parking in between."""
    with running(make_server()) as server, connect(server) as client:
        client.sendall(b"a\nb\n")
        reader = client.makefile("rb")
        assert reader.readline() == b"A\n"
        assert reader.readline() == b"B\n"
        assert wait_until(lambda: server.parked_connections == 1)
        assert len(Lines.instances) == 1


def test_a_client_that_closes_while_parked_is_closed_without_an_error() -> None:
    """EOF on a parked connection wakes it; the handler says CLOSE; nothing is reported."""
    errors = RecordingErrorPolicy()
    with running(make_server(errors=errors)) as server:
        client = connect(server)
        assert ask(client, b"x\n") == b"X\n"
        assert wait_until(lambda: server.parked_connections == 1)
        client.close()
        assert wait_until(lambda: server.parked_connections == 0)
        assert wait_until(lambda: len(Lines.instances) == 2)
    assert errors.errors == []


def test_a_parked_connection_idle_too_long_is_closed_and_reported() -> None:
    """The idle budget bounds a parked connection: the server closes it and counts ``idle``."""
    timeouts = ConnectionTimeouts(Budget(idle=0.3))
    with running(make_server(timeouts=timeouts)) as server, connect(server) as client:
        assert ask(client, b"x\n") == b"X\n"
        assert client.recv(1) == b""  # closed by the server
        assert timeouts.statistics() == {"idle": 1}
        assert server.parked_connections == 0


def test_beyond_the_cap_the_least_recently_used_parked_connection_is_closed() -> None:
    """With max_parked=2, parking a third connection closes the one parked first."""
    timeouts = ConnectionTimeouts(Budget(idle=60.0))
    with running(make_server(max_parked=2, timeouts=timeouts)) as server:
        clients = [connect(server) for _ in range(3)]
        try:
            for count, client in enumerate(clients[:2], 1):
                assert ask(client, b"x\n") == b"X\n"
                assert wait_until(lambda: server.parked_connections == count)  # called at once: no late binding
            assert ask(clients[0], b"used\n") == b"USED\n"  # now clients[1] is the least recently used
            assert wait_until(lambda: server.parked_connections == 2)
            assert ask(clients[2], b"x\n") == b"X\n"
            assert clients[1].recv(1) == b""
            assert timeouts.statistics() == {"parked": 1}
            assert ask(clients[0], b"still\n") == b"STILL\n"
            assert ask(clients[2], b"here\n") == b"HERE\n"
        finally:
            for client in clients:
                client.close()


def test_drain_closes_parked_connections_at_once_and_lets_busy_ones_finish() -> None:
    """A parked client sees EOF while a busy one is still being served; the busy one gets its reply."""
    server = make_server()
    with running(server), connect(server) as parked, connect(server) as busy:
        assert ask(parked, b"x\n") == b"X\n"
        assert wait_until(lambda: server.parked_connections == 1)
        busy.sendall(b"wait\n")
        assert Lines.entered.wait(CLIENT_TIMEOUT)
        reports = []
        drainer = threading.Thread(target=lambda: reports.append(server.drain(CLIENT_TIMEOUT)))
        drainer.start()
        try:
            assert parked.recv(1) == b""  # closed at once, the busy handler still blocked
            assert drainer.is_alive()
        finally:
            Lines.release.set()
            drainer.join(CLIENT_TIMEOUT)
        reader = busy.makefile("rb")
        assert reader.readline() == b"WAIT\n"
        assert reader.read() == b""  # then closed: the loop is gone
        assert reports[0].finished


@pytest.mark.parametrize(
    "dispatcher",
    [SyncDispatcher, lambda: ThreadPoolDispatcher(2), ForkingDispatcher],
    ids=["sync", "pool", "forking"],
)
def test_a_conversation_composes_with_each_dispatcher(dispatcher: Callable[[], Dispatcher]) -> None:
    """Sync and pool park in the loop; a forked child keeps serving its connection in place."""
    with running(make_server(dispatcher())) as server, connect(server) as first, connect(server) as second:
        for round_ in range(3):
            assert ask(first, b"a%d\n" % round_) == b"A%d\n" % round_
            assert ask(second, b"b%d\n" % round_) == b"B%d\n" % round_
        for client in (first, second):
            # shutdown, not close: a forked child holds copies of these client sockets.
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""


class ClientFirstLines(Lines):
    """Lines, stating that its client speaks first."""

    client_speaks_first = True


class Greeting(ParkingRequestHandler[Any]):
    """Says ``hello`` before it reads anything (a server-speaks-first protocol), then closes."""

    def handle_message(self) -> Verdict:
        self.wfile.write(b"hello\n")
        return Verdict.CLOSE


@pytest.mark.parametrize(
    "dispatcher", [SyncDispatcher, lambda: ThreadPoolDispatcher(1)], ids=["sync", "pool-of-one"]
)
def test_a_silent_new_connection_whose_client_speaks_first_holds_neither_loop_nor_worker(
    dispatcher: Callable[[], Dispatcher],
) -> None:
    """client_speaks_first: a new connection that has said nothing waits among the parked ones, not in
    the handler's first read, so the next client is served at once (by the loop itself, or by the only
    worker); the silent one is served when it speaks."""
    with running(make_server(dispatcher(), handler=ClientFirstLines)) as server, connect(server) as silent:
        assert wait_until(lambda: server.parked_connections == 1)
        assert Lines.instances == []  # not read, not even instantiated
        with connect(server) as other:
            assert ask(other, b"hi\n") == b"HI\n"
        assert ask(silent, b"late\n") == b"LATE\n"


def test_a_silent_new_connection_waiting_parked_is_closed_at_the_idle_budget() -> None:
    """An unspoken connection waiting among the parked ones is bounded by the idle budget, counted as ``idle``."""
    timeouts = ConnectionTimeouts(Budget(idle=0.3))
    with running(make_server(SyncDispatcher(), timeouts=timeouts, handler=ClientFirstLines)) as server:
        with connect(server) as silent:
            assert silent.recv(1) == b""  # closed by the server
        assert timeouts.statistics() == {"idle": 1}
        assert server.parked_connections == 0 and Lines.instances == []


def test_a_handler_whose_server_speaks_first_runs_at_once_on_a_new_connection() -> None:
    """Without client_speaks_first (the default) a new connection goes to the handler at once: its greeting
    reaches a client that has sent nothing."""
    with running(make_server(SyncDispatcher(), handler=Greeting)) as server, connect(server) as client:
        assert client.makefile("rb").readline() == b"hello\n"


class CountingVerifier:
    """Admits everything and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, request: object, client_address: object) -> bool:
        self.calls += 1
        return True


def test_the_verifier_admits_a_connection_once_not_per_message() -> None:
    """Messages after the first are re-dispatched without a new verification."""
    verifier = CountingVerifier()
    with running(make_server(verifier=verifier)) as server, connect(server) as client:
        for line in (b"a\n", b"b\n", b"c\n"):
            assert ask(client, line) == line.upper()
    assert verifier.calls == 1


def test_tls_handshakes_once_and_pipelined_records_are_served_from_pending_bytes() -> None:
    """Over TLS one handshake serves every message; two lines in one record are both answered."""
    context, client_context = tls_contexts(LOCAL)
    transport = TLSTransport(TCPTransport((LOCAL, 0)), context)
    with running(make_server(transport=transport)) as server:
        raw = connect(server)
        with client_context.wrap_socket(raw, server_hostname=LOCAL) as client:
            reader = client.makefile("rb")
            client.sendall(b"a\nb\n")  # one TLS record: the second line stays in SSL's buffer or rfile's
            assert reader.readline() == b"A\n"
            assert reader.readline() == b"B\n"
            assert wait_until(lambda: server.parked_connections == 1)
            client.sendall(b"c\n")
            assert reader.readline() == b"C\n"
    # start_request wraps (and handshakes) anew each time it runs: one object, one handshake.
    assert len(Lines.connections) == 2
    assert Lines.connections[0] is Lines.connections[1]
    assert isinstance(Lines.connections[0], ssl.SSLSocket)


def test_tls_a_silent_connection_after_its_handshake_waits_parked_when_the_client_speaks_first() -> None:
    """Over TLS on a pool of one: a client that handshakes and says nothing holds no worker; a second is served."""
    context, client_context = tls_contexts(LOCAL)
    transport = TLSTransport(TCPTransport((LOCAL, 0)), context)
    server = make_server(ThreadPoolDispatcher(1), transport=transport, handler=ClientFirstLines)
    with running(server), client_context.wrap_socket(connect(server), server_hostname=LOCAL) as silent:
        assert wait_until(lambda: server.parked_connections == 1)
        with client_context.wrap_socket(connect(server), server_hostname=LOCAL) as other:
            other.sendall(b"hi\n")
            assert other.makefile("rb").readline() == b"HI\n"
        silent.sendall(b"late\n")
        assert silent.makefile("rb").readline() == b"LATE\n"


class SmallReads(Lines):
    """rbufsize 2: a line is read in pieces and the rest of a record stays in the SSL object."""

    rbufsize = 2


def test_tls_bytes_pending_in_the_ssl_object_are_served_before_parking() -> None:
    """With a tiny rfile buffer the second pipelined line waits in ``SSLSocket.pending()``, not in the kernel."""
    context, client_context = tls_contexts(LOCAL)
    server: Server[socket.socket, Any] = Server(
        transport=TLSTransport(TCPTransport((LOCAL, 0)), context),
        acceptor=StreamAcceptor(),
        handler=SmallReads,
        dispatcher=ThreadPoolDispatcher(2),
        timeout_policy=ConnectionTimeouts(Budget(idle=60.0)),
    )
    with running(server):
        raw = connect(server)
        with client_context.wrap_socket(raw, server_hostname=LOCAL) as client:
            reader = client.makefile("rb")
            client.sendall(b"first\nsecond\n")
            assert reader.readline() == b"FIRST\n"
            assert reader.readline() == b"SECOND\n"
            assert wait_until(lambda: server.parked_connections == 1)
            assert len(Lines.instances) == 1  # both served in one dispatch, from pending bytes


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("descriptors")
def test_two_thousand_idle_parked_connections_on_a_pool_of_four_leave_a_busy_client_served() -> None:
    """2,000 kept connections wait in the poll set; a busy client still gets every answer from 4 workers."""
    pool = ThreadPoolDispatcher(4)
    idle: list[socket.socket] = []
    with running(make_server(pool, max_parked=IDLE_CLIENTS + 10)) as server:
        try:
            for _ in range(IDLE_CLIENTS):
                client = connect(server)
                idle.append(client)
                assert ask(client, b"hi\n") == b"HI\n"
            assert wait_until(lambda: server.parked_connections == IDLE_CLIENTS)
            with connect(server) as busy:
                for round_ in range(200):
                    assert ask(busy, b"m%d\n" % round_) == b"M%d\n" % round_
            # Without parking the 5th connection would wait for a worker forever: every one is parked.
            assert server.parked_connections >= IDLE_CLIENTS
            # The idle ones are still served after all that.
            assert ask(idle[0], b"again\n") == b"AGAIN\n"
            assert ask(idle[-1], b"again\n") == b"AGAIN\n"
        finally:
            for client in idle:
                client.close()


# -- the handler on a socketpair --------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.settimeout(CLIENT_TIMEOUT)
    right.settimeout(CLIENT_TIMEOUT)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def test_buffered_input_counts_what_rfile_holds_without_reading_the_socket(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Bytes left in the buffer are counted; an empty buffer reads as 0 at once, not a blocking recv."""
    server, client = pair
    rfile = io.BufferedReader(SocketFile(server, readable=True, writable=False))
    client.sendall(b"one\ntwo\n")
    assert rfile.readline() == b"one\n"
    assert buffered_input(rfile) == 4
    assert rfile.readline() == b"two\n"
    started = time.monotonic()
    assert buffered_input(rfile) == 0
    assert time.monotonic() - started < CLIENT_TIMEOUT / 2  # did not wait for the socket's timeout
    client.sendall(b"three\n")
    assert rfile.readline() == b"three\n"  # the file reads normally again afterwards


def test_buffered_input_of_an_unbuffered_or_foreign_file_is_zero() -> None:
    """Only a BufferedReader over a SocketFile holds input: anything else reports 0."""
    assert buffered_input(io.BufferedReader(io.BytesIO(b"data"))) == 0
    assert buffered_input(io.BytesIO(b"data")) == 0


class OneLine(ParkingRequestHandler[Any]):
    """One line in, the line back upper-cased; CLOSE at EOF."""

    def handle_message(self) -> Verdict:
        line = self.rfile.readline()
        if not line:
            return Verdict.CLOSE
        self.wfile.write(line.upper())
        return Verdict.KEEP


class InPlace(OneLine):
    parks_connections = False


def test_a_parking_handler_serves_buffered_lines_then_says_keep(pair: tuple[socket.socket, socket.socket]) -> None:
    """Two lines already buffered are both answered in one instance, which then keeps the connection."""
    server, client = pair
    client.sendall(b"a\nb\n")
    handler = OneLine(server, "peer", None)  # type: ignore[arg-type]  # the handler never touches its server
    assert handler.verdict is Verdict.KEEP
    assert client.recv(16) == b"A\nB\n"


def test_a_handler_that_does_not_park_serves_every_line_in_place_until_eof(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """parks_connections = False: handle() loops to EOF, as a thread-per-connection handler."""
    server, client = pair
    client.sendall(b"a\nb\n")
    client.shutdown(socket.SHUT_WR)
    handler = InPlace(server, "peer", None)  # type: ignore[arg-type]  # the handler never touches its server
    assert handler.verdict is Verdict.CLOSE
    assert client.recv(16) == b"A\nB\n"


# -- the command line: serve --service lines [--park] --------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "dispatch",
    [["--dispatch", "pool", "--threads", "2"], ["--dispatch", "prefork", "--workers", "2", "--threads", "2"]],
    ids=["pool", "prefork"],
)
def test_cli_lines_park_serves_more_open_connections_than_threads(dispatch: list[str]) -> None:
    """`--service lines --park` on 2 threads: 12 open connections take turns, each answered every round."""
    proc = serve_cli("--service", "lines", "--park", *dispatch)
    try:
        address = cli_address(proc)
        clients = [socket.create_connection(address, timeout=CLIENT_TIMEOUT) for _ in range(12)]
        try:
            for round_ in range(3):
                for number, client in enumerate(clients):
                    assert ask(client, b"c%d r%d\n" % (number, round_)) == b"C%d R%d\n" % (number, round_)
            for client in clients:
                client.shutdown(socket.SHUT_WR)
                assert client.recv(1) == b""  # EOF ends the conversation
        finally:
            for client in clients:
                client.close()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(CLIENT_TIMEOUT) == 0
    finally:
        proc.close()
    assert not any("Traceback" in line for line in proc.lines)


@pytest.mark.timeout(60)
def test_cli_lines_park_keeps_a_silent_new_connection_off_its_only_thread() -> None:
    """`--service lines --park --threads 1`: a client that connects and says nothing does not hold the thread."""
    proc = serve_cli("--service", "lines", "--park", "--dispatch", "pool", "--threads", "1")
    try:
        address = cli_address(proc)
        with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as silent:
            with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as other:
                assert ask(other, b"next\n") == b"NEXT\n"
            assert ask(silent, b"late\n") == b"LATE\n"
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(CLIENT_TIMEOUT) == 0
    finally:
        proc.close()
    assert not any("Traceback" in line for line in proc.lines)


@pytest.mark.timeout(60)
def test_cli_lines_without_park_keeps_the_connection_in_its_worker() -> None:
    """`--service lines` alone: one worker serves a whole conversation in place, until EOF."""
    proc = serve_cli("--service", "lines", "--dispatch", "pool", "--threads", "2")
    try:
        with socket.create_connection(cli_address(proc), timeout=CLIENT_TIMEOUT) as client:
            for line in (b"a\n", b"b\n", b"c\n"):
                assert ask(client, line) == line.upper()
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(CLIENT_TIMEOUT) == 0
    finally:
        proc.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--park"], "--park applies only to --service lines"),
        (["--service", "lines", "--transport", "udp"], "--service lines needs a stream transport"),
    ],
)
def test_cli_refuses_park_without_lines_and_lines_over_datagrams(args: list[str], message: str) -> None:
    """Usage errors name the option and exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "composable_server", "serve", *args],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr


# -- what observers see: one request_started and one request_finished per connection --


def _ends(observer: RecordingObserver) -> list[tuple[str, str | None]]:
    return [(event.outcome, event.budget) for event in observer.of(RequestFinished)]


@pytest.mark.parametrize("dispatcher", [SyncDispatcher, lambda: ThreadPoolDispatcher(2)], ids=["sync", "pool"])
def test_an_observer_sees_one_request_per_connection_however_often_it_was_parked(
    dispatcher: Callable[[], Dispatcher],
) -> None:
    """Three messages with the connection parked between them: one request_started, one request_finished (ok)."""
    observer = RecordingObserver()
    with running(make_server(dispatcher(), observers=[observer])) as server:
        with connect(server) as client:
            for line in (b"a\n", b"b\n", b"c\n"):
                assert ask(client, line) == line.upper()
                assert wait_until(lambda: server.parked_connections == 1)
        assert observer.wait_for("request_finished", 1, CLIENT_TIMEOUT)
    assert observer.names().count("request_started") == 1
    assert _ends(observer) == [("ok", None)]
    assert len(Lines.instances) == 4  # three messages and the EOF: parked and dispatched again each time


def test_a_parked_connection_closed_for_idle_ends_in_one_budget_event() -> None:
    """The idle budget closing a parked connection is one request_finished: budget, idle."""
    observer = RecordingObserver()
    timeouts = ConnectionTimeouts(Budget(idle=0.3))
    with running(make_server(timeouts=timeouts, observers=[observer])) as server, connect(server) as client:
        assert ask(client, b"x\n") == b"X\n"
        assert client.recv(1) == b""
        assert observer.wait_for("request_finished", 1, CLIENT_TIMEOUT)
        assert _ends(observer) == [("budget", "idle")]
        assert observer.of(RequestFinished)[0].duration >= 0.3
    assert _ends(observer) == [("budget", "idle")]  # and nothing more once the loop left
    assert observer.names().count("request_started") == 1


def test_an_evicted_parked_connection_ends_in_one_budget_event() -> None:
    """The least recently used parked connection closed beyond max_parked is one request_finished: budget, parked."""
    observer = RecordingObserver()
    with running(make_server(max_parked=1, observers=[observer])) as server:
        with connect(server) as first, connect(server) as second:
            assert ask(first, b"x\n") == b"X\n"
            assert wait_until(lambda: server.parked_connections == 1)
            assert ask(second, b"y\n") == b"Y\n"
            assert first.recv(1) == b""
            assert observer.wait_for("request_finished", 1, CLIENT_TIMEOUT)
            assert _ends(observer) == [("budget", "parked")]
            assert ask(second, b"z\n") == b"Z\n"
        assert observer.wait_for("request_finished", 2, CLIENT_TIMEOUT)
    assert _ends(observer) == [("budget", "parked"), ("ok", None)]
    assert observer.names().count("connection_accepted") == observer.names().count("request_finished") == 2


def test_drain_ends_a_parked_connection_in_one_drain_event() -> None:
    """drain() closing a parked connection is one request_finished: drain; a busy one that finishes is ok."""
    observer = RecordingObserver()
    server = make_server(observers=[observer])
    with running(server), connect(server) as parked, connect(server) as busy:
        assert ask(parked, b"x\n") == b"X\n"
        assert wait_until(lambda: server.parked_connections == 1)
        busy.sendall(b"wait\n")
        assert Lines.entered.wait(CLIENT_TIMEOUT)
        reports = []
        drainer = threading.Thread(target=lambda: reports.append(server.drain(CLIENT_TIMEOUT)))
        drainer.start()
        try:
            assert parked.recv(1) == b""
            assert observer.wait_for("request_finished", 1, CLIENT_TIMEOUT)
            assert _ends(observer) == [("drain", None)]
        finally:
            Lines.release.set()
            drainer.join(CLIENT_TIMEOUT)
        assert busy.makefile("rb").readline() == b"WAIT\n"
        assert observer.wait_for("request_finished", 2, CLIENT_TIMEOUT)
    assert sorted(_ends(observer), key=str) == [("drain", None), ("ok", None)]


def test_a_silent_connection_cut_at_its_first_byte_deadline_ends_in_one_budget_event() -> None:
    """The first-byte budget closing a silent connection is one request_finished (budget, first_byte), no start."""
    observer = RecordingObserver()
    timeouts = ConnectionTimeouts(Budget(first_byte=0.2, idle=60.0))
    with running(make_server(timeouts=timeouts, observers=[observer])) as server, connect(server) as client:
        assert client.recv(1) == b""
        assert observer.wait_for("request_finished", 1, CLIENT_TIMEOUT)
    assert _ends(observer) == [("budget", "first_byte")]
    assert "request_started" not in observer.names()
