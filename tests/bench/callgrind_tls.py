"""Where a TLS handshake's server time goes: instruction counts under callgrind (issue 18).

    python -m tests.bench.callgrind_tls [--kinds stdlib compat native native-no-timeout] [--small N] [--large N] [--top K]
                                        [--persistent]

Instruction counts do not depend on other load on the machine.  Each kind
serves the benchmark's ``https-min`` server (:mod:`tests.bench.bench_http`)
in one process, ``serve_forever()`` in a thread:

``stdlib``
    ``http.server.ThreadingHTTPServer`` wrapping each accepted socket in
    ``get_request`` (the usual way: the handshake runs in the accept loop);
``compat``
    the same on ``composable_server.compat`` (the drop-in swap);
``native``
    the native ``Server`` over ``TLSTransport`` with the benchmark's thread
    pool (the handshake runs in the worker);
``native-no-timeout``
    the same with ``NoTimeout()``: no idle budget, so the TLS socket has no
    socket timeout (``_ssl`` then neither polls before a write nor after a
    read that would block), as in stdlib.

The client is a separate process that valgrind does not trace, so only the
server is counted.  It does what ``openssl s_time -new`` does, N times in a
row: a full handshake, then close without a word; it waits for the
server's session tickets first, so every close is the same TCP reset
(s_time's race between a FIN and a reset made the counts vary).  Each kind
runs twice under ``valgrind --tool=callgrind`` with *small* and *large*
handshakes; the difference divided by ``large - small`` is the server's
cost of one handshake, the interpreter's start, the imports and the
context's certificate loading cancelled out.  The same subtraction per C
function (self cost, ``callgrind_annotate``) splits it between OpenSSL
(``libssl``/``libcrypto``, the same work for every kind) and the rest (the
interpreter, libc, the kernel calls: what the server's own code costs).

With ``--persistent`` the client makes one TLS connection and sends N
keep-alive ``GET`` requests on it, one at a time (``http.client``), as the
``tls-persistent`` scenario's wrk connections do: the figure is then the
server's cost of one request over an established TLS connection.

    python -m tests.bench.callgrind_tls --serve KIND N [--persistent]    # the workload (BENCH_TLS_CERT/KEY set)
    python -m tests.bench.callgrind_tls --client HOST PORT N [--persistent]    # the client
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol, cast

from .callgrind_udp import parse_annotate

__all__ = ("KINDS", "client", "main", "serve")

ROOT: Final = Path(__file__).resolve().parent.parent.parent
KINDS: Final = ("stdlib", "compat", "native", "native-no-timeout")
# Object files by whose work they do: OpenSSL's (the same for every kind),
# the interpreter's (the server's Python code, and the _ssl glue), libc's
# (malloc and memset, for both).
_GROUPS: Final = (("libssl", "OpenSSL"), ("libcrypto", "OpenSSL"), ("libpython", "Python"), ("python", "Python"),
                  ("_ssl", "Python"), ("libc.", "libc"), ("ld-linux", "libc"))


def _group(object_file: str) -> str:
    return next((group for prefix, group in _GROUPS if object_file.startswith(prefix)), "other")


class _Serving(Protocol):
    @property
    def server_address(self) -> object: ...

    def serve_forever(self, poll_interval: float = ...) -> None: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


def client(host: str, port: int, handshakes: int) -> None:
    """*handshakes* times: connect, handshake, wait for the server's session
    tickets, close without ``close_notify`` (``s_time -new``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # s_time does not verify either
    for _ in range(handshakes):
        with socket.create_connection((host, port), timeout=30.0) as raw:
            tls = context.wrap_socket(raw)
            if not select.select([tls], [], [], 30.0)[0]:
                raise RuntimeError("no session tickets after the handshake")
            tls.close()


def persistent_client(host: str, port: int, requests: int) -> None:
    """*requests* keep-alive ``GET /`` requests on one TLS connection, each
    answer read before the next request is sent."""
    import http.client

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(host, port, timeout=30.0, context=context)
    try:
        for _ in range(requests):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET / answered {response.status}")
    finally:
        connection.close()


def _make(kind: str, finished: threading.Semaphore) -> _Serving:
    """A *kind* https-min server on an ephemeral port whose handler releases
    *finished* once per connection."""
    if kind == "compat":
        from composable_server import compat

        sys.modules["socketserver"] = compat  # before http.server, as bench_http does
    from .bench_http import _handler_classes, _server_context

    base = _handler_classes("https-min")

    class Counted(base):  # type: ignore[valid-type,misc]  # a class made at run time
        def finish(self) -> None:
            try:
                super().finish()
            finally:
                finished.release()

    context = _server_context()
    address = ("127.0.0.1", 0)
    if kind in ("stdlib", "compat"):
        import http.server

        class TLSServer(http.server.ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
                sock, addr = self.socket.accept()
                return context.wrap_socket(sock, server_side=True), addr

        return TLSServer(address, Counted)
    if kind in ("native", "native-no-timeout"):
        from composable_server import Server, StreamAcceptor, TCPTransport, ThreadPoolDispatcher
        from composable_server.policies import ConnectionTimeouts, NoTimeout
        from composable_server.transports import TLSTransport

        from .bench_servers import POOL_WORKERS

        server: Server[socket.socket, object] = Server(
            transport=TLSTransport(TCPTransport(address), context),
            acceptor=StreamAcceptor(),
            handler=Counted,
            dispatcher=ThreadPoolDispatcher(POOL_WORKERS, queue_size=256),
            timeout_policy=NoTimeout() if kind == "native-no-timeout" else ConnectionTimeouts(),
        )
        return server
    raise SystemExit(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def serve(kind: str, handshakes: int, *, persistent: bool = False) -> None:
    """Serve *handshakes* s_time-like connections with a *kind* server (or,
    *persistent*, that many requests on one connection); the client in a
    child process (not traced by valgrind)."""
    finished = threading.Semaphore(0)
    connections = 1 if persistent else handshakes
    server = _make(kind, finished)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        host, port = cast("tuple[str, int]", server.server_address)  # AF_INET
        subprocess.run(
            [sys.executable, "-m", "tests.bench.callgrind_tls", "--client", host, str(port), str(handshakes)]
            + (["--persistent"] if persistent else []),
            cwd=ROOT, check=True, timeout=600,
        )
        for _ in range(connections):
            if not finished.acquire(timeout=60.0):
                raise RuntimeError("a handler did not finish")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _callgrind(
    kind: str, handshakes: int, tmp: str, env: dict[str, str], persistent: bool
) -> tuple[int, dict[str, int]]:
    # Once without valgrind first: a module compiled in one traced run and
    # loaded from its .pyc in the other would not cancel out.
    argv = [sys.executable, "-m", "tests.bench.callgrind_tls", "--serve", kind]
    mode = ["--persistent"] if persistent else []
    subprocess.run(argv + ["2"] + mode, cwd=ROOT, env=env, check=True, timeout=120)
    out = os.path.join(tmp, f"callgrind.{kind}.{handshakes}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv + [str(handshakes)] + mode,
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600,
    )
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--show-percs=no", out], check=True, capture_output=True,
        text=True, timeout=300,
    ).stdout
    return parse_annotate(text)


def _object_files(tmp: str, kind: str, handshakes: int) -> dict[str, str]:
    """function -> object file, from ``callgrind_annotate``'s ``[object]`` suffixes."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--show-percs=no", os.path.join(tmp, f"callgrind.{kind}.{handshakes}")],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    objects: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.endswith("]") or "[" not in line or ":" not in line:
            continue
        head, _, obj = line.rpartition(" [")
        name = head.split(None, 1)[-1]
        path, _, function = name.rpartition(":")
        function = function.split("'")[0]
        objects[f"{Path(path).name}:{function}"] = Path(obj.rstrip("]")).name
    return objects


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.callgrind_tls", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--small", type=int, default=20, help="handshakes of the first run (default 20)")
    parser.add_argument("--large", type=int, default=120, help="handshakes of the second run (default 120)")
    parser.add_argument("--top", type=int, default=12, help="functions listed per kind (default 12)")
    parser.add_argument("--persistent", action="store_true",
                        help="N keep-alive requests on one TLS connection instead of N handshakes")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar=("HOST", "PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        (persistent_client if args.persistent else client)(args.client[0], int(args.client[1]), int(args.client[2]))
        return 0
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), persistent=args.persistent)
        return 0
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind (with callgrind_annotate) is not installed")
    from .run import _tls_files

    n = args.large - args.small
    unit = "request" if args.persistent else "handshake"
    what = "keep-alive requests on one TLS connection" if args.persistent else "TLS handshake (s_time -new)"
    out = [f"# {what}: server instructions per {unit} (callgrind, {args.large} - "
           f"{args.small} {unit}s, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION})", ""]
    per_kind: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cs-callgrind-tls-") as tmp:
        env = dict(os.environ)
        env["BENCH_TLS_CERT"], env["BENCH_TLS_KEY"] = _tls_files(tmp)
        for kind in args.kinds:
            total_small, small = _callgrind(kind, args.small, tmp, env, args.persistent)
            total_large, large = _callgrind(kind, args.large, tmp, env, args.persistent)
            objects = _object_files(tmp, kind, args.large)
            total = (total_large - total_small) / n
            deltas = sorted(
                ((name, (count - small.get(name, 0)) / n) for name, count in large.items()), key=lambda x: -x[1]
            )
            groups: dict[str, float] = {}
            for name, d in deltas:
                group = _group(objects.get(name, ""))
                groups[group] = groups.get(group, 0.0) + d
            per_kind[kind] = (total, groups.get("OpenSSL", 0.0))
            out += [f"## {kind}: {total:,.0f} instructions per {unit}", "",
                    "By object file: " + ", ".join(
                        f"{g} {d:,.0f} ({d / total:.0%})" for g, d in sorted(groups.items(), key=lambda x: -x[1])
                    ), "",
                    f"| C function (self) | object | instructions/{unit} | share |", "|---|---|--:|--:|"]
            out += [f"| `{name}` | {objects.get(name, '?')} | {d:,.0f} | {d / total:.1%} |"
                    for name, d in deltas[: args.top]]
            out.append("")
    if "stdlib" in per_kind:
        base_total, base_openssl = per_kind["stdlib"]
        out += [f"- {k}: {t / base_total:.2f}x stdlib's instructions per {unit}; outside OpenSSL "
                f"{t - o:,.0f} vs stdlib's {base_total - base_openssl:,.0f} ({t - o - base_total + base_openssl:+,.0f})"
                for k, (t, o) in per_kind.items()]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
