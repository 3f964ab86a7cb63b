"""Bounded reads: StreamRequestHandler.read_line on an in-memory stream."""

from __future__ import annotations

import io
from typing import ClassVar

import pytest

from composable_server import LineTooLongError, ServerError, StreamRequestHandler
from composable_server.handlers import DEFAULT_MAX_LINE_LENGTH


class Bounded(StreamRequestHandler[str]):
    max_line_length: ClassVar[int] = 8


def handler_over(data: bytes, cls: type[StreamRequestHandler[str]] = Bounded) -> StreamRequestHandler[str]:
    """A handler whose rfile reads *data* (no socket, no setup)."""
    handler = cls.__new__(cls)
    handler.rfile = io.BufferedReader(io.BytesIO(data))
    return handler


class TestReadLine:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("data", "lines"),
        [
            (b"abc\ndef\n", [b"abc\n", b"def\n", b""]),
            (b"1234567\n", [b"1234567\n", b""]),  # exactly the bound, newline included
            (b"12345678", [b"12345678", b""]),  # the bound at EOF, no newline
            (b"", [b""]),
        ],
    )
    def test_lines_within_the_bound(self, data: bytes, lines: list[bytes]) -> None:
        """Lines up to max_line_length bytes (newline included) are returned whole."""
        handler = handler_over(data)
        assert [handler.read_line() for _ in lines] == lines

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("data", [b"12345678\n", b"123456789", b"x" * (10 * 1024 * 1024)])
    def test_longer_line_raises_at_the_bound(self, data: bytes) -> None:
        """A line longer than the bound raises LineTooLongError after reading one byte past it."""
        handler = handler_over(data)
        with pytest.raises(LineTooLongError) as info:
            handler.read_line()
        assert info.value.limit == 8
        assert "longer than 8 bytes" in str(info.value)
        assert handler.rfile.tell() == 9  # nothing more was consumed

    @pytest.mark.timeout(5)
    def test_error_is_catchable_as_value_error_and_server_error(self) -> None:
        """LineTooLongError is both a ServerError and a ValueError."""
        assert issubclass(LineTooLongError, ServerError) and issubclass(LineTooLongError, ValueError)

    @pytest.mark.timeout(5)
    def test_default_bound(self) -> None:
        """The default bound is 64 KiB, as http.server's request line."""
        assert StreamRequestHandler.max_line_length == DEFAULT_MAX_LINE_LENGTH == 65536
