"""The command line, run as users run it: ``python -m composable_server`` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
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
TRANSPORTS: Final = ("tcp", "udp", "unix", "unix-datagram")
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
        if transport.startswith("unix"):
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

    def test_unix_dgram_is_unix_datagram(self, tmp_path: Path) -> None:
        """`--transport unix-dgram`, the older name, still serves Unix datagrams."""
        with serve(*transport_args("unix-dgram", tmp_path)) as proc:
            kind, address = proc.address()
            assert kind == "unix-dgram"
            assert ask(kind, address, b"hello\n", tmp_path) == b"HELLO\n"
            assert proc.stop() == 0

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


# -- operations: TLS, budgets, pool size, pid file, privileges, version ---------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A test-time CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.org")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "client": tmp_path / "client.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return files


def curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A real client, bounded; no proxy from the environment."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return run_process(["curl", "--silent", "--show-error", "--max-time", str(WAIT), *args, url], timeout=WAIT * 2, env=env)


needs_curl = pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="curl is not installed")


@needs_curl
class TestTLS:
    @pytest.mark.parametrize("dispatch", ["threading", "prefork"])
    def test_https_with_curl(self, dispatch: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
        """`--certfile/--keyfile` serve HTTPS that curl verifies against the test CA."""
        site = tmp_path / "site"
        site.mkdir()
        (site / "hello.txt").write_text("hello over tls\n")
        tls = ["--certfile", str(tls_files["cert"]), "--keyfile", str(tls_files["key"])]
        with serve("--port", "0", "--service", "http", "--directory", str(site), "--dispatch", dispatch, *tls) as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            result = curl(f"https://127.0.0.1:{address[1]}/hello.txt", "--cacert", str(tls_files["ca"]))
            assert result.returncode == 0, result.stderr
            assert result.stdout == "hello over tls\n"
            # Without the CA, curl refuses the certificate: it is really checked.
            assert curl(f"https://127.0.0.1:{address[1]}/hello.txt").returncode != 0
            assert proc.stop() == 0

    def test_client_certificates_required(self, tls_files: dict[str, Path], tmp_path: Path) -> None:
        """`--ca-certs` refuses a client without a certificate and serves one with a certificate from that CA."""
        (tmp_path / "x.txt").write_text("mutual\n")
        tls = ["--certfile", str(tls_files["cert"]), "--keyfile", str(tls_files["key"])]
        site = ["--service", "http", "--directory", str(tmp_path), "--dispatch", "threading"]
        with serve("--port", "0", *site, *tls, "--ca-certs", str(tls_files["ca"])) as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            url = f"https://127.0.0.1:{address[1]}/x.txt"
            assert curl(url, "--cacert", str(tls_files["ca"])).returncode != 0
            proc.wait_for("TLS handshake with .* failed")
            result = curl(url, "--cacert", str(tls_files["ca"]), "--cert", str(tls_files["client"]))
            assert result.returncode == 0, result.stderr
            assert result.stdout == "mutual\n"
            assert proc.stop() == 0

    def test_line_service_over_tls_with_openssl(self, tls_files: dict[str, Path]) -> None:
        """`openssl s_client` gets the upper-cased line over TLS."""
        with serve("--port", "0", "--certfile", str(tls_files["cert"]), "--keyfile", str(tls_files["key"])) as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            client = ["openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", str(tls_files["ca"])]
            result = run_process([*client, "-connect", f"127.0.0.1:{address[1]}"], input="over tls\n", timeout=WAIT * 2)
            assert "OVER TLS" in result.stdout, result.stderr
            assert proc.stop() == 0

    def test_unreadable_certificate_is_a_usage_error(self, tmp_path: Path) -> None:
        """A certificate file that cannot be loaded: status 2 and one line."""
        (tmp_path / "bad.pem").write_text("not a certificate\n")
        result = run_cli("serve", "--port", "0", "--certfile", str(tmp_path / "bad.pem"))
        assert result.returncode == 2
        assert_one_line_error(result, "cannot load the TLS certificate or key")


def _status_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of process *pid* (from /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class TestOperations:
    def test_version(self) -> None:
        """`--version` prints the program name and the installed version."""
        from importlib.metadata import version

        result = run_cli("--version")
        assert result.returncode == 0
        assert result.stdout.strip() == f"composable-server {version('composable-server')}"

    def test_max_line(self) -> None:
        """`--max-line 4` reads at most four bytes as the request line."""
        with serve("--port", "0", "--max-line", "4") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"hello\n") == b"HELL"
            assert proc.stop() == 0

    @pytest.mark.parametrize("dispatch", ["pool", "prefork"])
    def test_threads(self, dispatch: str) -> None:
        """`--threads 2` sizes the pool; every request of a small burst is answered."""
        with serve("--port", "0", "--dispatch", dispatch, "--threads", "2", "--backlog", "16") as proc:
            _, address = proc.address()
            for i in range(8):
                assert ask("tcp", address, b"n%d\n" % i) == b"N%d\n" % i
            assert proc.stop() == 0

    def test_first_byte_timeout(self) -> None:
        """`--first-byte-timeout`: a silent connection is closed unanswered; a talking one is served."""
        with serve("--port", "0", "--dispatch", "pool", "--first-byte-timeout", "0.3") as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            with socket.create_connection(address, timeout=WAIT) as silent:
                assert read_to_eof(silent) == b""
            proc.wait_for("first_byte limit of 0.3 s exceeded")
            assert ask("tcp", address, b"talk\n") == b"TALK\n"
            assert proc.stop() == 0

    @pytest.mark.parametrize(("option", "limit"), [("--idle-timeout", "idle"), ("--lifetime", "lifetime")])
    def test_idle_and_lifetime(self, option: str, limit: str) -> None:
        """`--idle-timeout` and `--lifetime` cut a client that stops half-way through its line."""
        with serve("--port", "0", "--dispatch", "threading", option, "0.3") as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            with socket.create_connection(address, timeout=WAIT) as sock:
                sock.sendall(b"half a li")
                assert read_to_eof(sock) == b""
            if limit == "lifetime":
                proc.wait_for("lifetime limit of 0.3 s exceeded")
            else:
                proc.wait_for("timed out")
            assert proc.stop() == 0

    @pytest.mark.parametrize("dispatch", ["sync", "prefork"])
    def test_pid_file(self, dispatch: str, tmp_path: Path) -> None:
        """`--pid-file` holds the server's pid while it runs and is removed on exit."""
        pid_file = tmp_path / "server.pid"
        with serve("--port", "0", "--dispatch", dispatch, "--pid-file", str(pid_file)) as proc:
            proc.address()
            assert pid_file.read_text() == f"{proc.proc.pid}\n"
            assert proc.stop() == 0
        assert not pid_file.exists()

    @pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch users")
    @pytest.mark.parametrize("dispatch", ["threading", "prefork"])
    def test_user_and_group(self, dispatch: str, tmp_path: Path) -> None:
        """`--user nobody --group nogroup` binds as root, then serves as nobody, in prefork workers too."""
        import grp
        import pwd

        try:
            nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        except KeyError:
            pytest.skip("no nobody/nogroup here")
        with serve("--port", "0", "--dispatch", dispatch, "--user", "nobody", "--group", "nogroup") as proc:
            _, address = proc.address()
            assert ask("tcp", address, b"who\n") == b"WHO\n"
            assert _status_ids(proc.proc.pid) == (nobody, nogroup)
            if dispatch == "prefork":
                workers = _children(proc.proc.pid)
                assert workers
                assert all(_status_ids(pid) == (nobody, nogroup) for pid in workers)
            assert proc.stop() == 0

    @pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch users")
    def test_unix_socket_handed_to_the_user(self, short_tmp_path: Path) -> None:
        """With `--user`, the Unix socket file the server created belongs to that user."""
        import pwd

        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            pytest.skip("no nobody here")
        path = short_tmp_path / "s.sock"
        with serve("--transport", "unix", "--path", str(path), "--user", "nobody") as proc:
            proc.address()
            assert path.stat().st_uid == nobody
            assert proc.stop() == 0

    @pytest.mark.parametrize(
        ("args", "needle"),
        [
            (["--user", "no-such-user-here"], "no such user"),
            (["--group", "no-such-group-here"], "no such group"),
            (["--threads", "4"], "--threads applies only to --dispatch pool and prefork"),
            (["--threads", "0"], ">= 1"),
            (["--transport", "udp", "--idle-timeout", "1"], "--idle-timeout applies only to stream transports"),
            (["--transport", "udp", "--backlog", "8"], "--backlog applies only to stream transports"),
            (["--first-byte-timeout", "0"], "> 0"),
            (["--keyfile", "k.pem"], "--keyfile needs --certfile"),
            (["--service", "http", "--max-line", "10"], "--max-line applies to the line services"),
            (["--systemd-name", "web"], "--systemd-name applies only to --systemd"),
            (["--systemd", "--port", "80"], "--port does not apply to --systemd"),
        ],
    )
    def test_bad_operation_options(self, args: list[str], needle: str) -> None:
        """A bad operations option gives status 2 and one line naming it."""
        result = run_cli("serve", *args)
        assert result.returncode == 2
        assert_one_line_error(result, needle)


