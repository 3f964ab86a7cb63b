"""The TCP upper-case server of the socketserver documentation, typed.

Run it:    python examples/tcp_server.py [--host HOST] [--port PORT]
Then:      python examples/tcp_client.py --port PORT hello world

One request is one line; the reply is the line in upper case, then the
connection closes (the documentation's ``MyTCPHandler``).  Prints
``listening on HOST:PORT`` once bound (``--port 0`` picks a free port) and
``stopped`` after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal

from composable_server import InetAddress, Server, StreamAcceptor, StreamRequestHandler, TCPTransport


class MyTCPHandler(StreamRequestHandler[InetAddress]):
    """Reply to one line with the line in upper case."""

    def handle(self) -> None:
        data = self.rfile.readline(65536).strip()
        print(f"{self.client_address[0]} wrote: {data!r}", flush=True)
        self.wfile.write(data.upper() + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="TCP upper-case server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args()
    # SIGTERM stops the server the way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    transport = TCPTransport((args.host, args.port))
    with Server(transport=transport, acceptor=StreamAcceptor(), handler=MyTCPHandler) as server:
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)


if __name__ == "__main__":
    main()
