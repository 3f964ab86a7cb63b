"""The UDP client of the socketserver documentation, typed.

Run it:    python examples/udp_client.py [--host HOST] [--port PORT] WORD...

Sends the words as one datagram to examples/udp_server.py and prints what
was sent and what came back::

    Sent:     hello world
    Received: HELLO WORLD
"""

from __future__ import annotations

import argparse
import socket


def main() -> None:
    parser = argparse.ArgumentParser(description="UDP upper-case client")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("words", nargs="+")
    args = parser.parse_args()
    data = " ".join(args.words)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)  # UDP may lose the datagram: do not wait forever
        sock.sendto(data.encode() + b"\n", (args.host, args.port))
        received = sock.recv(1024).decode()
    print(f"Sent:     {data}")
    print(f"Received: {received}")


if __name__ == "__main__":
    main()
