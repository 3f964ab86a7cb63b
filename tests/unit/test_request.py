"""The life of one request (composable_server._request), driven by the
in-memory fakes: the job, the request path's early wake, and the parking."""

from __future__ import annotations

import ast
import functools
import io
import os
import select
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import composable_server
from composable_server import Budget, Server, StreamRequestHandler
from composable_server._request import (
    _TO_LOOP,
    _TO_LOOP_WAKE,
    DatagramJob,
    KeptFiles,
    Parking,
    RequestJob,
    RequestPath,
    client_speaks_first,
    parks_connections,
    takes_kernel_timeouts,
)
from composable_server.interfaces import RequestFinished, Verdict
from composable_server.observers import ObserverGroup
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryRequestOps,
    MemoryTransport,
    MemoryVerifier,
    RecordingErrorPolicy,
    RecordingHandler,
    RecordingObserver,
    RecordingTimeoutPolicy,
)

WAIT = 10.0  # upper bound for things that should happen at once

MemServer = Server[str, str]


class Rig:
    """A server on fakes whose timeout policy reports *budget*."""

    def __init__(
        self,
        *,
        budget: Budget | None = None,
        action: Callable[[str, str, object], object] | None = None,
        handler: Callable[[str, str, object], object] | None = None,
        connections: bool = True,
        hold: bool = False,
        clients: dict[object, str] | None = None,
        late_admission: bool = False,
        verifier: MemoryVerifier | None = None,
    ) -> None:
        self.ops = MemoryRequestOps(connections)
        self.transport: MemoryTransport[str, str] = MemoryTransport(
            "memory", request_ops=self.ops, clients=clients or {}, late_admission=late_admission
        )
        self.verifier = MemoryVerifier() if verifier is None else verifier
        self.handler: RecordingHandler[str, str] = RecordingHandler(action)
        self.dispatcher = InlineDispatcher(hold=hold)
        self.errors = RecordingErrorPolicy()
        self.policy = RecordingTimeoutPolicy(budget=budget)
        self.server: MemServer = Server(
            transport=self.transport,
            acceptor=MemoryAcceptor(),
            handler=self.handler if handler is None else handler,
            dispatcher=self.dispatcher,
            verifier=self.verifier,
            error_policy=self.errors,
            timeout_policy=self.policy,
        )

    def job(self, request: str = "req-1", client_address: str = "client-1") -> RequestJob[str, str]:
        return self.server._requests.job(request, client_address)


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = Rig(budget=Budget(idle=5.0))
    try:
        yield rig
    finally:
        rig.server.server_close()


