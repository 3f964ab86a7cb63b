"""The command line, run as users run it: ``python -m composable_server`` in a subprocess."""

from __future__ import annotations

import os
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

# The thread method: these tests wait on children and their pipes, where a
# hang may sit in C code that the signal method cannot interrupt.
pytestmark = pytest.mark.timeout(60, method="thread")

WAIT: Final = 10.0  # seconds: every wait for the child is bounded by this
LISTENING: Final = re.compile(r"listening on (\S+) (\S+)")
TRANSPORTS: Final = ("tcp", "udp", "unix", "unix-dgram")
DISPATCH: Final = ("sync", "threading", "forking", "pool", "prefork")

ClientAddress = tuple[str, int] | str


class ServeProcess(OutputProcess):
    """A ``serve`` subprocess whose stderr (its log) is read line by line."""

    def __init__(self, args: list[str], cwd: Path | None = None) -> None:
        super().__init__([sys.executable, "-m", "composable_server", *args], read="stderr", cwd=cwd, wait=WAIT)

    def address(self) -> tuple[str, ClientAddress]:
        """Wait for the startup line; return (transport, address to connect to)."""
        match = self.wait_for(LISTENING)
        transport, text = match.group(1), match.group(2)
        if transport in ("unix", "unix-dgram"):
            return transport, text
        host, _, port = text.rpartition(":")
        return transport, (host.strip("[]"), int(port))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send *sig* and return the exit status (bounded wait)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {WAIT} s after {signal.Signals(sig).name}: {self.lines}") from None


@contextmanager
def serve(*args: str, cwd: Path | None = None) -> Iterator[ServeProcess]:
    """Run ``serve *args``; kill and reap it on the way out."""
    proc = ServeProcess(["serve", "--log-level", "debug", *args], cwd=cwd)
    try:
        yield proc
    finally:
        proc.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line to completion (bounded) and capture its output."""
    return run_process([sys.executable, "-m", "composable_server", *args], timeout=60)


def ask(transport: str, address: ClientAddress, payload: bytes, client_dir: Path | None = None) -> bytes:
    """Send one request; return the reply (stream: everything up to EOF)."""
    family = socket.AF_UNIX if transport.startswith("unix") else socket.AF_INET
    if transport in ("tcp", "unix"):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(address)
            sock.sendall(payload)
            return read_to_eof(sock)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        if family == socket.AF_UNIX:
            assert client_dir is not None
            sock.bind(str(client_dir / "client.sock"))
        sock.sendto(payload, address)
        return sock.recv(65535)


def read_to_eof(sock: socket.socket) -> bytes:
    """Read until the peer closes."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def transport_args(transport: str, directory: Path) -> list[str]:
    """The address options of *transport*: a free port, or a socket path."""
    if transport.startswith("unix"):
        return ["--transport", transport, "--path", str(directory / "s.sock")]
    return ["--transport", transport, "--port", "0"]


