"""A server assembled by composition, with a custom Verifier and a custom
ErrorPolicy: two small classes that satisfy the Protocols, no subclassing.

Run it:    python examples/compose_policies.py

It starts the server in a thread, then plays four clients and prints::

    'hello' -> 'HELLO'                 served
    'boom' -> ''                       the handler raised; the policy counted it
    maintenance on
    'hello' -> ''                      refused by the verifier, closed unanswered
    errors: 1 (ValueError: boom)
"""

from __future__ import annotations

import socket
import threading

import attrs

from composable_server import (
    InetAddress,
    Server,
    StreamAcceptor,
    StreamRequestHandler,
    TCPTransport,
    ThreadingDispatcher,
    all_of,
    allow_networks,
)


@attrs.frozen
class MaintenanceSwitch:
    """A Verifier: refuse every request while *switch* is set."""

    switch: threading.Event

    def verify(self, request: object, client_address: object) -> bool:
        return not self.switch.is_set()


@attrs.define
class CountingErrorPolicy:
    """An ErrorPolicy: remember every handler error, report nothing."""

    errors: list[BaseException] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)


class UpperHandler(StreamRequestHandler[InetAddress]):
    """Reply with the line in upper case; a line 'boom' is a bug."""

    def handle(self) -> None:
        line = self.rfile.readline(1024).strip()
        if line == b"boom":
            raise ValueError("boom")
        self.wfile.write(line.upper())


def ask(address: InetAddress, line: str) -> None:
    with socket.create_connection(address[:2], timeout=10) as sock:
        sock.sendall(line.encode() + b"\n")
        reply = b"".join(iter(lambda: sock.recv(1024), b""))
    print(f"{line!r} -> {reply.decode()!r}", flush=True)


def main() -> None:
    maintenance = threading.Event()
    errors = CountingErrorPolicy()
    with Server(
        transport=TCPTransport(("127.0.0.1", 0)),
        acceptor=StreamAcceptor(),
        handler=UpperHandler,
        verifier=all_of(allow_networks("127.0.0.0/8", "::1"), MaintenanceSwitch(maintenance)),
        dispatcher=ThreadingDispatcher(),
        error_policy=errors,
    ) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ask(server.server_address, "hello")
        ask(server.server_address, "boom")
        maintenance.set()
        print("maintenance on", flush=True)
        ask(server.server_address, "hello")
        server.drain(timeout=10)
    print(f"errors: {len(errors.errors)} ({', '.join(f'{type(e).__name__}: {e}' for e in errors.errors)})")


if __name__ == "__main__":
    main()