@contextmanager
def serving(server: MemServer) -> Iterator[None]:
    """serve_forever in a thread; shut down and joined on exit."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="serve_forever")
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(WAIT)
        assert not thread.is_alive()


@contextmanager
def silent(ops: MemoryRequestOps, request: str) -> Iterator[Callable[[], None]]:
    """Make *request* a silent connection; yields the function that makes its client speak."""
    r, w = os.pipe()
    ops.silent[request] = r

    def speak() -> None:
        os.write(w, b"x")

    try:
        yield speak
    finally:
        os.close(r)
        os.close(w)


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll *predicate* until it holds or *timeout* passes (for state no event reports)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.002)
    return True


class SafeHandler(StreamRequestHandler[str]):
    """A handler class declaring that kernel timeouts are safe (inherited)."""


class RawHandler(StreamRequestHandler[str]):
    """A handler class that reads its socket directly, so it opts out."""

    kernel_timeouts_safe = False


def plain_function(request: object, client_address: object, server: object) -> None:
    """A handler that is a plain function."""


class CapableHandler:
    """A handler that is no StreamRequestHandler but declares the capability."""

    kernel_timeouts_safe = True

    def __init__(self, request: object, client_address: object, server: object) -> None:
        pass


class TestTakesKernelTimeouts:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("handler", "expected"),
        [
            (SafeHandler, True),
            (functools.partial(SafeHandler), True),
            (functools.partial(functools.partial(SafeHandler)), True),
            (RawHandler, False),
            (socketserver.StreamRequestHandler, False),
            (plain_function, False),
            (RecordingHandler(), False),
        ],
        ids=["subclass", "partial", "nested-partial", "opted-out", "stdlib", "function", "callable"],
    )
    def test_the_handler_states_the_capability(self, handler: object, expected: bool) -> None:
        """Kernel timeouts are used only for a handler that declares kernel_timeouts_safe = True."""
        assert takes_kernel_timeouts(handler) is expected


class TestRequestJob:
    @pytest.mark.timeout(5)
    def test_default_body_runs_the_hooks_and_applies_the_idle_budget(self, rig: Rig) -> None:
        """The default body starts the request, bounds its idle time through the ops, runs the handler and shuts the request down."""
        assert rig.job().run() is True
        assert rig.transport.started_requests == ["req-1"]
        assert rig.ops.idle_limits == [("req-1", 5.0, False)]
        assert rig.handler.calls == [("req-1", "client-1")]
        assert rig.transport.shutdown_requests == ["req-1"]

    @pytest.mark.timeout(5)
    def test_a_capable_handler_gets_kernel_timeouts(self) -> None:
        """A handler declaring kernel_timeouts_safe gets its idle limit with kernel=True."""
        rig = Rig(budget=Budget(idle=5.0), handler=CapableHandler)
        try:
            assert rig.job().run() is True
            assert rig.ops.idle_limits == [("req-1", 5.0, True)]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_no_budget_for_requests_that_are_not_connections(self) -> None:
        """Requests whose ops are not connections (datagrams) get no idle limit."""
        rig = Rig(budget=Budget(idle=5.0, lifetime=60.0), connections=False)
        try:
            assert rig.job().run() is True
            assert rig.ops.idle_limits == []
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_handler_error_is_reported_inside_except_and_the_request_shut_down(self) -> None:
        """A handler exception reaches handle_error inside the except block; run() returns False."""
        boom = ValueError("handler broke")

        def explode(request: str, client_address: str, server: object) -> None:
            raise boom

        rig = Rig(action=explode)
        try:
            assert rig.job().run() is False
            [record] = rig.errors.errors
            assert record.exc is boom and record.in_except
            assert rig.transport.shutdown_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_a_body_replaces_the_default_serving(self, rig: Rig) -> None:
        """A job with a body calls it instead of the hooks; the body owns the request."""
        calls: list[tuple[str, str]] = []
        job = rig.server._requests.job("req-1", "client-1", lambda request, address: calls.append((request, address)))
        assert job.run() is True
        assert calls == [("req-1", "client-1")]
        assert rig.handler.calls == []
        assert rig.transport.started_requests == [] and rig.transport.finished_requests == []

    @pytest.mark.timeout(5)
    def test_a_body_returning_false_makes_the_job_fail(self, rig: Rig) -> None:
        """A body's False result is the job's (a forked child then exits 1); any other result counts as success."""
        assert rig.server._requests.job("req-1", "client-1", lambda request, address: False).run() is False
        assert rig.server._requests.job("req-2", "client-2", lambda request, address: None).run() is True

    @pytest.mark.timeout(5)
    def test_close_rejects_through_the_ops_then_closes(self, rig: Rig) -> None:
        """close(message) sends the message through the transport's ops, then close_request()."""
        job = rig.job()
        job.close(b"busy\r\n")
        assert rig.ops.rejected == [("req-1", b"busy\r\n", "client-1")]
        assert rig.transport.closed_requests == ["req-1"]
        job.close()
        assert len(rig.ops.rejected) == 1, "an empty message is not sent"

    @pytest.mark.timeout(5)
    def test_errors_after_an_abort_are_not_reported(self) -> None:
        """abort() cuts through the ops and marks the job cut: the handler's resulting error is not reported."""

        def fail(request: str, client_address: str, server: object) -> None:
            raise ConnectionResetError("cut")

        rig = Rig(action=fail)
        try:
            job = rig.job()
            job.abort()
            job.abort()
            assert job.cut
            assert rig.ops.aborted == ["req-1", "req-1"]
            assert job.run() is False
            assert rig.errors.errors == []
            assert rig.transport.shutdown_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_lifetime_budget_aborts_and_reports(self) -> None:
        """A handler running past the lifetime budget is aborted from the watchdog and reported as 'lifetime'."""
        ops_ref: list[MemoryRequestOps] = []

        def wait_for_cut(request: str, client_address: str, server: object) -> None:
            assert eventually(lambda: bool(ops_ref[0].aborted))
            raise ConnectionResetError("cut")

        rig = Rig(budget=Budget(lifetime=0.05), action=wait_for_cut)
        ops_ref.append(rig.ops)
        try:
            assert rig.job().run() is False
            assert rig.policy.exceeded == [("client-1", "lifetime")]
            assert rig.errors.errors == []
        finally:
            rig.server.server_close()



