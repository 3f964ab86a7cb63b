"""The dispatchers, with fake jobs: threads and fork are used, sockets are not."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import pytest

from composable_server import ForkingDispatcher, ServerClosedError, SyncDispatcher, ThreadingDispatcher

WAIT = 10.0


class FakeJob:
    """A job that records its calls in-process; optionally waits for a gate."""

    def __init__(self, name: str = "job", *, result: bool = True, gate: threading.Event | None = None) -> None:
        self.client_address: object = name
        self.result = result
        self.gate = gate
        self.started = threading.Event()
        self.done = threading.Event()
        self.runs: list[int] = []
        self.daemon: bool | None = None
        self.closes = 0

    def run(self) -> bool:
        self.started.set()
        self.runs.append(threading.get_ident())
        self.daemon = threading.current_thread().daemon
        if self.gate is not None:
            self.gate.wait(WAIT)
        self.done.set()
        return self.result

    def close(self, message: bytes = b"") -> None:
        self.closes += 1

    def abort(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<FakeJob {self.client_address!r}>"


class Pipe:
    """A pipe pair closed at teardown."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def readable(self, timeout: float) -> bool:
        poller = select.poll()
        poller.register(self.r, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class ChildJob:
    """A job for forked children: waits for a byte on *gate* (if any), then
    writes its name to *report* and returns *result*."""

    def __init__(self, name: str, report: Pipe, *, gate: Pipe | None = None, result: bool = True) -> None:
        self.client_address: object = name
        self.report = report
        self.gate = gate
        self.result = result
        self.parent_runs = 0
        self.closes = 0
        self.parent = os.getpid()

    def run(self) -> bool:
        if os.getpid() == self.parent:
            self.parent_runs += 1
        if self.gate is not None:
            self.gate.readable(WAIT)
        os.write(self.report.w, f"{self.client_address}\n".encode())
        return self.result

    def close(self, message: bytes = b"") -> None:
        self.closes += 1

    def abort(self) -> None:
        pass


@pytest.fixture
def report() -> Iterator[Pipe]:
    pipe = Pipe()
    yield pipe
    pipe.close()


@pytest.fixture
def gate() -> Iterator[Pipe]:
    pipe = Pipe()
    yield pipe
    pipe.close()


class TestSyncDispatcher:
    @pytest.mark.timeout(5)
    def test_runs_job_inline(self) -> None:
        """dispatch runs the job to completion in the calling thread."""
        dispatcher = SyncDispatcher()
        job = FakeJob()
        dispatcher.dispatch(job)
        assert job.runs == [threading.get_ident()]
        assert job.closes == 0
        assert dispatcher.join(0) == ()

    @pytest.mark.timeout(5)
    def test_refuses_jobs_after_close(self) -> None:
        """After close (idempotent) dispatch raises ServerClosedError and leaves the job alone."""
        dispatcher = SyncDispatcher()
        dispatcher.close()
        dispatcher.close()
        job = FakeJob()
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(job)
        assert (job.runs, job.closes) == ([], 0)

    @pytest.mark.timeout(5)
    def test_repr(self) -> None:
        """The repr says whether the dispatcher is closed."""
        dispatcher = SyncDispatcher()
        assert repr(dispatcher) == "<SyncDispatcher>"
        dispatcher.close()
        assert repr(dispatcher) == "<SyncDispatcher closed>"


class TestThreadingDispatcher:
    @pytest.mark.timeout(10)
    def test_runs_job_in_a_new_thread(self) -> None:
        """Each job runs once, in a thread other than the caller's."""
        dispatcher = ThreadingDispatcher()
        job = FakeJob()
        dispatcher.dispatch(job)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert len(job.runs) == 1
        assert job.runs[0] != threading.get_ident()
        assert job.closes == 0

    @pytest.mark.timeout(20)
    def test_bookkeeping_does_not_grow(self) -> None:
        """After many finished jobs no threads are kept: nothing running, nothing left to join."""
        dispatcher = ThreadingDispatcher()
        baseline = threading.active_count()
        jobs = [FakeJob(f"job-{i}") for i in range(200)]
        for job in jobs:
            dispatcher.dispatch(job)
            dispatcher.service()
        for job in jobs:
            assert job.done.wait(WAIT)
        assert dispatcher.join(WAIT) == ()
        assert dispatcher.running == 0
        assert dispatcher._finished == []  # white box: the bpo-37193 leak
        assert threading.active_count() == baseline
        dispatcher.close()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("daemon", [False, True])
    def test_daemon_flag(self, daemon: bool) -> None:
        """The job thread is daemonic exactly when daemon=True."""
        dispatcher = ThreadingDispatcher(daemon=daemon)
        job = FakeJob()
        dispatcher.dispatch(job)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert job.daemon is daemon

    @pytest.mark.timeout(10)
    def test_join_timeout_returns_running_jobs(self) -> None:
        """join(timeout) returns the jobs still running, and () once they finished."""
        dispatcher = ThreadingDispatcher()
        gate = threading.Event()
        slow, quick = FakeJob("slow", gate=gate), FakeJob("quick")
        try:
            dispatcher.dispatch(slow)
            dispatcher.dispatch(quick)
            assert slow.started.wait(WAIT) and quick.done.wait(WAIT)
            assert dispatcher.join(0.01) == (slow,)
            assert dispatcher.running >= 1
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_block_on_close_waits_for_jobs(self) -> None:
        """close() with block_on_close waits until the running job has finished."""
        dispatcher = ThreadingDispatcher(block_on_close=True)
        gate = threading.Event()
        job = FakeJob(gate=gate)
        dispatcher.dispatch(job)
        assert job.started.wait(WAIT)
        closer = threading.Thread(target=dispatcher.close)
        closer.start()
        try:
            closer.join(0.1)
            assert closer.is_alive(), "close() returned while a job was still running"
            assert not job.done.is_set()
        finally:
            gate.set()
            closer.join(WAIT)
        assert not closer.is_alive()
        assert job.done.is_set()

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("daemon", "block_on_close"), [(False, False), (True, True)])
    def test_close_does_not_wait_when_not_blocking(self, daemon: bool, block_on_close: bool) -> None:
        """close() returns at once without block_on_close, or for daemon threads."""
        dispatcher = ThreadingDispatcher(daemon=daemon, block_on_close=block_on_close)
        gate = threading.Event()
        job = FakeJob(gate=gate)
        dispatcher.dispatch(job)
        assert job.started.wait(WAIT)
        try:
            dispatcher.close()
            assert not job.done.is_set()
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()

    @pytest.mark.timeout(5)
    def test_refuses_jobs_after_close(self) -> None:
        """After close (idempotent) dispatch raises ServerClosedError and starts nothing."""
        dispatcher = ThreadingDispatcher()
        dispatcher.close()
        dispatcher.close()
        job = FakeJob()
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(job)
        assert (job.runs, job.closes) == ([], 0)

    @pytest.mark.timeout(10)
    def test_repr(self) -> None:
        """The repr shows running jobs, the daemon flag and the closed state."""
        dispatcher = ThreadingDispatcher(daemon=True)
        gate = threading.Event()
        job = FakeJob(gate=gate)
        dispatcher.dispatch(job)
        assert job.started.wait(WAIT)
        try:
            assert repr(dispatcher) == "<ThreadingDispatcher [1 running, daemon]>"
        finally:
            gate.set()
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert repr(dispatcher) == "<ThreadingDispatcher [0 running, daemon] closed>"


