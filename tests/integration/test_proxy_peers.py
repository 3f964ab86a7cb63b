"""The PROXY protocol layer behind real senders: a private HAProxy 2.6 (v2
with CRC32C and UNIQUE_ID TLVs, LOCAL health checks; terminating TLS, with
the ALPN, AUTHORITY and SSL TLVs) and a private nginx stream proxy (v1).

Each test starts its own proxy on free loopback ports, in its own process
group, and kills the group in ``finally``.  Clients connect from 127.0.0.2,
so the address the handler reports can only come from the header (the
proxy itself connects from 127.0.0.1).  Skipped, with the reason, where the
binary is missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from composable_server import StreamAcceptor, StreamRequestHandler, TCPTransport, ThreadingDispatcher
from composable_server.policies import NoTimeout
from composable_server.exceptions import ProxyProtocolError
from composable_server.proxy import CRC32C, Command, ProxyHeader, ProxyMode, ProxyProtocolTransport, proxy_header_of

from ._support import CLIENT_TIMEOUT, RecordingErrorPolicy, ipv6_available, read_to_eof, running
from .test_proxy import ProxiedServer

LOCAL = "127.0.0.1"
CLIENT_HOST = "127.0.0.2"  # loopback too on Linux, and not the proxy's address
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
START_TIMEOUT = 15.0


def free_port(host: str = LOCAL) -> int:
    """A loopback port that was free a moment ago (for a proxy's config file)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def process_group(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run *argv* in a new process group; on exit, kill the whole group and reap it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, process_group=0)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        # Workers (nginx) die with their master; anything left in the group is killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class Served:
    """What the handler saw, per request, for the test to wait on."""

    def __init__(self) -> None:
        self.requests: list[tuple[object, Command | None, bytes | None, bytes, bool]] = []
        self._cond = threading.Condition()

    def add(self, entry: tuple[object, Command | None, bytes | None, bytes, bool]) -> None:
        with self._cond:
            self.requests.append(entry)
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = START_TIMEOUT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(predicate(e) for e in self.requests), timeout)


def handler_for(served: Served) -> type[StreamRequestHandler[Any]]:
    class Who(StreamRequestHandler[Any]):
        """Answer one line with ``client_address|unique id|LINE``; record what was seen."""

        def handle(self) -> None:
            line = self.read_line().rstrip(b"\n")
            header = proxy_header_of(self.request)
            command = None if header is None else header.command
            unique = None if header is None else header.unique_id
            checksummed = header is not None and header.find(CRC32C) is not None
            served.add((self.client_address, command, unique, line, checksummed))
            if line:
                self.wfile.write(f"{self.client_address!r}|".encode() + (unique or b"-") + b"|" + line.upper() + b"\n")

    return Who


def backend(mode: ProxyMode, served: Served, errors: RecordingErrorPolicy, handler: Any = None) -> ProxiedServer:
    return ProxiedServer(
        transport=ProxyProtocolTransport(TCPTransport((LOCAL, 0)), mode=mode),
        acceptor=StreamAcceptor(),
        handler=handler_for(served) if handler is None else handler,
        dispatcher=ThreadingDispatcher(daemon=True),
        error_policy=errors,
        timeout_policy=NoTimeout(),
    )


def request_from(host: str, port: int, line: bytes, target: str = LOCAL) -> tuple[tuple[Any, ...], bytes]:
    """Send *line* from *host* (any free port) to *target* and return (our address, the reply)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.bind((host, 0))
        sock.connect((target, port))
        me: tuple[Any, ...] = sock.getsockname()
        sock.sendall(line + b"\n")
        return me, read_to_eof(sock)


def wait_started(ready: Any, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (bounded) until *ready()* holds, failing early with the log if the proxy exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the proxy exited with {proc.returncode}: {log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy did not start: {log.read_text(errors='replace')}")
        time.sleep(0.02)


def proxy_errors(errors: RecordingErrorPolicy) -> list[BaseException]:
    return [exc for _, exc in errors.errors if isinstance(exc, ProxyProtocolError)]


# -- HAProxy ------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")


def haproxy_config(frontend: int, server: tuple[str, int], stats: Path, tls: str = "") -> str:
    host, port = server
    return f"""
global
    stats socket {stats} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 2s

frontend front
    bind {LOCAL}:{frontend}
    unique-id-format %ci:%cp_%fi:%fp_%rt
    default_backend pool