class TestDatagramJob:
    @staticmethod
    def datagram_rig(action: Callable[[str, str, object], object] | None = None, *, hold: bool = False) -> Rig:
        return Rig(budget=Budget(idle=5.0, lifetime=60.0), connections=False, action=action, hold=hold)

    @staticmethod
    def dispatched(rig: Rig) -> list[object]:
        """The jobs the server's process_request hands its (holding) dispatcher."""
        rig.server.process_request("req-1", "client-1")
        jobs: list[object] = list(rig.dispatcher.pending)
        rig.dispatcher.release()
        return jobs

    @pytest.mark.timeout(5)
    def test_the_server_gives_datagrams_the_lean_job(self) -> None:
        """process_request hands a datagram (ops not connections, no observers) a DatagramJob, a connection a RequestJob."""
        rig = self.datagram_rig(hold=True)
        connection = Rig(hold=True)
        try:
            [job] = self.dispatched(rig)
            assert isinstance(job, DatagramJob) and repr(job) == "<DatagramJob 'client-1'>"
            [job] = self.dispatched(connection)
            assert isinstance(job, RequestJob)
        finally:
            rig.server.server_close()
            connection.server.server_close()

    @pytest.mark.timeout(5)
    def test_late_admission_keeps_the_full_job(self) -> None:
        """A transport that verifies late (its client is known after start_request) gets a RequestJob even for datagrams."""
        rig = Rig(connections=False, late_admission=True, hold=True)
        try:
            [job] = self.dispatched(rig)
            assert isinstance(job, RequestJob)
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_run_starts_serves_and_shuts_down_without_budgets(self) -> None:
        """run() calls start_request, the handler and shutdown_request, counts the finish, and sets no idle limit."""
        rig = self.datagram_rig()
        try:
            finishes = rig.server._requests.finishes
            assert DatagramJob(rig.server._requests, "req-1", "client-1").run() is True
            assert rig.transport.started_requests == ["req-1"]
            assert rig.handler.calls == [("req-1", "client-1")]
            assert rig.transport.shutdown_requests == ["req-1"]
            assert rig.ops.idle_limits == []
            assert rig.server._requests.finishes == (finishes + 1) & 0xFF
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_a_handler_error_is_reported_and_the_request_shut_down(self) -> None:
        """A handler exception reaches handle_error inside the except block; run() returns False."""
        boom = ValueError("handler broke")

        def explode(request: str, client_address: str, server: object) -> None:
            raise boom

        rig = self.datagram_rig(explode)
        try:
            assert DatagramJob(rig.server._requests, "req-1", "client-1").run() is False
            [record] = rig.errors.errors
            assert record.exc is boom and record.in_except
            assert rig.transport.shutdown_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_errors_after_an_abort_are_not_reported(self) -> None:
        """abort() goes through the ops and marks the job cut: the handler's error is not reported."""

        def fail(request: str, client_address: str, server: object) -> None:
            raise OSError("cut")

        rig = self.datagram_rig(fail)
        try:
            job = DatagramJob(rig.server._requests, "req-1", "client-1")
            job.abort()
            assert job.cut and rig.ops.aborted == ["req-1"]
            assert job.run() is False
            assert rig.errors.errors == []
            assert rig.transport.shutdown_requests == ["req-1"]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_close_rejects_through_the_ops_then_closes(self) -> None:
        """close(message) sends the message through the transport's ops, then close_request(); no handler runs."""
        rig = self.datagram_rig()
        try:
            job = DatagramJob(rig.server._requests, "req-1", "client-1")
            job.close(b"busy\r\n")
            assert rig.ops.rejected == [("req-1", b"busy\r\n", "client-1")]
            assert rig.transport.closed_requests == ["req-1"]
            assert rig.handler.calls == []
        finally:
            rig.server.server_close()