def _lines(pipe: Pipe) -> list[str]:
    os.set_blocking(pipe.r, False)
    data = b""
    try:
        while chunk := os.read(pipe.r, 4096):
            data += chunk
    except BlockingIOError:
        pass
    return data.decode().split()


class TestForkingDispatcher:
    @pytest.mark.timeout(10)
    def test_child_runs_job_parent_closes_its_copy(self, report: Pipe) -> None:
        """The job runs in a child process; the parent only closes its copy of the request."""
        dispatcher = ForkingDispatcher()
        job = ChildJob("job-1", report)
        dispatcher.dispatch(job)
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()
        assert _lines(report) == ["job-1"]
        assert (job.parent_runs, job.closes) == (0, 1)

    @pytest.mark.timeout(10)
    def test_children_are_reaped(self, report: Pipe) -> None:
        """After close no child is left, not even a zombie."""
        dispatcher = ForkingDispatcher()
        for i in range(5):
            dispatcher.dispatch(ChildJob(f"job-{i}", report))
        dispatcher.close()
        assert sorted(_lines(report)) == [f"job-{i}" for i in range(5)]
        assert dispatcher.active_children is None
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize(("result", "status"), [(True, 0), (False, 1)])
    def test_exit_status_follows_job_result(self, report: Pipe, gate: Pipe, result: bool, status: int) -> None:
        """The child exits 0 when the job succeeded and 1 when the handler raised."""
        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(ChildJob("job", report, gate=gate, result=result))
        children = dispatcher.active_children
        assert children is not None and len(children) == 1
        [pid] = children
        os.write(gate.w, b"\0")
        # Reap it ourselves to see the status; the dispatcher then forgets it.
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == status
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(20)
    def test_max_children_blocks_dispatch(self, report: Pipe, gate: Pipe) -> None:
        """With max_children=1, dispatch blocks until the running child exits."""
        dispatcher = ForkingDispatcher(max_children=1)
        dispatcher.dispatch(ChildJob("first", report, gate=gate))
        second_dispatched = threading.Event()

        def dispatch_second() -> None:
            dispatcher.dispatch(ChildJob("second", report))
            second_dispatched.set()

        helper = threading.Thread(target=dispatch_second)
        helper.start()
        try:
            assert not second_dispatched.wait(0.2), "dispatch did not wait for a free slot"
            assert _lines(report) == []
        finally:
            os.write(gate.w, b"\0")
            helper.join(WAIT)
        assert second_dispatched.is_set()
        dispatcher.close()
        assert sorted(_lines(report)) == ["first", "second"]

    @pytest.mark.timeout(10)
    def test_join_timeout_returns_running_children(self, report: Pipe, gate: Pipe) -> None:
        """join(timeout) reports the running child's job, and () once it exited."""
        dispatcher = ForkingDispatcher()
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        try:
            left = dispatcher.join(0.01)
            assert [job.client_address for job in left] == ["slow"]
        finally:
            os.write(gate.w, b"\0")
        assert dispatcher.join(WAIT) == ()
        dispatcher.close()

    @pytest.mark.timeout(10)
    def test_close_without_block_on_close_returns_at_once(self, report: Pipe, gate: Pipe) -> None:
        """close() without block_on_close leaves a running child alone; a later join reaps it."""
        dispatcher = ForkingDispatcher(block_on_close=False)
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        try:
            dispatcher.close()
            assert dispatcher.active_children is not None
        finally:
            os.write(gate.w, b"\0")
        assert dispatcher.join(WAIT) == ()
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)

    @pytest.mark.timeout(5)
    def test_refuses_jobs_after_close(self, report: Pipe) -> None:
        """After close (idempotent) dispatch raises ServerClosedError and forks nothing."""
        dispatcher = ForkingDispatcher()
        dispatcher.close()
        dispatcher.close()
        job = ChildJob("job", report)
        with pytest.raises(ServerClosedError):
            dispatcher.dispatch(job)
        assert job.closes == 0
        assert dispatcher.active_children is None

    @pytest.mark.timeout(5)
    def test_max_children_validated(self) -> None:
        """max_children below 1 is rejected."""
        with pytest.raises(ValueError, match="max_children"):
            ForkingDispatcher(max_children=0)

    @pytest.mark.timeout(10)
    def test_repr(self, report: Pipe, gate: Pipe) -> None:
        """The repr shows children against the limit and the closed state."""
        dispatcher = ForkingDispatcher(max_children=3)
        assert repr(dispatcher) == "<ForkingDispatcher [0/3 children]>"
        dispatcher.dispatch(ChildJob("slow", report, gate=gate))
        try:
            assert repr(dispatcher) == "<ForkingDispatcher [1/3 children]>"
        finally:
            os.write(gate.w, b"\0")
        dispatcher.close()
        assert repr(dispatcher) == "<ForkingDispatcher [0/3 children] closed>"