backend pool
    # No explicit "tcp-check connect": that one would skip check-send-proxy
    # (it takes its own options), and the strict receiver refuses the check.
    option tcp-check
    tcp-check send "ping\\n"
    tcp-check expect string PING
    server app {host}:{port} send-proxy-v2 proxy-v2-options unique-id,crc32c check check-send-proxy inter 200ms
{tls}"""


def haproxy_stat(stats: Path, proxy: str, server: str) -> dict[str, str]:
    """One row of HAProxy's ``show stat`` CSV, by column name."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        text = read_to_eof(sock).decode()
    names = text.splitlines()[0].lstrip("# ").split(",")
    for line in text.splitlines()[1:]:
        row = dict(zip(names, line.split(",")))
        if row.get("pxname") == proxy and row.get("svname") == server:
            return row
    raise AssertionError(f"no {proxy}/{server} in {text!r}")


@contextlib.contextmanager
def haproxy(server: tuple[str, int], served: Served, tmp_path: Path, tls: str = "") -> Iterator[tuple[int, Path]]:
    """A private HAProxy in front of *server*; started once its first health check was served
    (the frontend is bound before checks begin)."""
    assert HAPROXY is not None
    frontend = free_port()
    stats = tmp_path / "haproxy.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(frontend, server, stats, tls))
    log = tmp_path / "haproxy.log"
    with process_group([HAPROXY, "-f", str(cfg), "-db"], log) as proc:
        wait_started(lambda: served.wait_for(lambda e: e[1] is Command.LOCAL, 0.05), proc, log)
        yield frontend, stats


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs Debian's haproxy)")
class TestHAProxy:
    @pytest.mark.timeout(40)
    def test_handler_sees_the_client_and_its_unique_id(self, tmp_path: Path) -> None:
        """Through HAProxy (v2, CRC32C, UNIQUE_ID), the handler sees the client's own address and port and the ID."""
        served, errors = Served(), RecordingErrorPolicy()
        with running(backend("v2", served, errors)) as server:
            with haproxy(server.server_address, served, tmp_path) as (frontend, _):
                for n in range(3):
                    me, reply = request_from(CLIENT_HOST, frontend, b"hello %d" % n)
                    unique = f"{me[0]}:{me[1]}_{LOCAL}:{frontend}_".encode()
                    assert reply.startswith(f"{me!r}|".encode() + unique), reply
                    assert reply.endswith(b"|HELLO %d\n" % n)
        assert not proxy_errors(errors)

    @pytest.mark.timeout(40)
    def test_local_health_checks_with_crc32c_are_served(self, tmp_path: Path) -> None:
        """HAProxy's health checks (LOCAL with a CRC32C TLV) are served with the real endpoints and pass."""
        served, errors = Served(), RecordingErrorPolicy()
        with running(backend("v2", served, errors)) as server:
            transport = server.transport
            assert isinstance(transport, ProxyProtocolTransport)
            with haproxy(server.server_address, served, tmp_path) as (_, stats):
                # A check was served: LOCAL header, the proxy's own address, our answer read by HAProxy.
                assert served.wait_for(lambda e: e[1] is Command.LOCAL and e[3] == b"ping")
                deadline = time.monotonic() + START_TIMEOUT
                while (row := haproxy_stat(stats, "pool", "app"))["check_status"] != "L7OK":
                    assert time.monotonic() < deadline, f"the check never passed: {row}"
                    time.sleep(0.05)
                assert row["status"] == "UP"
        local = [e for e in served.requests if e[1] is Command.LOCAL]
        # The real endpoint (HAProxy's own address), and a CRC32C TLV verified on each.
        assert all(isinstance(e[0], tuple) and e[0][0] == LOCAL and e[4] for e in local)
        assert transport.statistics().local >= 1 and transport.statistics().refused == 0


