"""What the daemon clients (clamd.py, spamd.py) share: where a daemon listens, and how to
reach it within a connect timeout.

Socket specs, as the milter's own `--socket`: `unix:/path` (also `local:/path`),
`inet:HOST:PORT` (Postfix style; an IPv6 HOST in brackets, `inet:[::1]:3310`) and
`inet:PORT@HOST` (libmilter style). A bad spec is a ValueError.

connect() raises ConnectFailed (with a message for the log) when there is nothing to talk
to: refused, no such socket file, or no connection within the timeout. Each client turns
it into its own "unavailable" error; what follows the connect (deadlines, protocol) is the
client's business.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass


class ConnectFailed(Exception):
    """Nothing to talk to at that address."""


@dataclass(frozen=True)
class SocketSpec:
    """Where a daemon listens: a unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


_INET = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:@\[\]]+):(?P<port>\d+)"
                   r"|(?P<lport>\d+)@\[?(?P<lhost>[^\]]+)\]?")


def parse_socket_spec(spec: str, what: str = "socket") -> SocketSpec:
    """'unix:/path', 'local:/path', 'inet:HOST:PORT', 'inet:[V6]:PORT' or 'inet:PORT@HOST'."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("unix", "local") and rest.startswith("/"):
        return SocketSpec(path=rest)
    if sep and kind in ("inet", "inet6") and (m := _INET.fullmatch(rest)):
        host = m["v6"] or m["host"] or m["lhost"]
        port = int(m["port6"] or m["port"] or m["lport"])
        if 0 < port < 65536:
            return SocketSpec(host=host, port=port)
    raise ValueError(f"{what} {spec!r}: expected unix:/path, inet:HOST:PORT or inet:PORT@HOST")


def connect(address: SocketSpec, timeout: float, *, nodelay: bool = False) -> socket.socket:
    """A connected stream socket (TCP_NODELAY on request). Raises ConnectFailed."""
    try:
        if address.is_unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except TimeoutError as exc:
        raise ConnectFailed(f"no connection within {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectFailed(f"cannot connect: {exc.strerror or exc.__class__.__name__}") from exc
    return sock
