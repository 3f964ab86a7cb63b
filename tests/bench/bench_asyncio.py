"""The asyncio (and uvloop) echo servers of the benchmark."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from typing import cast

from .bench_servers import announce, parse_inet

__all__ = ("run", "run_https")

_HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n"
)

async def _async_stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class _AsyncDatagramEcho(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A DatagramTransport in fact (not a subclass of it in CPython's
        # selector event loop, hence the cast rather than an isinstance check).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.transport.sendto(data, addr)


async def _asyncio_main(family: str, address: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    if family == "udp":
        transport, _ = await loop.create_datagram_endpoint(_AsyncDatagramEcho, local_addr=parse_inet(address))
        announce(transport.get_extra_info("sockname"))
        await stop
        transport.close()
        return
    if family == "unix":
        server = await asyncio.start_unix_server(_async_stream_echo, address)
    else:
        host, port = parse_inet(address)
        server = await asyncio.start_server(_async_stream_echo, host, port, backlog=socket.SOMAXCONN)
    announce(server.sockets[0].getsockname())
    async with server:
        await stop


def run(family: str, address: str, *, uvloop: bool = False) -> None:
    """Serve the echo on *family*/*address* until SIGTERM."""
    if uvloop:
        try:
            import uvloop as uv  # optional: the `bench` extra
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install composable-server[bench])") from None
        uv.install()
    asyncio.run(_asyncio_main(family, address))


async def _async_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP/1.1 responder (the bench's ``http-min`` answer): one
    fixed response per request head, keep-alive unless the client closes."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            writer.write(_HTTP_RESPONSE)
            if b"onnection: close" in head or b"onnection: Close" in head:
                break
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _https_main(address: str, context: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    host, port = parse_inet(address)
    server = await asyncio.start_server(_async_http, host, port, ssl=context, backlog=socket.SOMAXCONN)
    announce(server.sockets[0].getsockname())
    async with server:
        await stop


def run_https(address: str, context: ssl.SSLContext, *, uvloop: bool = False) -> None:
    """Serve the minimal HTTP/1.1 answer over TLS with *context* until SIGTERM."""
    if uvloop:
        try:
            import uvloop as uv  # optional: the `bench` extra
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install composable-server[bench])") from None
        uv.install()
    asyncio.run(_https_main(address, context))
