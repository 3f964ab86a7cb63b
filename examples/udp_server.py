"""The UDP upper-case server of the socketserver documentation, typed.

Run it:    python examples/udp_server.py [--host HOST] [--port PORT]
Then:      python examples/udp_client.py --port PORT hello world

Each datagram is answered with its upper-case copy (the documentation's
``MyUDPHandler``).  Prints ``listening on HOST:PORT`` once bound (``--port 0``
picks a free port) and ``stopped`` after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal

from composable_server import (
    BaseRequestHandler,
    DatagramAcceptor,
    DatagramRequest,
    InetAddress,
    Server,
    UDPTransport,
)


class MyUDPHandler(BaseRequestHandler[DatagramRequest, InetAddress]):
    """Reply to a datagram with its upper-case copy."""

    def handle(self) -> None:
        data, sock = self.request
        data = data.strip()
        print(f"{self.client_address[0]} wrote: {data!r}", flush=True)
        sock.sendto(data.upper(), self.client_address)


def main() -> None:
    parser = argparse.ArgumentParser(description="UDP upper-case server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM acts like Ctrl-C
    transport = UDPTransport((args.host, args.port))
    with Server(transport=transport, acceptor=DatagramAcceptor(), handler=MyUDPHandler) as server:
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)


if __name__ == "__main__":
    main()
