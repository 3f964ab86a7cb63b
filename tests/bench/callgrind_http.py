"""Where an HTTP request's time goes: instruction counts under callgrind (issues 17, 18).

    python -m tests.bench.callgrind_http [--kinds ...] [--families http-min http-file] [--close] [--small N] [--large N]

Instruction counts do not depend on other load on the machine, unlike req/s.
Each kind serves a fixed number of requests in one process, with the
benchmark's handler classes (:mod:`tests.bench.bench_http`): the server's
``serve_forever()`` in a thread (its workers in theirs), the client in the
main thread, a raw socket that sends a prepared request and reads the
response (``Content-Length``), so the client's share is small and the same for
every kind.  Keep-alive by default: 4 connections used in turn, so the
parking kind parks and wakes one per request; ``--close``: a new connection
per request with ``Connection: close``.  Each kind runs twice under
``valgrind --tool=callgrind``, with *small* and *large* requests; the
difference divided by ``large - small`` is the cost of one request, with the
interpreter's start and the imports cancelled out.  The same subtraction per
C function gives the top functions per request, and a profile hook on every
thread (``threading.setprofile``; call counts are deterministic) the Python
functions called per request.

Kinds: ``stdlib`` (``http.server.ThreadingHTTPServer``), ``compat`` (the same
class with ``sys.modules["socketserver"]`` swapped for compat first),
``native-pool`` (a ``Server`` with a ``ThreadPoolDispatcher``: a worker per
connection, looping in stdlib's ``handle()``), ``native-parking``
(``composable_server.httpserver.make_http_server``: 8 workers, connections
parked between requests).

    python -m tests.bench.callgrind_http --serve KIND FAMILY MODE N    # the workload itself
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, Protocol

from .callgrind_udp import parse_annotate

__all__ = ("FAMILIES", "KINDS", "main", "serve")

ROOT: Final = Path(__file__).resolve().parent.parent.parent
KINDS: Final = ("stdlib", "compat", "native-pool", "native-parking")
FAMILIES: Final = ("http-min", "http-file")
MODES: Final = ("keep-alive", "close")
CONNECTIONS: Final = 4  # keep-alive connections the client takes turns on
_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:\s*(\d+)")


class _Serving(Protocol):
    @property
    def server_address(self) -> object: ...

    def serve_forever(self, poll_interval: float = ...) -> None: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


def _make(kind: str, family: str) -> _Serving:
    """A *kind* server for *family* on an ephemeral loopback port."""
    address = ("127.0.0.1", 0)
    if kind == "compat":
        from composable_server import compat

        if "http.server" in sys.modules and sys.modules.get("socketserver") is not compat:
            raise SystemExit("http.server was imported before the swap")
        sys.modules["socketserver"] = compat
    from .bench_http import _handler_classes

    handler = _handler_classes(family)
    if kind in ("stdlib", "compat"):
        import http.server

        return http.server.ThreadingHTTPServer(address, handler)
    if kind == "native-pool":
        from composable_server.httpserver import make_http_server

        from .bench_servers import POOL_WORKERS

        return make_http_server(address, handler, threads=POOL_WORKERS, park=False)
    if kind == "native-parking":
        from composable_server.httpserver import make_http_server

        from .bench_http import PARKING_THREADS

        return make_http_server(address, handler, threads=PARKING_THREADS)
    raise SystemExit(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _request(family: str, mode: str) -> bytes:
    from .bench_http import FILE_PATH

    path = FILE_PATH if family == "http-file" else "/"
    close = "Connection: close\r\n" if mode == "close" else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{close}\r\n".encode()


def _read_response(sock: socket.socket, buffer: bytearray) -> None:
    """Read one response (head, then ``Content-Length`` bytes) from *sock*; keep what follows in *buffer*."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection before a response")
        buffer += chunk
    head = bytes(buffer[:end]).lower()
    length = _CONTENT_LENGTH.search(head)
    if length is None:
        raise RuntimeError(f"a response without Content-Length: {head[:40]!r}")
    whole = end + 4 + int(length[1])
    while len(buffer) < whole:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection inside a response")
        buffer += chunk
    if not head.startswith(b"http/1.1 200"):
        raise RuntimeError(f"unexpected response: {head[:40]!r}")
    del buffer[:whole]