class TestTheClientStartRequestNames:
    """The address start_request returns (a PROXY header's client) is the one
    the server judges, serves and reports from then on."""

    @pytest.mark.timeout(5)
    def test_the_handler_and_the_job_see_the_new_client(self) -> None:
        """The handler is called with the client start_request returned, and the job (drain reports) holds it."""
        rig = Rig(clients={"proxy-1": "client-7"})
        try:
            job = rig.job(client_address="proxy-1")
            assert job.run() is True
            assert rig.handler.calls == [("req-1", "client-7")]
            assert job.client_address == "client-7"
            assert repr(job) == "<Job 'client-7'>"
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(5)
    def test_the_error_policy_sees_the_new_client(self) -> None:
        """A handler error is reported with the client start_request returned."""

        def explode(request: str, client_address: str, server: object) -> None:
            raise ValueError("handler broke")

        rig = Rig(action=explode, clients={"proxy-1": "client-7"})
        try:
            assert rig.job(client_address="proxy-1").run() is False
            [record] = rig.errors.errors
            assert record.client_address == "client-7"
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_the_lifetime_report_names_the_new_client(self) -> None:
        """A lifetime budget report names the client start_request returned."""
        ops_ref: list[MemoryRequestOps] = []

        def wait_for_cut(request: str, client_address: str, server: object) -> None:
            assert eventually(lambda: bool(ops_ref[0].aborted))
            raise ConnectionResetError("cut")

        rig = Rig(budget=Budget(lifetime=0.05), action=wait_for_cut, clients={"proxy-1": "client-7"})
        ops_ref.append(rig.ops)
        try:
            assert rig.job(client_address="proxy-1").run() is False
            assert rig.policy.exceeded == [("client-7", "lifetime")]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_late_admission_verifies_the_new_client_in_the_worker(self) -> None:
        """A late-admission transport's requests skip the loop's verifier and are verified after start_request."""
        rig = Rig(clients={"proxy-1": "client-7"}, late_admission=True)
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "proxy-1")
                assert eventually(lambda: bool(rig.handler.calls))
            assert rig.verifier.calls == [("req-1", "client-7")]
            assert rig.transport.started_requests == ["req-1"]
            assert rig.handler.calls == [("req-1", "client-7")]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_a_late_refusal_is_released_unserved_and_unreported(self) -> None:
        """A request the late verifier refuses gets no handler and no error report, and is shut down (released)."""
        released: list[object] = []

        class Releasing:
            def verify(self, request: object, client_address: object) -> bool:
                return client_address != "client-7"

            def release(self, request: object) -> None:
                released.append(request)

        rig = Rig(clients={"proxy-1": "client-7"}, late_admission=True)
        server: MemServer = Server(
            transport=rig.transport,
            acceptor=MemoryAcceptor(),
            handler=rig.handler,
            dispatcher=rig.dispatcher,
            verifier=Releasing(),
            error_policy=rig.errors,
        )
        try:
            with serving(server):
                rig.transport.connect("req-1", "proxy-1")
                rig.transport.connect("req-2", "proxy-2")
                assert eventually(lambda: len(rig.transport.shutdown_requests) == 2)
            assert rig.handler.calls == [("req-2", "proxy-2")]
            assert rig.transport.shutdown_requests == ["req-1", "req-2"]
            assert released == ["req-1", "req-2"]
            assert rig.errors.errors == []
        finally:
            server.server_close()
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_an_early_admission_transport_is_verified_once_in_the_loop(self) -> None:
        """Without late admission the verifier runs once, in the loop, with the accepted address."""
        rig = Rig(clients={"proxy-1": "client-7"})
        try:
            with serving(rig.server):
                rig.transport.connect("req-1", "proxy-1")
                assert eventually(lambda: bool(rig.handler.calls))
            assert rig.verifier.calls == [("req-1", "proxy-1")]
            assert rig.handler.calls == [("req-1", "client-7")]
        finally:
            rig.server.server_close()