class TestServe:
    @pytest.mark.parametrize("dispatch", DISPATCH)
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_answers_and_stops_on_sigterm(self, transport: str, dispatch: str, tmp_path: Path) -> None:
        """Every transport and dispatch mode answers `hello` with `HELLO` and exits 0 on SIGTERM."""
        with serve(*transport_args(transport, tmp_path), "--dispatch", dispatch) as proc:
            kind, address = proc.address()
            assert kind == transport
            assert ask(transport, address, b"hello\n", tmp_path) == b"HELLO\n"
            proc.wait_for("upper request from ")
            assert proc.stop() == 0
        assert any("stopped" in line for line in proc.lines)

    def test_default_service_and_sigint(self) -> None:
        """SIGINT stops the server gracefully with status 0, like SIGTERM."""
        with serve("--port", "0") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"mixed Case\n") == b"MIXED CASE\n"
            assert proc.stop(signal.SIGINT) == 0
        assert any("SIGINT: stopping" in line for line in proc.lines)

    def test_echo_service(self) -> None:
        """`--service echo` replies with the line unchanged."""
        with serve("--port", "0", "--service", "echo") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"Hello\n") == b"Hello\n"
            assert proc.stop() == 0

    def test_ipv6_host(self) -> None:
        """`--host ::1` serves over IPv6 and prints a bracketed address."""
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        with serve("--host", "::1", "--port", "0") as proc:
            match = proc.wait_for(LISTENING)
            assert match.group(2).startswith("[::1]:")
            port = int(match.group(2).rpartition(":")[2])
            with socket.create_connection(("::1", port), timeout=WAIT) as sock:
                sock.sendall(b"six\n")
                assert read_to_eof(sock) == b"SIX\n"
            assert proc.stop() == 0

    @pytest.mark.parametrize("transport", ["tcp", "unix"])
    def test_http_service_serves_directory(self, transport: str, tmp_path: Path) -> None:
        """`--service http` serves the files of `--directory` with SimpleHTTPRequestHandler."""
        site = tmp_path / "site"
        site.mkdir()
        (site / "hello.txt").write_text("hello over http\n")
        with serve(*transport_args(transport, tmp_path), "--service", "http", "--directory", str(site)) as proc:
            _, address = proc.address()
            if transport == "tcp":
                assert isinstance(address, tuple)
                url = f"http://{address[0]}:{address[1]}/hello.txt"
                with urllib.request.urlopen(url, timeout=WAIT) as response:
                    assert response.status == 200
                    assert response.read() == b"hello over http\n"
            else:
                reply = ask("unix", address, b"GET /hello.txt HTTP/1.0\r\n\r\n")
                assert reply.startswith(b"HTTP/1.0 200")
                assert reply.endswith(b"\r\n\r\nhello over http\n")
            proc.wait_for("GET /hello.txt")
            assert proc.stop() == 0


class TestGracefulStop:
    @pytest.mark.parametrize("dispatch", DISPATCH)
    def test_sigterm_lets_request_in_flight_finish(self, dispatch: str) -> None:
        """A request in flight when SIGTERM arrives is served to the end, then the process exits 0."""
        with serve("--port", "0", "--dispatch", dispatch, "--grace", "20") as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            with socket.create_connection(address, timeout=WAIT) as sock:
                sock.sendall(b"in fli")
                proc.wait_for("upper request from")  # the handler is reading
                proc.proc.send_signal(signal.SIGTERM)
                proc.wait_for("SIGTERM: stopping")
                sock.sendall(b"ght\n")
                assert read_to_eof(sock) == b"IN FLIGHT\n"
            assert proc.proc.wait(WAIT) == 0
        assert not any("grace period over" in line for line in proc.lines)

    @pytest.mark.parametrize("dispatch", DISPATCH)
    def test_grace_bounds_the_wait(self, dispatch: str) -> None:
        """A request that outlives --grace is cut at the deadline and the process still exits 0."""
        with serve("--port", "0", "--dispatch", dispatch, "--grace", "0.3") as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            with socket.create_connection(address, timeout=WAIT) as sock:
                sock.sendall(b"never finished")
                proc.wait_for("upper request from")
                assert proc.stop() == 0
                assert read_to_eof(sock) in (b"", b"NEVER FINISHED")  # cut: EOF, maybe after a partial reply
        assert any("grace period over" in line for line in proc.lines)


    @pytest.mark.parametrize("dispatch", ["sync", "threading"])
    def test_second_signal_cuts_at_once(self, dispatch: str) -> None:
        """A second signal during the grace period cuts the requests in flight now and exits 1."""
        with serve("--port", "0", "--dispatch", dispatch, "--grace", "60") as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            with socket.create_connection(address, timeout=WAIT) as sock:
                sock.sendall(b"slow")
                proc.wait_for("upper request from")
                proc.proc.send_signal(signal.SIGTERM)
                proc.wait_for("SIGTERM: stopping")
                assert proc.stop(signal.SIGINT) == 1  # well before the 60 s grace
                assert read_to_eof(sock) in (b"", b"SLOW")
        assert any("second signal" in line for line in proc.lines)


class TestAdmission:
    def test_allow_refuses_other_networks(self) -> None:
        """`--allow 10.0.0.0/8` closes a 127.0.0.1 client's connection unanswered."""
        with serve("--port", "0", "--allow", "10.0.0.0/8") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"hello\n") == b""
            proc.wait_for("refused 127.0.0.1: in no allowed network")
            assert proc.stop() == 0

    def test_allow_serves_its_network(self) -> None:
        """`--allow 127.0.0.0/8` (with another network) serves a 127.0.0.1 client."""
        with serve("--port", "0", "--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"hello\n") == b"HELLO\n"
            assert proc.stop() == 0

    def test_deny_refuses_its_network(self) -> None:
        """`--deny 127.0.0.1` refuses a loopback client."""
        with serve("--port", "0", "--deny", "127.0.0.1") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"hello\n") == b""
            assert proc.stop() == 0


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A non-zero status and exactly one stderr line naming the problem, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


