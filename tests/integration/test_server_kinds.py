"""Every server kind answers real clients, survives handler errors and
refusals, and leaves nothing behind when closed."""

from __future__ import annotations

import functools
import threading

import pytest

from composable_server import Budget, ConnectionTimeouts

from ._support import (
    Background,
    CLIENT_TIMEOUT,
    CloseHookDispatcher,
    Dispatch,
    MagicError,
    RecordingErrorPolicy,
    RefuseFirst,
    Responder,
    ServerKind,
    assert_no_children,
    describe_fds,
    new_threads,
    open_fds,
    read_to_eof,
    running,
)


class TestAnswers:
    @pytest.mark.timeout(10)
    def test_sequential_requests(self, server_kind: ServerKind, responder: Responder) -> None:
        """Answers several requests in a row, each from a new client."""
        with running(server_kind.server(responder)) as server:
            for i in range(5):
                assert server_kind.request(server, b"ping %d" % i) == b"PING %d" % i

    @pytest.mark.timeout(10)
    def test_concurrent_clients(self, concurrent_server_kind: ServerKind, responder: Responder) -> None:
        """Under threading and forking dispatch, two requests are held open at
        once and a third is answered meanwhile."""
        server_kind = concurrent_server_kind
        with running(server_kind.server(responder)) as server:
            held = [Background(lambda: server_kind.request(server, b"hold")) for _ in range(2)]
            try:
                # Both requests are inside the handler at the same time ...
                assert responder.entered.wait(), "first held request never reached the handler"
                assert responder.entered.wait(), "second held request never reached the handler"
                # ... and the server still answers a third client.
                assert server_kind.request(server, b"meanwhile") == b"MEANWHILE"
            finally:
                responder.release.post(2)
            assert [h.result() for h in held] == [b"released", b"released"]

    @pytest.mark.timeout(10)
    def test_many_concurrent_clients(self, server_kind: ServerKind, responder: Responder) -> None:
        """Eight clients sending at once are all answered correctly."""
        start = threading.Barrier(8)

        def client(i: int) -> bytes:
            start.wait(CLIENT_TIMEOUT)
            return server_kind.request(server, b"client %d" % i)

        with running(server_kind.server(responder)) as server:
            clients = [Background(functools.partial(client, i)) for i in range(8)]
            assert [c.result() for c in clients] == [b"CLIENT %d" % i for i in range(8)]


class TestErrors:
    @pytest.mark.timeout(10)
    def test_handler_exception_is_survived(
        self, server_kind: ServerKind, responder: Responder, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A handler exception goes to the error policy and the next request is answered."""
        in_process = server_kind.dispatch is not Dispatch.FORKING
        policy = RecordingErrorPolicy() if in_process else None
        with running(server_kind.server(responder, error_policy=policy)) as server:
            # Stream: EOF without a line; datagram: DatagramRequestHandler.finish
            # still sends the (empty) wfile, as stdlib does.
            assert server_kind.request(server, b"boom") == b""
            if policy is not None:
                assert policy.wait_for(1)
            assert server_kind.request(server, b"after") == b"AFTER"
            assert server_kind.request(server, b"boom") == b""
            assert server_kind.request(server, b"again") == b"AGAIN"
        if policy is not None:
            assert policy.wait_for(2)
            assert [type(exc) for _, exc in policy.errors] == [MagicError, MagicError]
        else:
            # The error happened in a forked child, which printed the stdlib
            # report with the default PrintTraceback policy; server_close()
            # waited for the children, so their output is complete.
            err = capfd.readouterr().err
            assert err.count("Exception occurred during processing of request from") == 2
            assert err.count("MagicError: boom requested by the client") == 2

    @pytest.mark.timeout(10)
    def test_refused_request_gets_no_reply(self, server_kind: ServerKind, responder: Responder) -> None:
        """A request the verifier refuses is closed unserved and the server goes on."""
        verifier = RefuseFirst(1)
        with running(server_kind.server(responder, verifier=verifier)) as server:
            if server_kind.family.is_stream:
                # Nothing sent, so the close cannot turn into a reset: plain EOF.
                with server_kind.connect(server) as sock:
                    assert read_to_eof(sock) == b""
                assert verifier.refused.is_set()
                assert server_kind.request(server, b"next") == b"NEXT"
            else:
                with server_kind.datagram_client() as sock:
                    sock.sendto(b"refused", server.server_address)
                    assert verifier.refused.wait(CLIENT_TIMEOUT)
                    sock.sendto(b"next", server.server_address)
                    # Had the refused datagram been served, its reply would
                    # have been queued first.
                    assert sock.recv(65536) == b"NEXT"
            assert verifier.admitted == 1


class TestClose:
    @pytest.mark.timeout(10)
    def test_nothing_left_behind(self, server_kind: ServerKind, responder: Responder) -> None:
        """After server_close the descriptor is -1, the listener is gone, and no
        thread, child process or descriptor is left."""
        baseline = set(threading.enumerate())
        fds = open_fds()
        with running(server_kind.server(responder)) as server:
            for i in range(3):
                assert server_kind.request(server, b"x%d" % i) == b"X%d" % i
            address = server.server_address
        assert server.fileno() == -1
        server_kind.assert_listener_closed(address)
        assert new_threads(baseline) == []
        assert_no_children()
        assert describe_fds(open_fds() - fds) == []

    @pytest.mark.timeout(10)
    def test_close_waits_for_requests_in_flight(
        self, concurrent_server_kind: ServerKind, responder: Responder
    ) -> None:
        """Closing while a request is held waits for it (block_on_close), the
        held request is answered, and no thread or child is left behind."""
        server_kind = concurrent_server_kind
        # Datagram handlers reply through the listening socket, so close()
        # must let them finish before it closes the transport (stdlib closes
        # the socket first and such replies fail with EBADF).
        baseline = set(threading.enumerate())
        in_process = server_kind.dispatch is Dispatch.THREADING
        policy = RecordingErrorPolicy() if in_process else None
        # The held handler is released only once the dispatcher is being
        # closed, so server_close() must wait for it to finish.
        dispatcher = CloseHookDispatcher(server_kind.dispatch.make(), responder.release.post)
        server = server_kind.server(responder, dispatcher=dispatcher, error_policy=policy)
        with running(server):
            held = Background(lambda: server_kind.request(server, b"hold", timeout=2.0))
            assert responder.entered.wait()
        if policy is not None:
            assert [exc for _, exc in policy.errors] == []
        assert held.result() == b"released"
        assert new_threads(baseline) == []
        assert_no_children()

    @pytest.mark.timeout(10)
    def test_nothing_left_behind_with_connection_budgets(
        self, stream_server_kind: ServerKind, responder: Responder
    ) -> None:
        """With a lifetime budget (served by a watchdog thread), close still
        leaves no thread or child behind."""
        server_kind = stream_server_kind
        baseline = set(threading.enumerate())
        policy = ConnectionTimeouts(Budget(first_byte=CLIENT_TIMEOUT, idle=CLIENT_TIMEOUT, lifetime=CLIENT_TIMEOUT))
        with running(server_kind.server(responder, timeout_policy=policy)) as server:
            for i in range(3):
                assert server_kind.request(server, b"b%d" % i) == b"B%d" % i
        assert policy.statistics() == {}
        assert new_threads(baseline) == []
        assert_no_children()

    @pytest.mark.timeout(10)
    def test_close_is_idempotent(self, server_kind: ServerKind, responder: Responder) -> None:
        """server_close() twice is a no-op the second time."""
        server = server_kind.server(responder)
        server.server_close()
        server.server_close()
        assert server.fileno() == -1
