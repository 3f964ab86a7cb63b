"""Scale-out behind a real HAProxy: examples/behind_haproxy.py, two ``serve`` instances, one
stopped with SIGTERM under a bounded load, and not a request lost.

The example does the work (private HAProxy config with health checks,
``retries`` and ``option redispatch``; the instances on 127.0.0.2 and
127.0.0.3; clients from 127.0.0.10) and reports what it saw as JSON; this
test runs it in its own process group, killed in ``finally``, and checks
the figures.  Skipped, with the reason, where haproxy is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from .test_proxy_peers import HAPROXY

EXAMPLE: Final = Path(__file__).resolve().parents[2] / "examples" / "behind_haproxy.py"
REQUESTS: Final = 600
GRACE: Final = 5.0


def run_example(script: Path, *args: str) -> tuple[int, str, str]:
    """Run the example *script* (bounded); return its status, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            # Hung: SIGTERM unwinds its finally blocks, which kill the servers and HAProxy.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    return proc.returncode, out, err


def run_scenario(dispatch: str) -> dict[str, Any]:
    """Run the example with ``--json`` and return its figures."""
    args = ["--requests", str(REQUESTS), "--clients", "8", "--grace", str(GRACE), "--dispatch", dispatch, "--json"]
    status, out, err = run_example(EXAMPLE, *args)
    assert out, f"no figures (status {status}): {err}"
    figures: dict[str, Any] = json.loads(out)
    figures["status"] = status
    return figures


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs Debian's haproxy)")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("dispatch", ["threading", "prefork"])
def test_sigterm_to_one_instance_loses_no_request(dispatch: str) -> None:
    """Under load through HAProxy, SIGTERM to one of two instances loses no request, the stopped one
    exits 0 within its grace, both served before the stop, and the handlers saw the real client throughout."""
    figures = run_scenario(dispatch)
    assert figures["sent"] == REQUESTS and figures["failed"] == 0, figures["failures"]
    before = figures["per_backend_before_stop"]
    assert before["a"] > 0 and before["b"] > 0, before
    # Each request was served exactly once (a refused connect that HAProxy retried never reached a handler).
    assert sum(figures["per_backend"].values()) == REQUESTS - figures["failed"]
    assert figures["stopped_status"] == 0 and figures["stopped_exit_seconds"] < GRACE
    assert figures["haproxy_after"] == {"a": "DOWN", "b": "UP"}
    # Every handler saw the client's own address and port, never HAProxy's.
    assert figures["real_clients_seen"] and figures["client_hosts_seen"] == ["127.0.0.10"]
    assert figures["health_checks_from"] and "127.0.0.10" not in figures["health_checks_from"]
    assert figures["status"] == (1 if figures["failed"] else 0)
