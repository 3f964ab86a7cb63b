"""The error hierarchy: one base, each subclass also the builtin users catch."""

from __future__ import annotations

import errno
import socket

import pytest

from composable_server import AddressError, BindError, PortRangeError, ServerClosedError, ServerError, ServerStateError


class TestServerError:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("cls", [AddressError, BindError, PortRangeError, ServerClosedError, ServerStateError])
    def test_every_error_is_a_server_error(self, cls: type[ServerError]) -> None:
        """Every error of the package derives from ServerError, which is an Exception."""
        assert issubclass(cls, ServerError)
        assert issubclass(ServerError, Exception)


class TestAddressError:
    @pytest.mark.timeout(5)
    def test_is_value_error_with_fields(self) -> None:
        """AddressError is a ValueError and carries the address and family."""
        exc = AddressError("bad", address=("h", "80"), family=socket.AF_INET)
        assert isinstance(exc, ValueError)
        assert exc.address == ("h", "80")
        assert exc.family == socket.AF_INET
        assert str(exc) == "bad"

    @pytest.mark.timeout(5)
    def test_family_defaults_to_none(self) -> None:
        """The family is None when it could not be determined."""
        assert AddressError("bad", address=1).family is None


class TestPortRangeError:
    @pytest.mark.timeout(5)
    def test_is_address_error_and_overflow_error(self) -> None:
        """PortRangeError is an AddressError (a ValueError) and the OverflowError
        that ``socket.bind`` raises for such a port, and carries the port."""
        exc = PortRangeError("bad port", address=("h", -1), family=socket.AF_INET, port=-1)
        assert {AddressError, ValueError, OverflowError} <= set(type(exc).__mro__)
        assert (exc.address, exc.family, exc.port) == (("h", -1), socket.AF_INET, -1)


class TestBindError:
    @pytest.mark.timeout(5)
    def test_is_oserror_with_errno_and_address(self) -> None:
        """BindError is an OSError with the kernel's errno and strerror, and names the address."""
        exc = BindError(errno.EADDRINUSE, "Address already in use", address=("127.0.0.1", 8080))
        assert isinstance(exc, OSError)
        assert exc.errno == errno.EADDRINUSE
        assert exc.strerror == "Address already in use"
        assert exc.address == ("127.0.0.1", 8080)
        assert "('127.0.0.1', 8080)" in str(exc)
        assert "Address already in use" in str(exc)

    @pytest.mark.timeout(5)
    def test_caught_as_oserror(self) -> None:
        """except OSError catches a BindError, as it caught the stdlib bind failure."""
        with pytest.raises(OSError) as info:
            raise BindError(errno.EACCES, "Permission denied", address="/root/sock")
        assert info.value.errno == errno.EACCES


class TestServerClosedError:
    @pytest.mark.timeout(5)
    def test_is_runtime_error(self) -> None:
        """ServerClosedError is a RuntimeError and not an OSError ("we closed it", not "it broke")."""
        assert issubclass(ServerClosedError, RuntimeError)
        assert not issubclass(ServerClosedError, OSError)


class TestServerStateError:
    @pytest.mark.timeout(5)
    def test_is_runtime_error(self) -> None:
        """ServerStateError is a RuntimeError, distinct from ServerClosedError."""
        assert issubclass(ServerStateError, RuntimeError)
        assert not issubclass(ServerStateError, ServerClosedError)


class TestRestartLimitError:
    @pytest.mark.timeout(5)
    def test_is_runtime_error_importable_from_prefork(self) -> None:
        """RestartLimitError is a ServerError and a RuntimeError, the same class from exceptions and prefork."""
        from composable_server import RestartLimitError
        from composable_server.prefork import RestartLimitError as from_prefork

        assert from_prefork is RestartLimitError
        assert issubclass(RestartLimitError, ServerError) and issubclass(RestartLimitError, RuntimeError)
