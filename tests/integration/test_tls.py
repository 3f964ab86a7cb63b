"""TLSTransport against clients that leave right after the handshake (``openssl s_time -new``).

A TLS 1.3 server sends its session tickets just after the handshake; a
client that closes without reading them leaves unread bytes in its kernel
buffer, so its close is a TCP reset, not a FIN.  Python up to 3.12 read that
reset as EOF on an ``SSLSocket`` (``suppress_ragged_eofs``); 3.13 raises
``ConnectionResetError`` (CPython gh-115627).  These tests hold the
transport to one behaviour on every version: the handler reads EOF and
nothing is reported as an error.

Certificates are made at test time with ``trustme``; no key is committed.
"""

from __future__ import annotations

import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from composable_server import (
    NoTimeout,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadPoolDispatcher,
    TLSTransport,
)

from .._process import kill_group
from ._support import CLIENT_TIMEOUT, RecordingErrorPolicy, running

LOCAL = "127.0.0.1"
# Handshake-then-close clients per test: enough that a per-connection fault
# cannot hide, few enough for a busy machine.
CLIENTS = 40


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority for this module."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A server certificate for 127.0.0.1."""
    return ca.issue_cert(LOCAL)


class Reads:
    """What the handlers read, counted so that a test can wait for them."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.finished = 0
        self._cond = threading.Condition()

    def record(self, line: bytes | None) -> None:
        with self._cond:
            if line is not None:
                self.lines.append(line)
            self.finished += 1
            self._cond.notify_all()

    def wait_finished(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.finished >= count, CLIENT_TIMEOUT * 4)


def line_reader(reads: Reads) -> type[StreamRequestHandler[Any]]:
    """Reads one line, as ``http.server`` reads its request line, and records it."""

    class ReadLine(StreamRequestHandler[Any]):
        def handle(self) -> None:
            line = None
            try:
                line = self.rfile.readline(65537)
            finally:
                reads.record(line)  # None: the read raised (the error policy has it)

    return ReadLine


@pytest.fixture
def tls_server(server_cert: trustme.LeafCert) -> Iterator[tuple[Server[socket.socket, Any], Reads, RecordingErrorPolicy]]:
    """A TLS server on a small thread pool (every worker counts), reading one line per connection."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    reads, errors = Reads(), RecordingErrorPolicy()
    server: Server[socket.socket, Any] = Server(
        transport=TLSTransport(TCPTransport((LOCAL, 0)), context),
        acceptor=StreamAcceptor(),
        handler=line_reader(reads),
        dispatcher=ThreadPoolDispatcher(2, queue_size=CLIENTS),
        error_policy=errors,
        timeout_policy=NoTimeout(),
    )
    with running(server):
        yield server, reads, errors


def handshake_and_leave(address: Any, context: ssl.SSLContext) -> None:
    """``s_time -new``: a full handshake, then close without a word and
    without reading what the server sent after the handshake."""
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as raw:
        tls = context.wrap_socket(raw, server_hostname=LOCAL)
        # The server's session tickets follow its handshake: wait until they
        # are in our kernel buffer, unread, so the close below is a reset.
        readable, _, _ = select.select([tls], [], [], CLIENT_TIMEOUT)
        assert readable, "the server sent nothing after the handshake (no TLS 1.3 session tickets?)"
        tls.close()  # no close_notify, as s_time


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.minimum_version = ssl.TLSVersion.TLSv1_3  # tickets after the handshake
    return context


class TestClientsThatLeaveAfterTheHandshake:
    @pytest.mark.timeout(60)
    def test_reset_after_handshake_reads_as_eof(
        self, ca: trustme.CA, tls_server: tuple[Server[socket.socket, Any], Reads, RecordingErrorPolicy]
    ) -> None:
        """A client that resets right after the handshake is an EOF for the handler, not an error."""
        server, reads, errors = tls_server
        context = client_context(ca)
        for _ in range(CLIENTS):
            handshake_and_leave(server.server_address, context)
        assert reads.wait_finished(CLIENTS), f"{reads.finished} of {CLIENTS} handlers finished"
        assert [exc for _, exc in errors.errors] == []
        assert reads.lines == [b""] * CLIENTS
        transport = server.transport
        assert isinstance(transport, TLSTransport)
        assert transport.statistics().completed == CLIENTS

    @pytest.mark.timeout(60, method="thread")
    @pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (s_time)")
    def test_openssl_s_time_new(
        self, tls_server: tuple[Server[socket.socket, Any], Reads, RecordingErrorPolicy]
    ) -> None:
        """``openssl s_time -new`` for one second: every handshake completes, no error is reported."""
        server, reads, errors = tls_server
        host, port = server.server_address[:2]
        proc = subprocess.Popen(
            ["openssl", "s_time", "-connect", f"{host}:{port}", "-new", "-time", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            kill_group(proc)
            proc.communicate()
        assert proc.returncode == 0, err
        report = re.search(r"(\d+) connections in \d+ real seconds", out)
        assert report is not None, out
        count = int(report[1])
        assert count > 0, out
        assert reads.wait_finished(count), f"{reads.finished} of {count} handlers finished"
        assert [exc for _, exc in errors.errors] == []
        assert set(reads.lines) <= {b""}