class TestRequestPath:
    @staticmethod
    def _path(wakes: list[int]) -> RequestPath[str, str]:
        rig = Rig()
        rig.server.server_close()  # only its hooks are needed, never called here
        return RequestPath(rig.server, lambda: wakes.append(1))

    @pytest.mark.timeout(5)
    def test_finished_job_wakes_only_a_paused_loop(self) -> None:
        """finished() wakes the loop while it is paused, and not otherwise."""
        wakes: list[int] = []
        path = self._path(wakes)
        path.finished()
        assert wakes == []
        path.pause(path.finishes)
        assert path.paused and wakes == []
        path.finished()
        assert wakes == [1]
        path.resume()
        path.finished()
        assert wakes == [1] and not path.paused

    @pytest.mark.timeout(5)
    def test_a_job_finishing_during_the_failed_accept_wakes_at_pause(self) -> None:
        """A job that finished between the accept's snapshot and pause() (its own wake came too early) makes pause() wake at once."""
        wakes: list[int] = []
        path = self._path(wakes)
        snapshot = path.finishes
        path.finished()  # not paused yet: no wake
        assert wakes == []
        path.pause(snapshot)
        assert wakes == [1]

    @pytest.mark.timeout(5)
    def test_the_count_wraps(self) -> None:
        """The finish count is one shared byte: it wraps at 256 and keeps counting."""
        path = self._path([])
        for _ in range(300):
            path.finished()
        assert path.finishes == 300 % 256

    @pytest.mark.timeout(10)
    def test_a_forked_child_sees_the_parents_pause_now(self) -> None:
        """A job finishing in a child forked before the pause still wakes the paused parent (the flag is shared, not copied)."""
        woken_r, woken_w = os.pipe()
        go_r, go_w = os.pipe()
        path = self._path([])
        path = RequestPath(path.host, lambda: os.write(woken_w, b"!"))
        pid = os.fork()
        if pid == 0:  # the child: wait for the go, then finish a job
            status = 1
            try:
                os.read(go_r, 1)
                path.finished()
                status = 0
            finally:
                os._exit(status)
        try:
            path.pause(path.finishes)
            os.write(go_w, b"g")
            assert os.waitpid(pid, 0)[1] == 0
            pid = 0
            assert os.read(woken_r, 1) == b"!"
            assert path.finishes == 1, "the child's count is the parent's"
        finally:
            if pid:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            for fd in (woken_r, woken_w, go_r, go_w):
                os.close(fd)


class TestParking:
    @pytest.mark.timeout(10)
    def test_a_silent_connection_waits_in_the_loop_until_it_speaks(self) -> None:
        """With a first-byte budget a silent connection is not dispatched until its client speaks; then it is served."""
        rig = Rig(budget=Budget(first_byte=WAIT))
        try:
            with silent(rig.ops, "quiet") as speak, serving(rig.server):
                rig.transport.connect("quiet", "client-q")
                rig.transport.connect("loud", "client-l")
                assert rig.handler.wait_for(1, WAIT)
                assert [r for r, _ in rig.handler.calls] == ["loud"]
                assert rig.dispatcher.dispatched and len(rig.dispatcher.dispatched) == 1
                speak()
                assert rig.handler.wait_for(2, WAIT)
            assert [r for r, _ in rig.handler.calls] == ["loud", "quiet"]
            assert rig.policy.exceeded == []
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_a_silent_connection_is_closed_at_its_deadline(self) -> None:
        """A connection silent past its first-byte budget is shut down unserved and reported as 'first_byte'."""
        rig = Rig(budget=Budget(first_byte=0.05))
        try:
            with silent(rig.ops, "quiet"), serving(rig.server):
                rig.transport.connect("quiet", "client-q")
                assert eventually(lambda: rig.transport.shutdown_requests == ["quiet"])
            assert rig.handler.calls == []
            assert rig.policy.exceeded == [("client-q", "first_byte")]
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_handle_request_parks_too(self) -> None:
        """handle_request() waits for a silent connection's first byte (up to the budget), then closes it unserved."""
        rig = Rig(budget=Budget(first_byte=0.05))
        try:
            with silent(rig.ops, "quiet"):
                rig.transport.connect("quiet", "client-q")
                started = time.monotonic()
                rig.server.handle_request()
                elapsed = time.monotonic() - started
            assert rig.handler.calls == []
            assert rig.transport.shutdown_requests == ["quiet"]
            assert rig.policy.exceeded == [("client-q", "first_byte")]
            assert 0.05 <= elapsed < 0.05 + 1.0
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_handle_request_serves_a_parked_connection_that_speaks(self) -> None:
        """handle_request() dispatches a parked connection as soon as it speaks."""
        rig = Rig(budget=Budget(first_byte=WAIT))
        try:
            with silent(rig.ops, "quiet") as speak:
                rig.transport.connect("quiet", "client-q")
                threading.Timer(0.05, speak).start()
                rig.server.handle_request()
            assert rig.handler.calls == [("quiet", "client-q")]
            assert rig.policy.exceeded == []
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_leaving_the_loop_closes_parked_connections(self) -> None:
        """Parked connections are shut down when serve_forever returns: they never sent a byte."""
        rig = Rig(budget=Budget(first_byte=WAIT))
        try:
            with silent(rig.ops, "quiet"):
                with serving(rig.server):
                    rig.transport.connect("quiet", "client-q")
                    assert eventually(lambda: rig.transport.pending == ())
                assert rig.transport.shutdown_requests == ["quiet"]
            assert rig.handler.calls == [] and rig.policy.exceeded == []
        finally:
            rig.server.server_close()

    @pytest.mark.timeout(10)
    def test_requests_that_are_not_connections_are_never_parked(self) -> None:
        """A first-byte budget does not apply to requests whose ops are not connections."""
        rig = Rig(budget=Budget(first_byte=WAIT), connections=False)
        try:
            with silent(rig.ops, "datagram"):
                rig.transport.connect("datagram", "client-d")
                rig.server.handle_request()
            assert rig.handler.calls == [("datagram", "client-d")]
        finally:
            rig.server.server_close()


