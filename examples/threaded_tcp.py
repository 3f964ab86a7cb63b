"""The threaded server of the socketserver documentation ("Asynchronous
Mixins"), typed: one process runs the server in a thread and three clients.

Run it:    python examples/threaded_tcp.py

Each client sends ``Hello World N``; the handler answers with the name of the
thread that served it, so the output shows three different threads::

    Server loop running in thread: serve_forever
    Received: Thread-1 (_run): Hello World 1
    Received: Thread-2 (_run): Hello World 2
    Received: Thread-3 (_run): Hello World 3
"""

from __future__ import annotations

import socket
import threading

from composable_server import (
    InetAddress,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadingDispatcher,
)


class ThreadedTCPRequestHandler(StreamRequestHandler[InetAddress]):
    """Answer with the serving thread's name and the data received."""

    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(f"{threading.current_thread().name}: ".encode() + data)


def client(address: InetAddress, message: str) -> None:
    """Send *message*, print the answer."""
    with socket.create_connection(address[:2], timeout=10) as sock:
        sock.sendall(message.encode())
        print(f"Received: {sock.recv(1024).decode()}", flush=True)


def main() -> None:
    # Port 0 means to select an arbitrary unused port.
    with Server(
        transport=TCPTransport(("127.0.0.1", 0)),
        acceptor=StreamAcceptor(),
        handler=ThreadedTCPRequestHandler,
        dispatcher=ThreadingDispatcher(),
    ) as server:
        # Start a thread with the server; that thread starts one more thread
        # per request.
        server_thread = threading.Thread(target=server.serve_forever, name="serve_forever", daemon=True)
        server_thread.start()
        print(f"Server loop running in thread: {server_thread.name}", flush=True)
        for n in (1, 2, 3):
            client(server.server_address, f"Hello World {n}")
        server.shutdown()


if __name__ == "__main__":
    main()