# -- prefork reloads under load -------------------------------------------------------------


class Load:
    """*clients* threads, each connecting once per request, until stopped;
    every reply is checked, every failure recorded with its reason."""

    def __init__(self, address: tuple[str, int], clients: int = 16) -> None:
        self.address = address
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            payload = b"c%d r%d\n" % (client, n)
            n += 1
            try:
                with socket.create_connection(self.address, timeout=WAIT) as sock:
                    sock.sendall(payload)
                    reply = read_to_eof(sock)
                outcome = None if reply == payload.upper() else f"wrong reply {reply!r} to {payload!r}"
            except OSError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failures.append(outcome)
                self._progress.notify_all()

    def wait_for_more(self, count: int) -> None:
        """Wait (bounded) until *count* more requests have been answered."""
        with self._lock:
            target = self.ok + count
            assert self._progress.wait_for(lambda: self.ok >= target or bool(self.failures), WAIT), self.ok

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT * 2)


def _child_states(pid: int) -> dict[int, str]:
    """The supervisor's children and their states (``Z``: exited, not yet reaped)."""
    states = {}
    for child in _children(pid):
        try:
            states[child] = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue  # reaped between the two reads (ESRCH once the entry is open but the process gone)
    return states


def _workers_of(pid: int) -> set[int]:
    """The supervisor's live children."""
    return {child for child, state in _child_states(pid).items() if state != "Z"}


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition of /proc that nothing notifies us of."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.02)