class _Closed:
    verdict = Verdict.CLOSE


class _Parking:
    """A parking handler factory (``client_speaks_first`` as given); records each call's client, says CLOSE."""

    parks_connections = True

    def __init__(self, *, client_first: bool) -> None:
        self.client_speaks_first = client_first
        self.calls: list[str] = []
        self.called = threading.Semaphore(0)

    def __call__(self, request: object, client_address: str, server: object) -> _Closed:
        self.calls.append(client_address)
        self.called.release()
        return _Closed()


class TestUnspokenConnections:
    """A new connection of a parking handler whose client speaks first waits among the kept ones until it speaks."""

    @contextmanager
    def rig(self, *, client_first: bool) -> Iterator[tuple[Rig, _Parking, PipeConnection]]:
        """A rig with a :class:`_Parking` handler, and a silent connection queued on it (as ``client-q``)."""
        handler = _Parking(client_first=client_first)
        rig = Rig(budget=Budget(idle=WAIT), handler=handler)
        conn = PipeConnection()
        try:
            rig.ops.silent[conn] = conn.r
            rig.transport.connect(conn, "client-q")  # type: ignore[arg-type]  # a fake socket: its descriptor is a pipe's
            yield rig, handler, conn
        finally:
            rig.server.server_close()
            conn.close()

    @pytest.mark.timeout(10)
    def test_it_is_served_when_it_speaks_and_others_meanwhile(self) -> None:
        """No first-byte budget: the silent one is kept unread (no handler call), the next one is served, then the first."""
        with self.rig(client_first=True) as (rig, handler, conn), serving(rig.server):
            rig.transport.connect("loud", "client-l")
            assert handler.called.acquire(timeout=WAIT)
            assert handler.calls == ["client-l"]
            assert eventually(lambda: rig.server.parked_connections == 1)
            conn.speak()
            assert handler.called.acquire(timeout=WAIT)
            assert handler.calls == ["client-l", "client-q"]
            assert rig.policy.exceeded == []

    @pytest.mark.timeout(10)
    def test_a_handler_whose_server_speaks_first_is_called_at_once(self) -> None:
        """Without client_speaks_first a silent new connection goes to the handler at once (it may greet)."""
        with self.rig(client_first=False) as (rig, handler, _), serving(rig.server):
            assert handler.called.acquire(timeout=WAIT)
            assert handler.calls == ["client-q"] and rig.server.parked_connections == 0

    @pytest.mark.timeout(10)
    def test_without_a_loop_it_is_served_in_place(self) -> None:
        """handle_request() has no loop to keep it in: the handler is called (and waits in its read)."""
        with self.rig(client_first=True) as (rig, handler, _):
            rig.server.handle_request()
            assert handler.calls == ["client-q"]


class TestLayering:
    @pytest.mark.timeout(5)
    def test_the_engine_knows_no_sockets_nor_handlers(self) -> None:
        """server.py imports neither socket nor the handlers, and never asks isinstance of anything."""
        source = (Path(composable_server.__file__).parent / "server.py").read_text()
        tree = ast.parse(source)
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        assert not {"socket", "handlers"} & imported
        calls = [
            node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
        ]
        assert calls == []


class _Parks:
    parks_connections = True


def _wrapper(request: object, client_address: object, server: object) -> object:
    return None  # never called: only its __wrapped__ is read


class _ClientFirst(_Parks):
    client_speaks_first = True


@pytest.mark.parametrize(
    ("capability", "handler", "expected"),
    [
        (parks_connections, _Parks, True),
        (parks_connections, StreamRequestHandler, False),
        (parks_connections, functools.partial(_Parks), True),
        (parks_connections, functools.update_wrapper(_wrapper, _Parks, assigned=(), updated=()), True),
        (parks_connections, lambda request, address, server: None, False),
        (client_speaks_first, _ClientFirst, True),
        (client_speaks_first, _Parks, False),
        (client_speaks_first, functools.partial(_ClientFirst), True),
        (client_speaks_first, functools.update_wrapper(_wrapper, _ClientFirst, assigned=(), updated=()), True),
    ],
    ids=["parking", "stream", "partial", "wrapped", "function",
         "client-first", "parking-only", "client-first-partial", "client-first-wrapped"],
)
def test_capabilities_are_read_through_partials_and_wrappers(
    capability: Callable[[object], bool], handler: object, expected: bool
) -> None:
    """A handler's stated capabilities (parks_connections, client_speaks_first) are read through partial and __wrapped__."""
    assert capability(handler) is expected


