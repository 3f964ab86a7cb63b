"""The command line's parser: the options of ``composable-server`` and their checks.

Apart from :mod:`composable_server._cli`, which assembles and runs the server,
so that ``--help``, ``--version`` and every usage error (exit 2) cost
argparse and nothing else: no attrs, no component module, no ssl (issue 18:
``serve --help`` within 2x of ``python -c "import socketserver"``).  The
engine is imported once the arguments have passed every check.

The choices (``--transport``, ``--dispatch``, ...) are defined here.  The
defaults the help text names belong to other modules and are repeated
below, so that printing them imports none of those modules;
``tests/unit/test_cliparse.py`` checks that the copies agree.
"""

from __future__ import annotations

import argparse
import os
import sys

# Not typing.TYPE_CHECKING: typing costs more than argparse (see __init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping, Sequence
    from typing import Final, NoReturn

    from ._classes import TransportName

__all__ = ("build_parser", "check_usage")

PROG: Final = "composable-server"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9999
DEFAULT_GRACE: Final = 10.0
SERVICES: Final = ("upper", "echo", "lines", "http")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# --transport: the CLI's name -> the factories' name.  "unix-dgram" is the
# older spelling of "unix-datagram", kept for the scripts that use it.
TRANSPORTS: Final[Mapping[str, TransportName]] = {
    "tcp": "tcp",
    "udp": "udp",
    "unix": "unix_stream",
    "unix-datagram": "unix_datagram",
    "unix-dgram": "unix_datagram",
}
STREAM_TRANSPORTS: Final = frozenset(name for name, kind in TRANSPORTS.items() if kind in ("tcp", "unix_stream"))
UNIX_TRANSPORTS: Final = frozenset(name for name, kind in TRANSPORTS.items() if kind.startswith("unix"))
# --dispatch: the keys of composable_server._modes.DISPATCHERS, and prefork.
DISPATCH_MODES: Final = ("sync", "threading", "forking", "pool", "prefork")

# Defaults of other modules, as the help text names them (copies, checked
# against the originals by the tests; the server itself uses the originals).
MAX_LINE: Final = 64 * 1024  # composable_server._services.MAX_LINE
DEFAULT_IDLE_TIMEOUT: Final = 300.0  # composable_server.policies.DEFAULT_BUDGET.idle
# composable_server.prefork.DEFAULT_WORKERS
DEFAULT_WORKERS: Final = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
HANDOVER_FDNAME: Final = "composable-server-handover"  # composable_server.prefork.HANDOVER_FDNAME
PROXY_MODES: Final = ("v1", "v2", "any")  # typing.get_args(composable_server.proxy.ProxyMode)
DEFAULT_TRUSTED: Final = ("127.0.0.0/8", "::1/128")  # composable_server.proxy.DEFAULT_TRUSTED

_EPILOG: Final = """\
examples:
  composable-server serve
      upper-case echo on 127.0.0.1:9999; try: printf 'hello\\n' | nc 127.0.0.1 9999
  composable-server serve --port 0 --dispatch threading --log-level debug
      a free port (printed as "listening on tcp 127.0.0.1:PORT"), a thread per request
  composable-server serve --transport udp --port 9999
      one datagram in, its upper-case copy back
  composable-server serve --transport unix --path /tmp/upper.sock --dispatch forking
  composable-server serve --service http --port 8000 --directory ./public
  composable-server serve --allow 127.0.0.0/8 --allow ::1 --host ::
  composable-server serve --service http --port 8443 --certfile cert.pem --keyfile key.pem
      HTTPS (add --ca-certs ca.pem to require client certificates)
  systemd-socket-activate -l 127.0.0.1:8000 composable-server serve --systemd --service http
      serve on the socket systemd passed (see README, "Deploying")
  composable-server serve --proxy-protocol v2 --proxy-trust 10.0.0.5
      behind HAProxy (send-proxy-v2) at 10.0.0.5: handlers and logs see the real client
  composable-server demo
      every server kind in turn, with a table of the results

SIGTERM or SIGINT stops accepting, lets requests in flight finish (at most
--grace seconds), and exits 0.  With --dispatch prefork, the supervisor also
takes SIGHUP (rolling restart of the workers), SIGUSR2 (run this command
again on the same socket, then hand over), SIGTTIN/SIGTTOU (one worker
more/fewer).
"""


