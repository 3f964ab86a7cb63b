"""Every program in examples/ runs end to end: servers as subprocesses, with their clients."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest

from .._process import run_process
from ._support import OutputProcess
from .test_proxy_peers import HAPROXY
from .test_scaleout import run_example

# The thread method: these tests wait on children and their pipes, where a
# hang may sit in C code that the signal method cannot interrupt.
pytestmark = pytest.mark.timeout(60, method="thread")

EXAMPLES: Final = Path(__file__).resolve().parents[2] / "examples"
WAIT: Final = 10.0  # seconds: every wait for a child is bounded by this
ADDRESS: Final = re.compile(r"(?:listening on |at http://)([\d.]+):(\d+)")


class Background(OutputProcess):
    """An example server in a subprocess; stdout is read line by line."""

    def __init__(self, script: str, *args: str) -> None:
        super().__init__([sys.executable, str(EXAMPLES / script), *args], read="stdout", wait=WAIT)

    def address(self) -> tuple[str, int]:
        """Wait (bounded) for the line naming the bound address."""
        match = self.wait_for(ADDRESS)
        return match.group(1), int(match.group(2))

    def stop(self) -> tuple[int, str]:
        """SIGTERM; return the exit status and everything printed."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return status, "".join(self.lines)


@contextmanager
def background(script: str, *args: str) -> Iterator[Background]:
    """Run an example server; kill and reap it on the way out."""
    server = Background(script, *args)
    try:
        yield server
    finally:
        server.close()


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an example to completion (bounded); fail on a non-zero status."""
    result = run_process([sys.executable, str(EXAMPLES / script), *args], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_tcp_server_and_client() -> None:
    """The TCP client's words come back upper-cased from the TCP server."""
    with background("tcp_server.py", "--port", "0") as server:
        _, port = server.address()
        result = run("tcp_client.py", "--port", str(port), "hello", "world")
        assert result.stdout == "Sent:     hello world\nReceived: HELLO WORLD\n"
        status, output = server.stop()
    assert status == 0
    assert "127.0.0.1 wrote: b'hello world'" in output
    assert output.endswith("stopped\n")


def test_udp_server_and_client() -> None:
    """The UDP client's datagram comes back upper-cased from the UDP server."""
    with background("udp_server.py", "--port", "0") as server:
        _, port = server.address()
        result = run("udp_client.py", "--port", str(port), "hello", "udp")
        assert result.stdout == "Sent:     hello udp\nReceived: HELLO UDP\n"
        status, output = server.stop()
    assert status == 0
    assert "127.0.0.1 wrote: b'hello udp'" in output


def test_threaded_server_serves_three_clients() -> None:
    """The threaded example answers its three clients, each from its own thread."""
    lines = run("threaded_tcp.py").stdout.splitlines()
    assert lines[0] == "Server loop running in thread: serve_forever"
    received = [re.fullmatch(r"Received: (.+): Hello World (\d)", line) for line in lines[1:]]
    assert all(received) and len(received) == 3, lines
    assert [m.group(2) for m in received if m] == ["1", "2", "3"]
    assert len({m.group(1) for m in received if m}) == 3  # three different threads


def test_compose_policies() -> None:
    """The custom Verifier refuses during maintenance and the custom ErrorPolicy counts the error."""
    assert run("compose_policies.py").stdout == (
        "'hello' -> 'HELLO'\n"
        "'boom' -> ''\n"
        "maintenance on\n"
        "'hello' -> ''\n"
        "errors: 1 (ValueError: boom)\n"
    )


def test_compose_threaded_tcp() -> None:
    """The composed threaded TCP server answers every line and exits 0 on SIGTERM."""
    with background("compose_threaded_tcp.py", "--port", "0") as server:
        address = server.address()
        with socket.create_connection(address, timeout=WAIT) as sock:
            sock.sendall(b"one\ntwo\n")
            sock.shutdown(socket.SHUT_WR)
            reply = b"".join(iter(lambda: sock.recv(1024), b""))
        assert reply == b"ONE\nTWO\n"
        status, _ = server.stop()
    assert status == 0


def test_http_file_server(tmp_path: Path) -> None:
    """The HTTP example serves a file of its --directory."""
    (tmp_path / "index.txt").write_text("composable\n")
    with background("http_file_server.py", "--port", "0", "--directory", str(tmp_path)) as server:
        host, port = server.address()
        with urllib.request.urlopen(f"http://{host}:{port}/index.txt", timeout=WAIT) as response:
            assert response.status == 200
            assert response.read() == b"composable\n"
        status, output = server.stop()
    assert status == 0
    assert output.startswith(f"serving {tmp_path} at http://127.0.0.1:")


def test_rate_limit_verifier_demo() -> None:
    """The rate-limit example serves a burst of three and refuses the rest."""
    assert run("rate_limit_verifier.py").stdout == (
        "request 1: 'ONE'\n"
        "request 2: 'TWO'\n"
        "request 3: 'THREE'\n"
        "request 4: refused\n"
        "request 5: refused\n"
        "served 3 of 5\n"
    )


def test_rate_limit_verifier_unit_tests() -> None:
    """The example's own unit tests (composable_server.testing, no sockets) pass."""
    result = run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_rate_limit_verifier.py"],
        timeout=60,
        cwd=EXAMPLES,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs Debian's haproxy)")
@pytest.mark.timeout(120)
def test_behind_haproxy() -> None:
    """Two instances behind HAProxy, one stopped under load: the summary reports no failure and the real
    client (the figures are checked in test_scaleout)."""
    status, out, err = run_example(EXAMPLES / "behind_haproxy.py", "--requests", "200", "--clients", "4")
    assert status == 0, out + err
    assert "requests sent: 200 " in out and ", failed: 0\n" in out, out + err
    assert "client addresses the handlers saw: ['127.0.0.10'] (real: True)" in out, out + err
    assert "stopped instance: status 0 after" in out, out + err


def test_every_example_is_tested() -> None:
    """Each program in examples/ is run by a test in this module."""
    source = Path(__file__).read_text()
    for path in EXAMPLES.glob("*.py"):
        assert f'"{path.name}"' in source, f"{path.name} is not run by any test"