class PipeConnection:
    """A fake kept connection: its descriptor is a pipe's read end, readable once the test writes."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def fileno(self) -> int:
        return self.r

    def speak(self) -> None:
        os.write(self.w, b"x")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class TestKeptConnections:
    @contextmanager
    def parking(self, rig: Rig, max_kept: int = 10) -> Iterator[tuple[Parking[str, str], list[object], RecordingObserver]]:
        observer = RecordingObserver()
        redispatched: list[object] = []
        parking: Parking[str, str] = Parking(
            rig.server, select.poll(), lambda r, a: None, redispatched.append, max_kept, ObserverGroup([observer])
        )
        try:
            yield parking, redispatched, observer
        finally:
            parking.clear()

    def kept_job(self, rig: Rig, conn: PipeConnection, client: str) -> RequestJob[str, str]:
        # A kept job holds a connection; the fake's descriptor stands for its socket.
        return rig.server._requests.job(conn, client)  # type: ignore[arg-type]  # a fake socket

    @pytest.mark.timeout(10)
    def test_a_readable_kept_connection_is_dispatched_again_once(self) -> None:
        """A kept connection that becomes readable is handed to redispatch once, with every ready one per wake-up."""
        rig = Rig(budget=Budget(idle=WAIT))
        conns = [PipeConnection() for _ in range(3)]
        try:
            with self.parking(rig) as (parking, redispatched, observer):
                jobs = [self.kept_job(rig, c, f"client-{i}") for i, c in enumerate(conns)]
                assert [parking.keep(job) for job in jobs] == [_TO_LOOP_WAKE, _TO_LOOP, _TO_LOOP]  # the first makes the poll set
                conns[0].speak()
                conns[2].speak()
                assert parking.ready(parking._epoll_fd)
                assert redispatched == [jobs[0], jobs[2]]
                assert parking.ready(parking._epoll_fd)  # one-shot: not reported twice
                assert redispatched == [jobs[0], jobs[2]] and parking.kept == 1
                assert observer.events == []
        finally:
            rig.server.server_close()
            for c in conns:
                c.close()

    @pytest.mark.timeout(10)
    def test_idle_and_lru_closes_each_end_in_one_budget_event(self) -> None:
        """Beyond the cap the least recently kept is closed ('parked'), past its idle deadline a kept one ('idle'): one event each."""
        rig = Rig(budget=Budget(idle=WAIT))
        conns = [PipeConnection() for _ in range(2)]
        try:
            with self.parking(rig, max_kept=1) as (parking, _, observer):
                first, second = (self.kept_job(rig, c, f"client-{i}") for i, c in enumerate(conns))
                assert parking.keep(first) == _TO_LOOP_WAKE  # the first makes the poll set
                assert parking.keep(second) == _TO_LOOP_WAKE  # over the cap
                assert parking.next_deadline() is not None
                parking.expire(time.monotonic())
                assert [(e.client_address, e.outcome, e.budget) for e in observer.of(RequestFinished)] == [
                    ("client-0", "budget", "parked")
                ]
                parking.expire(time.monotonic() + WAIT + 1)
                assert [(e.client_address, e.outcome, e.budget) for e in observer.of(RequestFinished)] == [
                    ("client-0", "budget", "parked"),
                    ("client-1", "budget", "idle"),
                ]
                assert rig.policy.exceeded == [("client-0", "parked"), ("client-1", "idle")]
                assert list[object](rig.transport.shutdown_requests) == conns and parking.kept == 0
        finally:
            rig.server.server_close()
            for c in conns:
                c.close()

    @pytest.mark.timeout(10)
    def test_clear_ends_each_kept_connection_in_one_drain_event_and_refuses_later_ones(self) -> None:
        """Leaving the loop closes kept connections (one 'drain' event each); a job given back afterwards is refused."""
        rig = Rig(budget=Budget(idle=WAIT))
        conns = [PipeConnection() for _ in range(2)]
        try:
            with self.parking(rig) as (parking, _, observer):
                first, late = (self.kept_job(rig, c, f"client-{i}") for i, c in enumerate(conns))
                assert parking.keep(first) == _TO_LOOP_WAKE
                parking.clear()
                assert [(e.outcome, e.budget) for e in observer.of(RequestFinished)] == [("drain", None)]
                assert parking.keep(late) != _TO_LOOP
                assert list[object](rig.transport.shutdown_requests) == [conns[0]]
        finally:
            rig.server.server_close()
            for c in conns:
                c.close()


def kept_entry(tag: bytes = b"") -> tuple[io.BytesIO, io.BytesIO, int, int]:
    """A KeptFiles entry over in-memory files (rbufsize -1, wbufsize 0)."""
    return io.BytesIO(tag), io.BytesIO(), -1, 0


class TestKeptFiles:
    def test_files_put_for_a_connection_are_taken_back_once(self) -> None:
        """An entry put for a connection comes back for that connection only, and only once."""
        kept = KeptFiles(4)
        entry = kept_entry()
        kept.put("conn-a", entry)
        assert kept.pop("conn-b", None) is None
        assert kept.pop("conn-a", None) is entry
        assert kept.pop("conn-a", None) is None

    def test_beyond_size_the_least_recently_kept_files_are_closed(self) -> None:
        """With size 2, a third entry closes the files of the first one; the other two stay open."""
        kept = KeptFiles(2)
        entries = [kept_entry() for _ in range(3)]
        for i, entry in enumerate(entries):
            kept.put(f"conn-{i}", entry)
        assert len(kept) == 2 and list(kept) == ["conn-1", "conn-2"]
        assert entries[0][0].closed and entries[0][1].closed
        assert not any(f.closed for entry in entries[1:] for f in entry[:2])

    def test_evict_closes_what_is_over_the_size_after_direct_assignment(self) -> None:
        """Entries set as items (the handler's inlined put) are bounded by evict()."""
        kept = KeptFiles(1)
        first, second = kept_entry(), kept_entry()
        kept["a"] = first
        kept["b"] = second
        kept.evict()
        assert list(kept) == ["b"] and first[0].closed and not second[0].closed

    def test_size_zero_keeps_nothing(self) -> None:
        """A size of 0 closes every entry as it is put."""
        kept = KeptFiles(0)
        entry = kept_entry()
        kept.put("conn", entry)
        assert len(kept) == 0 and entry[0].closed

    def test_discard_closes_the_files_of_an_ended_connection(self) -> None:
        """discard() closes and forgets a connection's files; an unknown connection is a no-op."""
        kept = KeptFiles()
        entry = kept_entry()
        kept.put("conn", entry)
        kept.discard("other")
        kept.discard("conn")
        assert len(kept) == 0 and entry[0].closed and entry[1].closed

    def test_close_all_closes_every_entry(self) -> None:
        """close_all() empties the mapping and closes each file."""
        kept = KeptFiles()
        entries = [kept_entry() for _ in range(3)]
        for i, entry in enumerate(entries):
            kept.put(i, entry)
        kept.close_all()
        assert len(kept) == 0 and all(f.closed for entry in entries for f in entry[:2])

    def test_a_negative_size_is_refused_and_the_repr_shows_the_fill(self) -> None:
        """size must be >= 0; the repr reads kept/size."""
        with pytest.raises(ValueError, match="size must be >= 0, got -1"):
            KeptFiles(-1)
        kept = KeptFiles(3)
        kept.put("a", kept_entry())
        assert repr(kept) == "<KeptFiles 1/3>"

    def test_the_request_path_shares_its_servers_kept_files(self) -> None:
        """A server's request path uses the server's own KeptFiles, so a new path (compat reopen) keeps them."""
        rig = Rig()
        try:
            assert rig.server._requests.kept_files is rig.server.kept_files
            assert RequestPath(rig.server, lambda: None).kept_files is rig.server.kept_files
        finally:
            rig.server.server_close()

    def test_releasing_a_parking_job_discards_its_kept_files(self) -> None:
        """The job of a handler that parks ends its connection's kept files when it releases it."""
        rig = Rig()
        try:
            job = rig.server._requests.job("req", "client")
            job._parks = True
            entry = kept_entry()
            rig.server.kept_files.put("req", entry)
            job.release()
            assert len(rig.server.kept_files) == 0 and entry[0].closed
        finally:
            rig.server.server_close()
