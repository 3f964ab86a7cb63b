"""The helpers that start processes for the tests: none of them can hang the run."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Final, cast

import pytest

from .._process import run_process
from ._support import OutputProcess

# The thread method: a hang here would sit in C (a pipe, a buffered stream's
# lock), where the signal method cannot interrupt it.
pytestmark = pytest.mark.timeout(30, method="thread")

WAIT: Final = 3.0

# A child that leaves a grandchild holding its stdout and stderr, then waits.
LEAVES_A_GRANDCHILD: Final = textwrap.dedent(
    """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print("grandchild", grandchild.pid, flush=True)
    time.sleep(60)
    """
)


def _gone(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000.0))


class TestOutputProcess:
    def test_close_returns_while_a_grandchild_holds_the_pipe(self) -> None:
        """close() ends the child's whole group, a grandchild holding the pipe
        included, and returns at once instead of blocking on the pipe its
        reader thread is reading."""
        proc = OutputProcess([sys.executable, "-c", LEAVES_A_GRANDCHILD], read="stdout", wait=WAIT)
        closer = threading.Thread(target=proc.close, daemon=True)
        with contextlib.ExitStack() as stack:
            stack.callback(proc.proc.kill)
            grandchild = int(proc.wait_for(r"grandchild (\d+)").group(1))
            pidfd = os.pidfd_open(grandchild)
            stack.callback(os.close, pidfd)
            # Whatever happens, the grandchild dies and the closer ends with the test.
            stack.callback(closer.join, WAIT)
            stack.callback(_kill, grandchild)
            started = time.monotonic()
            closer.start()
            closer.join(2 * WAIT)
            assert not closer.is_alive(), "close() blocked on the pipe its reader thread is reading"
            assert time.monotonic() - started < WAIT, "close() waited for its reader's timeout"
            assert _gone(pidfd, WAIT), "the grandchild outlived close()"

    def test_close_kills_a_child_that_ignores_sigterm(self) -> None:
        """close() on a child still running kills it and reaps it."""
        proc = OutputProcess(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "print('up', flush=True); time.sleep(60)"],
            read="stdout",
            wait=WAIT,
        )
        try:
            proc.wait_for("up")
        finally:
            proc.close()
        assert proc.proc.returncode is not None and proc.proc.returncode < 0


class TestRunProcess:
    def test_timeout_kills_the_group(self) -> None:
        """At the deadline run_process kills the whole group, so a grandchild
        holding the pipes cannot keep it waiting; it raises TimeoutExpired."""
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired) as raised:
            run_process([sys.executable, "-c", LEAVES_A_GRANDCHILD], timeout=WAIT)
        assert time.monotonic() - started < 3 * WAIT
        out = cast(object, raised.value.stdout)  # typeshed says bytes; text mode gives str
        assert isinstance(out, str) and out.startswith("grandchild ")
        grandchild = int(out.split()[1])
        deadline = time.monotonic() + WAIT
        while not _dead(grandchild):
            assert time.monotonic() < deadline, "the grandchild outlived run_process"
            time.sleep(0.01)

    def test_returns_output_and_status(self) -> None:
        """run_process captures stdout, stderr and the exit status."""
        result = run_process(
            [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
            timeout=30,
        )
        assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _dead(pid: int) -> bool:
    """True if *pid* has exited: gone, or a zombie its new parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")
