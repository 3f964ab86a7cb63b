"""composable_server._fork: the fork plumbing of the forking dispatcher and prefork."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator

import pytest

from composable_server import _fork

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def children() -> Iterator[list[int]]:
    """Pids of the children a test forks; killed and reaped on the way out."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            _fork.kill(pid, signal.SIGKILL)
        _fork.reap(pids, blocking=True)


def _spawn(body: Callable[[], int], pids: list[int]) -> int:
    pid = _fork.fork()
    if pid == 0:
        _fork.run_child(body)
    pids.append(pid)
    return pid


class TestRunChild:
    def test_exit_status_is_the_bodys(self, children: list[int]) -> None:
        """The child leaves with the status its body returned."""
        pid = _spawn(lambda: 7, children)
        _, status = os.waitpid(pid, 0)
        children.remove(pid)
        assert os.waitstatus_to_exitcode(status) == 7

    def test_an_exception_is_printed_and_gives_status_1(self, children: list[int]) -> None:
        """An exception from the body is printed to stderr (the child's), and the status is 1."""
        read_end, write_end = os.pipe()

        def body() -> int:
            sys.stderr = open(write_end, "w", closefd=False)  # pytest captures the real one
            raise ValueError("child broke")

        pid = _spawn(body, children)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        children.remove(pid)
        with os.fdopen(read_end, "rb") as stderr:
            printed = stderr.read()
        assert os.waitstatus_to_exitcode(status) == 1
        assert b"ValueError: child broke" in printed


class TestReap:
    def test_reaps_only_the_given_pids(self, children: list[int]) -> None:
        """reap() reports the exited children it was given and leaves the others alone."""
        done = _spawn(lambda: 0, children)
        other = _spawn(lambda: 0, children)
        _fork.wait_any([done], None)
        assert _fork.reap([done]) == [done]
        children.remove(done)
        # The other child was not waited for: it is still ours to reap.
        assert _fork.reap([other], blocking=True) == [other]
        children.remove(other)

    def test_a_pid_that_is_no_longer_ours_counts_as_exited(self, children: list[int]) -> None:
        """A pid already reaped elsewhere (ECHILD) is reported, so the caller forgets it."""
        pid = _spawn(lambda: 0, children)
        os.waitpid(pid, 0)
        children.remove(pid)
        assert _fork.reap([pid]) == [pid]

    def test_wait_any_returns_at_the_timeout(self, children: list[int]) -> None:
        """wait_any() with a running child returns after the timeout, reaping nothing."""
        read_end, write_end = os.pipe()

        def body() -> int:
            os.read(read_end, 1)  # until the parent lets go
            return 0

        pid = _spawn(body, children)
        try:
            _fork.wait_any([pid], 0.05)
            assert _fork.reap([pid]) == []
        finally:
            os.write(write_end, b"x")
            os.close(read_end)
            os.close(write_end)
