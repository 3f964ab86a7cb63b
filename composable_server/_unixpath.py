"""The rules of a Unix socket file, in one place.

A Unix transport binds its socket to a path; :class:`SocketFile` is the
life of that file:

* before ``bind()``: the socket inode gets the requested *mode*, so the file
  never exists with wider permissions (:meth:`SocketFile.bind`);
* ``bind()``: a stale socket file (its server died without removing it) is
  removed and the bind retried once; a path held by a live server, or by
  anything that is not a socket (a regular file, a directory, ...), is
  refused with a :class:`~composable_server.exceptions.BindError` naming the
  reason;
* after ``bind()``: the file is identified (device, inode) and given exactly
  *mode*;
* on close: the file is removed if it is still the one this socket created
  (a later server may have replaced it with its own), never another one.

Linux abstract names (``b"\\0name"``) have no file: they are bound as they are.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from socket import socket as Socket
from typing import final

from .exceptions import AddressError, BindError
from .interfaces import UnixAddress

__all__ = ("SocketFile", "check_mode", "is_abstract", "unix_path")


def unix_path(address: UnixAddress | os.PathLike[str]) -> UnixAddress:
    """*address* as a str or bytes (an ``os.PathLike`` is converted)."""
    return os.fspath(address) if isinstance(address, os.PathLike) else address


def is_abstract(address: UnixAddress) -> bool:
    """True for a Linux abstract name (a leading NUL byte): no file."""
    return os.fsencode(address)[:1] == b"\0"


def check_mode(address: UnixAddress, mode: int | None) -> None:
    """Check that *mode* (None: the umask decides) fits a socket file at *address*.

    Raises:
        ValueError: not permission bits.
        AddressError: a mode for an abstract name, which has no file.
    """
    if mode is None:
        return
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be None or permission bits in 0o000..0o777, got {mode!r}")
    if is_abstract(address):
        raise AddressError(
            f"mode={mode:#o} has no effect on the abstract name {address!r} (there is no file)",
            address=address,
            family=socket.AF_UNIX,
        )


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):#o}"


def _why_in_use(sock: Socket, path: UnixAddress) -> str | None:
    """Why *path* cannot be taken over, or None if it held a stale socket
    (no one listening) that has now been removed.

    A socket file outlives its server when the server died without
    unlinking it; ``bind()`` then fails with ``EADDRINUSE`` although no one
    uses the address.  A non-blocking ``connect()`` tells the cases apart
    (unix(7)): ``ECONNREFUSED`` means no socket is bound to that file any
    more.  A live server sees (and drops) one empty connection from the probe.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # removed meanwhile: bind again
    except OSError as exc:
        return f"cannot inspect the path: {exc.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"the path exists and is {_file_kind(st.st_mode)}, not a socket; refusing to replace it"
    probe = socket.socket(socket.AF_UNIX, sock.type)
    try:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code == 0 or code in (errno.EAGAIN, errno.EWOULDBLOCK):
        return "a live server is bound to it"
    if code == errno.EPROTOTYPE:
        return "a live socket of another type is bound to it"
    if code != errno.ECONNREFUSED:
        return f"cannot tell whether it is in use: connect() failed with {errno.errorcode.get(code, code)}"
    try:
        again = os.lstat(path)
        # Remove only the stale file we probed, not one a racing server just created.
        if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"a stale socket file that cannot be removed: {exc.strerror}"
    return None


def _bind(sock: Socket, address: UnixAddress) -> None:
    """Bind *sock* to *address*, replacing a stale socket file (see the module docstring)."""
    try:
        sock.bind(address)
        return
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or is_abstract(address):
            raise BindError(exc.errno, exc.strerror or str(exc), address=address) from exc
        first = exc
    reason = _why_in_use(sock, address)
    if reason is not None:
        raise BindError(errno.EADDRINUSE, f"address in use: {reason}", address=address) from first
    try:
        sock.bind(address)
    except OSError as exc:
        raise BindError(exc.errno, exc.strerror or str(exc), address=address) from exc


@final
class SocketFile:
    """The socket file a Unix transport binds to, and removes on close."""

    __slots__ = ("_created",)

    def __init__(self) -> None:
        # (path, st_dev, st_ino) of the file bind() created; None for an abstract name.
        self._created: tuple[UnixAddress, int, int] | None = None

    def __repr__(self) -> str:
        return f"SocketFile(_created={self._created!r})"

    def bind(self, sock: Socket, address: UnixAddress, mode: int | None = None) -> None:
        """Bind *sock* to *address* with *mode* (None: the umask's), replacing a stale socket file.

        Raises:
            BindError: the path is held by a live server or is not a socket
                (``EADDRINUSE``, with the reason), or the kernel refused it.
        """
        if mode is not None:
            # Linux creates the file with the inode's mode masked by the umask
            # (unix_bind in net/unix/af_unix.c), so after this fchmod the file
            # never exists with wider permissions than *mode*: no window in
            # which anyone may connect, and no process-wide umask change.
            try:
                os.fchmod(sock.fileno(), mode)
            except OSError:
                pass  # not supported here: the chmod below still sets the mode
        _bind(sock, address)
        name = sock.getsockname()
        if isinstance(name, (str, bytes)) and name and not is_abstract(name):
            st = os.lstat(name)
            self._created = (name, st.st_dev, st.st_ino)
            if mode is not None:
                os.chmod(name, mode)  # exactly *mode*: the umask may have removed bits

    def remove(self) -> None:
        """Remove the file :meth:`bind` created, if it is still that file.  Idempotent; never raises OSError."""
        created, self._created = self._created, None
        if created is None:
            return
        path, dev, ino = created
        try:
            st = os.lstat(path)
            # Only the file this socket created: a later server may have
            # replaced it with its own socket.
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
        except OSError:
            pass