class TestPreforkReload:
    @pytest.mark.timeout(120)
    def test_sighup_sigttin_sigttou_under_load_drop_nothing(self) -> None:
        """16 clients connecting per request through three SIGHUP rolling restarts,
        a SIGTTIN and a SIGTTOU: every request answered, none failed, every old
        worker gone and reaped, the worker count followed."""
        with serve("--port", "0", "--dispatch", "prefork", "--workers", "2", "--grace", "20") as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            supervisor = proc.proc.pid
            _until(lambda: len(_workers_of(supervisor)) == 2, "two workers")
            load = Load(address)
            try:
                load.wait_for_more(100)
                for _ in range(3):
                    old = _workers_of(supervisor)
                    proc.proc.send_signal(signal.SIGHUP)
                    proc.wait_for("reload: starting 2 new workers, then retiring 2")
                    _until(lambda: not old & _workers_of(supervisor), "the old generation exited")
                    _until(lambda: len(_workers_of(supervisor)) == 2, "two new workers")
                    load.wait_for_more(100)
                proc.proc.send_signal(signal.SIGTTIN)
                proc.wait_for("now 3 workers")
                _until(lambda: len(_workers_of(supervisor)) == 3, "three workers")
                load.wait_for_more(100)
                proc.proc.send_signal(signal.SIGTTOU)
                proc.wait_for("now 2 workers")
                _until(lambda: len(_workers_of(supervisor)) == 2, "two workers again")
                load.wait_for_more(100)
                # An exited worker is a zombie until the supervisor reaps it: briefly.
                _until(lambda: "Z" not in _child_states(supervisor).values(), "every exited worker reaped")
            finally:
                load.stop()
            assert load.failures == []
            assert load.ok >= 600
            assert proc.stop() == 0
        assert not any("Traceback" in line for line in proc.lines), proc.lines


