"""A threaded TCP upper-case server, assembled from components (no subclassing
of any server class).

Run it:    python examples/compose_threaded_tcp.py [--port PORT]
Then:      printf 'hello\\n' | nc 127.0.0.1 PORT      ->  HELLO

It prints ``listening on HOST:PORT`` once bound (port 0 picks a free port)
and serves until interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from types import FrameType

from composable_server import (
    InetAddress,
    LoggingErrorPolicy,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadingDispatcher,
)


class UpperCaseHandler(StreamRequestHandler[InetAddress]):
    """Answer every line with the same line in upper case."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def build_server(host: str = "127.0.0.1", port: int = 0) -> Server[socket.socket, InetAddress]:
    """Compose a threaded TCP server: every component is an argument."""
    return Server(
        transport=TCPTransport((host, port)),
        acceptor=StreamAcceptor(),
        handler=UpperCaseHandler,
        dispatcher=ThreadingDispatcher(daemon=True),
        error_policy=LoggingErrorPolicy(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with build_server(args.host, args.port) as server:

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for the loop: call it from another thread.
            threading.Thread(target=server.shutdown).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