class TestErrors:
    def test_port_in_use(self) -> None:
        """A taken port gives status 1 and one line naming the address and the reason."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = run_cli("serve", "--port", str(port))
        assert result.returncode == 1
        assert_one_line_error(result, str(port), "Address already in use")

    def test_bad_cidr(self) -> None:
        """A bad CIDR gives status 2 and one line naming the string."""
        result = run_cli("serve", "--allow", "127.0.0.0/8", "--allow", "10.0.0.300/8")
        assert result.returncode == 2
        assert_one_line_error(result, "'10.0.0.300/8'")

    def test_path_too_long(self, tmp_path: Path) -> None:
        """A Unix path longer than sun_path gives one line with the limit."""
        path = str(tmp_path / ("x" * 120))
        result = run_cli("serve", "--transport", "unix", "--path", path)
        assert_one_line_error(result, "limit is 107")

    def test_http_on_datagrams_is_a_usage_error(self) -> None:
        """`--service http` on a datagram transport is refused with one line."""
        result = run_cli("serve", "--transport", "udp", "--service", "http")
        assert result.returncode == 2
        assert_one_line_error(result, "--service http needs a stream transport")

    @pytest.mark.parametrize(
        ("args", "needle"),
        [
            (["--port", "70000"], "0..65535"),
            (["--transport", "unix"], "needs --path"),
            (["--path", "/tmp/x.sock"], "--path applies to the unix transports"),
            (["--transport", "sctp"], "invalid choice"),
            (["--grace", "-1"], ">= 0"),
            (["--service", "echo", "--directory", "."], "--directory applies only"),
        ],
    )
    def test_bad_options(self, args: list[str], needle: str) -> None:
        """A bad option gives status 2 and one line naming it."""
        result = run_cli("serve", *args)
        assert result.returncode == 2
        assert_one_line_error(result, needle)

    def test_no_command(self) -> None:
        """Without a command the usage is printed and the status is 2."""
        result = run_cli()
        assert result.returncode == 2
        assert "serve" in result.stderr and "demo" in result.stderr


class TestHelpAndScript:
    def test_help_lists_options_and_examples(self) -> None:
        """`serve --help` documents every option and shows examples."""
        result = run_cli("serve", "--help")
        assert result.returncode == 0
        options = ("--transport", "--host", "--port", "--path", "--dispatch", "--service", "--directory")
        for option in (*options, "--allow", "--log-level", "--grace", "examples:"):
            assert option in result.stdout

    def test_console_script(self) -> None:
        """The installed `composable-server` script runs the same command line."""
        script = Path(sys.executable).parent / "composable-server"
        if not script.exists():
            pytest.skip("the console script is not installed next to this interpreter")
        result = run_process([str(script), "--help"], timeout=60)
        assert result.returncode == 0
        assert "serve" in result.stdout and "demo" in result.stdout


class TestDemo:
    def test_demo_runs_every_kind(self) -> None:
        """`demo` exits 0 and prints a row with every reply correct for every server kind."""
        result = run_cli("demo")
        assert result.returncode == 0, result.stdout + result.stderr
        rows = {line.split("  ")[0].strip(): line.split() for line in result.stdout.splitlines()}
        for transport in TRANSPORTS:
            for dispatch in ("sync", "threading", "forking"):  # the classic kinds, each with its stdlib twin
                row = rows[f"{transport} {dispatch}"]
                assert row[3:5] == ["3", "3"], row  # kind (2 words), stdlib name, sent, correct
        assert "12 server kinds, 36/36 replies correct: OK" in result.stdout


def test_unix_socket_file_is_removed(tmp_path: Path) -> None:
    """A stopped Unix server removes its socket file."""
    with serve("--transport", "unix", "--path", str(tmp_path / "s.sock")) as proc:
        proc.address()
        assert (tmp_path / "s.sock").exists()
        assert proc.stop() == 0
    assert not os.path.exists(tmp_path / "s.sock")