class _TerminalWidth(argparse.HelpFormatter):
    """A help formatter as wide as :func:`shutil.get_terminal_size` says, as
    argparse's own, without importing shutil: shutil loads zlib, bz2, lzma
    and fnmatch (three extension modules), a tenth of ``serve --help`` on
    Python 3.13 (issue 18), and argparse builds a formatter for every
    ``add_argument`` there, so even building the parser would load it."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # argparse's margin
        super().__init__(prog, indent_increment, max_help_position, width)


class _Formatter(_TerminalWidth):
    """argparse's default help formatter (text wrapped) at the terminal's width."""


class _RawDescriptionFormatter(_TerminalWidth, argparse.RawDescriptionHelpFormatter):
    """:class:`argparse.RawDescriptionHelpFormatter` at the terminal's width."""


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS when it is a positive
    integer, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        columns = 0 if stdout is None else os.get_terminal_size(stdout.fileno()).columns
    except (ValueError, OSError):  # not a terminal; or stdout closed or detached
        columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer in 0..65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) of --metrics."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _version() -> str:
    import importlib.metadata  # here: it costs a fifth of the command line's start, for --version only

    try:
        return importlib.metadata.version("composable-server")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: print ``prog version`` to stdout and exit 0; the version
    is read from the installed distribution only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``composable-server``."""
    parser = _Parser(
        prog=PROG,
        description="Python's socketserver, assembled from typed components.",
        epilog=_EPILOG,
        formatter_class=_RawDescriptionFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="{serve,demo}")
    serve = commands.add_parser(
        "serve",
        help="run a server until SIGINT/SIGTERM",
        description="Run a server until SIGINT or SIGTERM, then stop gracefully.",
        epilog=_EPILOG,
        formatter_class=_RawDescriptionFormatter,
    )
    # Filled in by the usage checks (--systemd's socket); None for code that
    # builds a server from parsed arguments directly.
    serve.set_defaults(inherited=None)
    serve.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="socket kind (default: tcp; with --systemd, the kind of the passed socket, which must match if given; "
        "unix-dgram is the older name of unix-datagram)",
    )
    serve.add_argument("--host", help=f"IP address or name to bind (default: {DEFAULT_HOST}; '::1' or '::' for IPv6)")
    serve.add_argument("--port", type=_port, help=f"port to bind; 0 picks a free one (default: {DEFAULT_PORT})")
    serve.add_argument("--path", help="socket path, for --transport unix and unix-datagram")
    serve.add_argument(
        "--dispatch",
        choices=DISPATCH_MODES,
        default="sync",
        help="where requests run (default: sync; pool: 16 reused threads; prefork: --workers processes, "
        "each with such a pool)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"worker processes for --dispatch prefork (default: one per CPU, here {DEFAULT_WORKERS})",
    )
    serve.add_argument(
        "--service",
        choices=SERVICES,
        default="upper",
        help="upper: one line or datagram in, upper-cased back (default); echo: unchanged; "
        "lines: every line of a connection upper-cased back, until EOF (stream transports only); "
        "http: files of --directory (stream transports only)",
    )
    serve.add_argument(
        "--park",
        action="store_true",
        help="--service lines: between lines, park the connection in the server's poll set "
        "instead of holding a worker (thousands of idle connections on --threads N); "
        "--service http: HTTP/1.1 keep-alive, parked between requests",
    )
    serve.add_argument("--directory", help="directory served by --service http (default: the current one)")
    serve.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="admit only clients in this network (repeatable), e.g. 127.0.0.0/8 or ::1",
    )
    serve.add_argument(
        "--deny", action="append", default=[], metavar="CIDR", help="refuse clients in this network (repeatable)"
    )
    serve.add_argument(
        "--threads",
        type=_count,
        default=None,
        metavar="N",
        help="threads of --dispatch pool, and of each prefork worker's pool (default: 16)",
    )
    serve.add_argument(
        "--max-requests",
        type=_count,
        default=None,
        metavar="N",
        help="--dispatch prefork: recycle a worker after N requests (it drains first)",
    )
    serve.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="J",
        help="add a random 0..J to --max-requests per worker, so workers do not recycle together (default: 0)",
    )
    serve.add_argument(
        "--backlog", type=_count, default=None, metavar="N", help="listen() backlog (default: the system's maximum)"
    )
    serve.add_argument(
        "--max-line",
        type=_count,
        default=None,
        metavar="BYTES",
        help=f"upper/echo: the longest line read as one request (default: {MAX_LINE})",
    )
    budgets = serve.add_argument_group("per-connection time budgets (stream transports)")
    budgets.add_argument(
        "--first-byte-timeout",
        type=_limit,
        metavar="SECONDS",
        help="close a connection silent this long before its handler runs (default: none)",
    )
    budgets.add_argument(
        "--idle-timeout",
        type=_limit,
        metavar="SECONDS",
        help=f"fail a read or write blocked this long (default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    budgets.add_argument(
        "--lifetime", type=_limit, metavar="SECONDS", help="cut a connection older than this (default: none)"
    )
    tls = serve.add_argument_group("TLS (stream transports)")
    tls.add_argument("--certfile", help="PEM certificate chain: serve TLS")
    tls.add_argument("--keyfile", help="PEM private key (default: in --certfile)")
    tls.add_argument("--ca-certs", metavar="FILE", help="PEM CA bundle: require client certificates signed by it")
    ops = serve.add_argument_group("operations")
    ops.add_argument(
        "--systemd",
        action="store_true",
        help="serve on the socket passed by systemd socket activation (LISTEN_FDS); exit 2 without one",
    )
    ops.add_argument(
        "--systemd-name",
        metavar="NAME",
        help="with --systemd: the socket named NAME (FileDescriptorName=, or a position 0, 1, ... "
        "when the sockets have no names); default: the first",
    )
    ops.add_argument("--pid-file", metavar="PATH", help="write the server's pid here once bound; removed on exit")
    ops.add_argument("--user", help="after binding, switch to this user (and its groups)")
    ops.add_argument("--group", help="after binding, switch to this group (default: --user's primary group)")
    proxy = serve.add_argument_group("behind a load balancer")
    proxy.add_argument(
        "--proxy-protocol",
        choices=PROXY_MODES,
        help="require a PROXY protocol header (HAProxy send-proxy[-v2], nginx proxy_protocol) on every "
        "connection or datagram, and serve the client it names; datagrams: v2 only",
    )
    proxy.add_argument(
        "--proxy-trust",
        action="append",
        default=[],
        metavar="CIDR",
        help="proxies allowed to send the header (repeatable; default: " + ", ".join(DEFAULT_TRUSTED) + ")",
    )
    observe = serve.add_argument_group("observing")
    observe.add_argument(
        "--metrics",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs the 'metrics' extra)",
    )
    observe.add_argument(
        "--access-log", action="store_true", help="log one line per finished request (composable_server.access)"
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower, help="default: info")
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM/SIGINT, wait this long for requests in flight (default: {DEFAULT_GRACE:g})",
    )
    demo = commands.add_parser(
        "demo",
        help="start every server kind in turn, send requests, print a table",
        description="Start every server kind (TCP/UDP/Unix stream/Unix datagram x sync/threading/forking) "
        "on free local addresses, send a few requests to each, print a table; exit 0 if every reply is correct.",
        formatter_class=_Formatter,
    )
    demo.add_argument("--requests", type=int, default=3, help="requests per server kind (default: 3)")
    demo.add_argument("--timeout", type=_seconds, default=5.0, help="client timeout in seconds (default: 5)")
    return parser


def _activated(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--systemd: find the passed socket, check it against --transport, set
    ``args.transport`` and ``args.inherited``; exit 2 with one line if none fits."""
    import socket

    from .exceptions import ActivationError, InheritedSocketError
    from .systemd import (
        IP_FAMILIES,
        InheritedDatagramTransport,
        InheritedStreamTransport,
        check_socket,
        listen_fds,
        select_socket,
    )

    # The kernel's (family, type) of each transport name, to check the
    # inherited socket against --transport or to name it when none is given.
    socket_kinds = {
        "tcp": (IP_FAMILIES, socket.SOCK_STREAM),
        "udp": (IP_FAMILIES, socket.SOCK_DGRAM),
        "unix": (frozenset({socket.AF_UNIX}), socket.SOCK_STREAM),
        "unix-datagram": (frozenset({socket.AF_UNIX}), socket.SOCK_DGRAM),
        "unix-dgram": (frozenset({socket.AF_UNIX}), socket.SOCK_DGRAM),  # the older name
    }
    for option in ("host", "port", "path", "backlog"):
        if getattr(args, option) is not None:
            parser.error(f"--{option} does not apply to --systemd (the socket unit decides)")
    try:
        chosen = select_socket(listen_fds(required=True), args.systemd_name)
        sock = chosen.socket
        if args.transport is None:
            family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            names = [name for name, fits in socket_kinds.items() if family in fits[0] and kind == fits[1]]
            if not names:
                # No transport fits: let check_socket name what it is.
                check_socket(sock, families=frozenset({*IP_FAMILIES, socket.AF_UNIX}), name=chosen.name)
                check_socket(sock, kind=socket.SOCK_STREAM, name=chosen.name)
                parser.error(f"--systemd: {chosen.label} is not a socket this server can serve")
            args.transport = names[0]
        else:
            families, kind = socket_kinds[args.transport]
            check_socket(sock, families=families, kind=kind, name=chosen.name)
        if args.transport in STREAM_TRANSPORTS:
            args.inherited = InheritedStreamTransport(sock, name=chosen.name)
        else:
            args.inherited = InheritedDatagramTransport(sock, name=chosen.name)
    except (ActivationError, InheritedSocketError) as exc:
        parser.error(f"--systemd: {_one_line(exc)}")


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations that cannot work, with one line each."""
    args.inherited = None
    if os.environ.get("LISTEN_FDNAMES") == HANDOVER_FDNAME and os.environ.get("LISTEN_PID") == str(os.getpid()):
        # Re-executed by our predecessor (SIGUSR2): its socket is fd 3, and
        # the address options describe what it bound.
        args.systemd, args.systemd_name = True, HANDOVER_FDNAME
        args.host = args.port = args.path = args.backlog = None
    if args.systemd_name is not None and not args.systemd:
        parser.error("--systemd-name applies only to --systemd")
    if args.systemd:
        _activated(parser, args)
    elif args.transport is None:
        args.transport = "tcp"
    unix = args.transport in UNIX_TRANSPORTS
    if args.inherited is not None:
        pass  # the address options were refused above
    elif unix:
        if args.path is None:
            parser.error(f"--transport {args.transport} needs --path")
        for option in ("host", "port"):
            if getattr(args, option) is not None:
                parser.error(f"--{option} does not apply to --transport {args.transport}; use --path")
    elif args.path is not None:
        parser.error(f"--path applies to the unix transports, not --transport {args.transport}")
    if args.service in ("http", "lines") and args.transport not in STREAM_TRANSPORTS:
        parser.error(f"--service {args.service} needs a stream transport (tcp or unix), not {args.transport}")
    if args.park and args.service not in ("lines", "http"):
        parser.error(f"--park applies only to --service lines and http, not --service {args.service}")
    if args.proxy_trust and args.proxy_protocol is None:
        parser.error("--proxy-trust applies only with --proxy-protocol")
    if args.proxy_protocol == "v1" and args.transport not in STREAM_TRANSPORTS:
        parser.error(f"--proxy-protocol v1 is for stream transports; datagrams carry v2, not {args.transport}")
    if args.workers is not None:
        if args.dispatch != "prefork":
            parser.error("--workers applies only to --dispatch prefork")
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.directory is not None:
        if args.service != "http":
            parser.error("--directory applies only to --service http")
        if not os.path.isdir(args.directory):
            parser.error(f"--directory {args.directory!r} is not a directory")
    _check_operations(parser, args)


def _check_operations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    stream = args.transport in STREAM_TRANSPORTS
    if args.max_requests is not None and args.dispatch != "prefork":
        parser.error("--max-requests applies only to --dispatch prefork")
    if args.max_requests_jitter:
        if args.max_requests is None:
            parser.error("--max-requests-jitter needs --max-requests")
        if args.max_requests_jitter < 0:
            parser.error(f"--max-requests-jitter must be >= 0, got {args.max_requests_jitter}")
    if args.threads is not None and args.dispatch not in ("pool", "prefork"):
        parser.error("--threads applies only to --dispatch pool and prefork")
    if args.max_line is not None and args.service == "http":
        parser.error("--max-line applies to the line services (upper, echo); http.server has its own limit")
    for option in ("max_line", "backlog", "first_byte_timeout", "idle_timeout", "lifetime", "certfile"):
        if getattr(args, option) is not None and not stream:
            parser.error(f"--{option.replace('_', '-')} applies only to stream transports, not {args.transport}")
    if args.certfile is None:
        for option in ("keyfile", "ca_certs"):
            if getattr(args, option) is not None:
                parser.error(f"--{option.replace('_', '-')} needs --certfile")
    else:
        import ssl  # here: TLS loads only for a server that serves it

        try:
            args.tls_context = _tls_context(args)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"cannot load the TLS certificate or key: {_one_line(exc)}")
    args.uid = args.gid = None
    import grp  # here: grp is an extension module to load, for --user/--group only
    import pwd

    if args.user is not None:
        try:
            entry = pwd.getpwnam(args.user)
        except KeyError:
            parser.error(f"--user {args.user!r}: no such user")
        args.uid, args.gid = entry.pw_uid, entry.pw_gid
    if args.group is not None:
        try:
            args.gid = grp.getgrnam(args.group).gr_gid
        except KeyError:
            parser.error(f"--group {args.group!r}: no such group")


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.certfile, args.keyfile)
    if args.ca_certs is not None:
        context.load_verify_locations(cafile=args.ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
