"""The TCP client of the socketserver documentation, typed.

Run it:    python examples/tcp_client.py [--host HOST] [--port PORT] WORD...

Sends the words as one line to examples/tcp_server.py and prints what was
sent and what came back::

    Sent:     hello world
    Received: HELLO WORLD
"""

from __future__ import annotations

import argparse
import socket


def main() -> None:
    parser = argparse.ArgumentParser(description="TCP upper-case client")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("words", nargs="+")
    args = parser.parse_args()
    data = " ".join(args.words)
    with socket.create_connection((args.host, args.port), timeout=10) as sock:
        sock.sendall(data.encode() + b"\n")
        received = sock.makefile("rb").readline().decode().rstrip("\n")
    print(f"Sent:     {data}")
    print(f"Received: {received}")


if __name__ == "__main__":
    main()