def serve(kind: str, family: str, mode: str, requests: int) -> None:
    """Serve *requests* requests of *family* with a *kind* server, the client here."""
    server = _make(kind, family)
    address = server.server_address
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    request = _request(family, mode)
    try:
        if mode == "close":
            for _ in range(requests):
                with socket.create_connection(address, timeout=30.0) as sock:  # type: ignore[arg-type]  # (host, port)
                    sock.sendall(request)
                    _read_response(sock, bytearray())
            return
        clients = [socket.create_connection(address, timeout=30.0) for _ in range(CONNECTIONS)]  # type: ignore[arg-type]  # (host, port)
        buffers = [bytearray() for _ in clients]
        try:
            for number in range(requests):
                sock = clients[number % CONNECTIONS]
                sock.sendall(request)
                _read_response(sock, buffers[number % CONNECTIONS])
        finally:
            for sock in clients:
                sock.close()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _count_calls(kind: str, family: str, mode: str, requests: int) -> dict[str, int]:
    """Python and builtin function calls, on every thread, over *requests* requests."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def hook(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code
            name = f"{code.co_qualname} ({Path(code.co_filename).name}:{code.co_firstlineno})"
        elif event == "c_call":
            name = f"{getattr(arg, '__qualname__', arg)} (builtin)"
        else:
            return
        with lock:
            counts[name] = counts.get(name, 0) + 1

    profile: Callable[[FrameType, str, object], None] = hook
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        serve(kind, family, mode, requests)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return counts


def _workload(kind: str, family: str, mode: str, requests: int) -> list[str]:
    return [sys.executable, "-m", "tests.bench.callgrind_http", "--serve", kind, family, mode, str(requests)]


def _callgrind(kind: str, family: str, mode: str, requests: int, tmp: str) -> tuple[int, dict[str, int]]:
    # Once without valgrind first: a module compiled in one traced run and
    # loaded from its .pyc in the other would not cancel out.
    subprocess.run(_workload(kind, family, mode, 1), cwd=ROOT, check=True, timeout=120)
    out = os.path.join(tmp, f"callgrind.{kind}.{family}.{mode}.{requests}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *_workload(kind, family, mode, requests)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600,
    )
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return parse_annotate(text)


def _python_calls(kind: str, family: str, mode: str, small: int, large: int) -> list[tuple[str, float]]:
    """Calls per request: the difference of two in-process runs (each kind in its own process: compat swaps)."""
    code = (
        "import json, sys; from tests.bench.callgrind_http import _count_calls; "
        f"print(json.dumps([_count_calls({kind!r}, {family!r}, {mode!r}, n) for n in ({small}, {large})]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=600)
    first, second = json.loads(done.stdout)
    n = large - small
    rows = [(name, (count - first.get(name, 0)) / n) for name, count in second.items()]
    return sorted(rows, key=lambda r: -r[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.callgrind_http", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--families", nargs="*", default=["http-min"], choices=FAMILIES)
    parser.add_argument("--close", action="store_true", help="a new connection per request (Connection: close)")
    parser.add_argument("--small", type=int, default=100, help="requests of the first run (default 100)")
    parser.add_argument("--large", type=int, default=500, help="requests of the second run (default 500)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per kind (default 15)")
    parser.add_argument("--no-calls", action="store_true", help="skip the Python call counts")
    parser.add_argument("--serve", nargs=4, metavar=("KIND", "FAMILY", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], args.serve[1], args.serve[2], int(args.serve[3]))
        return 0
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind (with callgrind_annotate) is not installed")
    mode = "close" if args.close else "keep-alive"
    n = args.large - args.small
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cs-callgrind-http-") as tmp:
        for family in args.families:
            out += [f"# {family}, {mode}: instructions per request (callgrind, {args.large} - {args.small})", ""]
            per_kind: dict[str, float] = {}
            for kind in args.kinds:
                total_small, small = _callgrind(kind, family, mode, args.small, tmp)
                total_large, large = _callgrind(kind, family, mode, args.large, tmp)
                per_kind[kind] = (total_large - total_small) / n
                deltas = sorted(
                    ((name, (count - small.get(name, 0)) / n) for name, count in large.items()), key=lambda x: -x[1]
                )
                out += [f"## {kind}: {per_kind[kind]:,.0f} instructions per request", "",
                        "| C function (self) | instructions/request | share |", "|---|--:|--:|"]
                out += [f"| `{name}` | {d:,.0f} | {d / per_kind[kind]:.1%} |" for name, d in deltas[: args.top]]
                if not args.no_calls:
                    calls = _python_calls(kind, family, mode, args.small, args.large)
                    out += ["", f"Python and builtin calls per request: {sum(c for _, c in calls):.1f}", "",
                            "| function | calls/request |", "|---|--:|"]
                    out += [f"| `{name}` | {c:.2f} |" for name, c in calls[: args.top]]
                out.append("")
                print(f"{family} {mode} {kind}: {per_kind[kind]:,.0f} instructions/request", file=sys.stderr)
            if "stdlib" in per_kind:
                out += [f"- {k}: {v / per_kind['stdlib']:.2f}x stdlib's instructions per request"
                        for k, v in per_kind.items()]
            out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
