"""A custom component: a Verifier that rate-limits requests per client IP
(a token bucket), with its unit test in examples/test_rate_limit_verifier.py.

Run it:    python examples/rate_limit_verifier.py
Test it:   python -m pytest examples/test_rate_limit_verifier.py

The demo allows a burst of 3 requests per client and no refill, sends 5
requests, and prints which were served::

    request 1: 'ONE'
    ...
    request 4: refused
    served 3 of 5
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import attrs

from composable_server import InetAddress, Server, StreamAcceptor, StreamRequestHandler, TCPTransport


@attrs.define(eq=False)
class PerClientRateLimit:
    """A Verifier: each client host may make *burst* requests at once, and
    earns *rate* more per second (a token bucket per host).

    Unix clients (no host) share one bucket.  Thread-safe; *clock* is
    injectable so tests need not sleep.
    """

    rate: float = attrs.field(validator=attrs.validators.ge(0.0))
    burst: float = attrs.field(validator=attrs.validators.ge(1.0))
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = attrs.field(init=False, factory=dict)  # host -> (tokens, when)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def verify(self, request: object, client_address: object) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else "unix"
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(host, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            admitted = tokens >= 1.0
            self._buckets[host] = (tokens - 1.0 if admitted else tokens, now)
        return admitted


class UpperHandler(StreamRequestHandler[InetAddress]):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline(1024).strip().upper())


def main() -> None:
    words = ["one", "two", "three", "four", "five"]
    served = 0
    with Server(
        transport=TCPTransport(("127.0.0.1", 0)),
        acceptor=StreamAcceptor(),
        handler=UpperHandler,
        verifier=PerClientRateLimit(rate=0.0, burst=3),
    ) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for n, word in enumerate(words, 1):
            with socket.create_connection(server.server_address[:2], timeout=10) as sock:
                sock.sendall(word.encode() + b"\n")
                reply = b"".join(iter(lambda: sock.recv(1024), b""))
            served += bool(reply)
            print(f"request {n}: {reply.decode()!r}" if reply else f"request {n}: refused", flush=True)
        server.shutdown()
    print(f"served {served} of {len(words)}")


if __name__ == "__main__":
    main()