TLS_FRONTEND = """
frontend tls
    bind {LOCAL}:{port} ssl crt {crt} ca-file {ca} verify optional alpn h2,http/1.1
    default_backend tls_pool

backend tls_pool
    server app {host}:{server_port} send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c
"""


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs Debian's haproxy)")
class TestHAProxyTLS:
    @pytest.mark.timeout(40)
    def test_tls_details_arrive_as_typed_tlvs(self, tmp_path: Path) -> None:
        """HAProxy terminating TLS sends ALPN, AUTHORITY and the SSL TLV (version, CN, cipher, algorithms) typed."""
        ca = trustme.CA()
        crt, ca_file = tmp_path / "server.pem", tmp_path / "ca.pem"
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(crt))
        ca.cert_pem.write_to_path(str(ca_file))
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        ca.issue_cert("client.example", common_name="Zoë Client").configure_cert(client_ctx)
        client_ctx.set_alpn_protocols(["h2"])
        headers: list[ProxyHeader] = []
        served, errors = Served(), RecordingErrorPolicy()

        class Record(StreamRequestHandler[Any]):
            def handle(self) -> None:
                header = proxy_header_of(self.request)
                line = self.read_line()
                if header is not None and header.command is Command.PROXY:
                    headers.append(header)
                    self.wfile.write(line.upper())
                else:  # a health check
                    served.add((self.client_address, None if header is None else header.command, None, line, False))
                    self.wfile.write(line.upper())

        with running(backend("v2", served, errors, Record)) as server:
            port = free_port()
            host, server_port = server.server_address
            tls = TLS_FRONTEND.format(LOCAL=LOCAL, port=port, crt=crt, ca=ca_file, host=host, server_port=server_port)
            with haproxy(server.server_address, served, tmp_path, tls):
                with socket.create_connection((LOCAL, port), timeout=CLIENT_TIMEOUT) as raw:
                    with client_ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                        conn.sendall(b"over tls\n")
                        assert read_to_eof(conn) == b"OVER TLS\n"
                        version, cipher = conn.version(), conn.cipher()
        (header,) = headers
        assert header.alpn == b"h2"
        assert header.authority == "localhost"
        assert header.find(CRC32C) is not None
        info = header.ssl
        assert info is not None and info.ssl and info.cert_in_connection and info.verified
        assert info.version == version and cipher is not None and info.cipher == cipher[0]
        assert info.cn == "Zoë Client"
        assert (info.sig_alg, info.key_alg) == ("ecdsa-with-SHA256", "EC256")  # trustme's ECDSA P-256 leaf
        assert not proxy_errors(errors)


# -- nginx --------------------------------------------------------------------------

NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")


def nginx_config(frontend: str, server: tuple[str, int], prefix: Path) -> str:
    host, port = server
    return f"""
load_module {NGINX_STREAM_MODULE};
pid {prefix}/nginx.pid;
worker_processes 1;
error_log stderr info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen {frontend};
        proxy_pass {host}:{port};
        proxy_protocol on;
    }}
}}
"""


@pytest.mark.skipif(
    NGINX is None or not NGINX_STREAM_MODULE.exists(),
    reason="nginx with the stream module is not installed (.ci/run installs nginx and libnginx-mod-stream)",
)
class TestNginx:
    @pytest.mark.timeout(40)
    @pytest.mark.parametrize(
        ("mode", "client"),
        [("v1", CLIENT_HOST), ("any", CLIENT_HOST), pytest.param("v1", "::1", id="v1-ipv6-client")],
    )
    def test_handler_sees_the_client(self, mode: ProxyMode, client: str, tmp_path: Path) -> None:
        """Through nginx's stream proxy (``proxy_protocol on``: v1), the handler sees the client's own address and
        port (an IPv6 client through an IPv4 hop arrives as TCP6)."""
        assert NGINX is not None
        if ":" in client and not ipv6_available():
            pytest.skip("no IPv6 loopback")
        served, errors = Served(), RecordingErrorPolicy()
        with running(backend(mode, served, errors)) as server:
            target = "::1" if ":" in client else LOCAL
            port = free_port(target)
            cfg = tmp_path / "nginx.conf"
            listen = f"[{target}]:{port}" if ":" in target else f"{target}:{port}"
            cfg.write_text(nginx_config(listen, server.server_address, tmp_path))
            log = tmp_path / "nginx.log"
            argv = [NGINX, "-c", str(cfg), "-p", str(tmp_path), "-e", "stderr", "-g", "daemon off;"]
            with process_group(argv, log) as proc:
                # nginx writes its pid file after it has opened its listening sockets.
                wait_started((tmp_path / "nginx.pid").exists, proc, log)
                for n in range(3):
                    me, reply = request_from(client, port, b"hi %d" % n, target)
                    assert reply == f"{me!r}|-|HI {n}\n".encode(), log.read_text(errors="replace")
        assert [e[1] for e in served.requests] == [Command.PROXY] * 3
        assert not proxy_errors(errors)
