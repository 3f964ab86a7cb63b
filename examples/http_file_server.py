"""An HTTP file server: the stdlib's SimpleHTTPRequestHandler, unchanged, on a
composable_server Server with a thread per request.

Run it:    python examples/http_file_server.py [--port PORT] [--directory DIR]
Then:      curl http://127.0.0.1:PORT/

Prints ``serving DIR at http://HOST:PORT/`` once bound (``--port 0`` picks a
free port) and ``stopped`` after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal

from composable_server import LoggingErrorPolicy, Server, StreamAcceptor, TCPTransport, ThreadingDispatcher


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP file server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--directory", default=os.getcwd())
    args = parser.parse_args()
    directory = os.path.abspath(args.directory)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM acts like Ctrl-C
    with Server(
        transport=TCPTransport((args.host, args.port)),
        acceptor=StreamAcceptor(),
        # http.server handlers only need handler(request, client_address, server).
        handler=functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory),
        dispatcher=ThreadingDispatcher(daemon=True),
        error_policy=LoggingErrorPolicy(),
    ) as server:
        host, port = server.server_address[:2]
        print(f"serving {directory} at http://{host}:{port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)


if __name__ == "__main__":
    main()