class TestPreforkRecycling:
    @pytest.mark.timeout(120)
    def test_max_requests_under_load_drops_nothing(self) -> None:
        """`--max-requests 50 --max-requests-jitter 10` under 16 clients: workers
        retire again and again (far more often than the crash budget of 10 per
        minute would allow), every request is answered, and no worker is left a zombie."""
        args = ["--max-requests", "50", "--max-requests-jitter", "10", "--grace", "20"]
        with serve("--port", "0", "--dispatch", "prefork", "--workers", "2", *args) as proc:
            _, address = proc.address()
            assert isinstance(address, tuple)
            supervisor = proc.proc.pid
            load = Load(address)
            try:
                load.wait_for_more(1500)
                _until(lambda: len(_workers_of(supervisor)) == 2, "two workers")
                _until(lambda: "Z" not in _child_states(supervisor).values(), "every exited worker reaped")
            finally:
                load.stop()
            assert load.failures == []
            recycled = sum("recycling it" in line for line in proc.lines)
            assert recycled >= 15, recycled  # 1500 requests / at most 60 each, minus the last ones
            assert proc.proc.poll() is None  # not stopped by the restart budget
            assert proc.stop() == 0
        assert not any("RestartLimitError" in line or "Traceback" in line for line in proc.lines)


class TestPreforkReexec:
    @staticmethod
    def _start(pid_file: Path) -> OutputProcess:
        # Its own session: the new generation outlives the old (its parent)
        # and is killed with the group if the test fails.
        argv = [sys.executable, "-m", "composable_server", "serve", "--log-level", "debug", "--port", "0"]
        argv += ["--dispatch", "prefork", "--workers", "2", "--pid-file", str(pid_file)]
        return OutputProcess(argv, read="stderr", wait=WAIT)

    @pytest.mark.timeout(120)
    def test_sigusr2_hands_over_under_load(self, tmp_path: Path) -> None:
        """SIGUSR2 under 16 clients: a new generation starts on the same socket,
        reports ready, the old one drains and exits 0; no request fails, and
        the pid file names the new supervisor."""
        pid_file = tmp_path / "server.pid"
        proc = self._start(pid_file)
        try:
            host, _, port = proc.wait_for(LISTENING).group(2).rpartition(":")
            load = Load((host, int(port)))
            try:
                load.wait_for_more(100)
                proc.proc.send_signal(signal.SIGUSR2)
                new = int(proc.wait_for(r"started a new generation, pid (\d+)").group(1))
                proc.wait_for(rf"new generation {new} is ready: handing over")
                assert proc.proc.wait(WAIT) == 0  # the old supervisor, after its workers drained
                assert pid_file.read_text() == f"{new}\n"
                load.wait_for_more(200)  # the new generation alone now
            finally:
                load.stop()
            assert load.failures == []
            os.kill(new, signal.SIGTERM)
            proc.wait_for("stopped")
            _until(lambda: not pid_file.exists(), "the new generation removed its pid file")
        finally:
            proc.close()

    @pytest.mark.timeout(120)
    def test_failed_new_generation_leaves_the_old_serving(self, tmp_path: Path) -> None:
        """A new generation that cannot start (its pid file directory is gone) exits;
        the old one logs it and keeps serving every request."""
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        pid_file = run_dir / "server.pid"
        proc = self._start(pid_file)
        try:
            host, _, port = proc.wait_for(LISTENING).group(2).rpartition(":")
            load = Load((host, int(port)))
            try:
                load.wait_for_more(100)
                pid_file.unlink()
                run_dir.rmdir()
                proc.proc.send_signal(signal.SIGUSR2)
                new = int(proc.wait_for(r"started a new generation, pid (\d+)").group(1))
                proc.wait_for(rf"new generation {new} exited before it was ready .*this one keeps serving")
                load.wait_for_more(200)
            finally:
                load.stop()
            assert load.failures == []
            assert proc.proc.poll() is None
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.proc.wait(WAIT) == 0
        finally:
            proc.close()
