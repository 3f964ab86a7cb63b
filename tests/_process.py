"""Processes that tests start: each in its own session, its whole group killed on the way out.

A test's child may fork (prefork workers, forking dispatch, a shell), and a
grandchild that outlives the child keeps its pipes open: killing only the
child, then reading its pipes to EOF, would wait for the grandchild forever.
So every process a test starts leads a new session (``start_new_session``),
and what the test leaves behind is killed as a group (``killpg``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ("kill_group", "run_process")


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL every process of *proc*'s group (its session leader's pid); never raises."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # all gone (PermissionError: the pgid was reused by a foreign group, on macOS)


def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* to completion in its own session and capture its output (text).

    As ``subprocess.run(capture_output=True, text=True, timeout=...)`` (stdin:
    *input*, else ``/dev/null``), except that at the
    deadline, and on the way out whatever happens, the whole process group is
    killed, so a grandchild holding the pipes cannot make the wait endless.

    Raises:
        subprocess.TimeoutExpired: *argv* ran longer than *timeout* seconds.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    with proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            # Every writer of the pipes is in the group: they reach EOF now.
            out, err = proc.communicate(timeout=timeout)
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        finally:
            kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
