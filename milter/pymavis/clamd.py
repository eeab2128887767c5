"""A small synchronous clamd client: PING, VERSION, INSTREAM and FILDES over unix or TCP.

Our own rather than PyPI's `clamd` 1.0.2 (no connect timeout, `send()` with 1 KiB chunks,
a size-limit overrun surfaces as a raw BrokenPipeError; see DEPENDENCIES.md).

    client = ClamdClient("unix:/run/clamav/clamd.ctl", connect_timeout=3, timeout=30)
    reply = client.scan(spool)      # FILDES on a unix socket, INSTREAM over TCP
    reply.infected                  # ("Win.Test.EICAR_HDB-1",) or () when clean

Socket specs (netclient.py), as the milter's own `--socket`: `unix:/path` (also `local:/path`),
`inet:HOST:PORT` (Postfix style; an IPv6 HOST in brackets, `inet:[::1]:3310`) and
`inet:PORT@HOST` (libmilter style). A bad spec is a ValueError at construction time.

Protocol (clamd(8), "COMMANDS"): every command is z-prefixed and NUL-terminated, and so is
clamd's reply; outside a session clamd closes the connection after its reply, and we read
up to that close (so several reply lines, e.g. one per match of an ALLMATCHSCAN, are all
seen). One connection per command: the client object holds only settings and is safe to
share between threads.
- zINSTREAM: the data follows in chunks of `CHUNK_BYTES`, each behind a 4-byte big-endian
  length, then a zero-length chunk. clamd spools the stream to a temp file and scans that.
  Past its StreamMaxLength it answers "INSTREAM size limit exceeded. ERROR" and closes
  without reading the rest; we stop sending as soon as a reply is waiting (and when the
  send fails with EPIPE / ECONNRESET), read that reply and raise ClamdSizeLimit.
- zFILDES (unix sockets only): the command, then one dummy byte carrying the descriptor as
  SCM_RIGHTS ancillary data. No copy: clamd reads the file itself. What we found (clamd
  1.4.6), and what fildes() does about it:
  * clamd scans the whole file from offset 0 and moves the shared file offset (the
    descriptor is the same open file); fildes() restores the offset afterwards.
  * a write-only descriptor, or bytes still in a Python buffer, are answered "OK": clamd
    silently scanned nothing. fildes() refuses a write-only descriptor (ValueError) and
    flushes a file object before passing it; a raw descriptor's writer must have flushed.
  * a pipe or socket is answered "Not a regular file ERROR"; fildes() refuses anything but
    a regular file (ValueError).
  * over TCP clamd waits for a descriptor that cannot come ("No file descriptor received.
    ERROR"); fildes() refuses up front with a ValueError, before connecting.
- Replies: "stream: OK", "stream: NAME FOUND", "fd[12]: NAME FOUND", "TEXT ERROR".
  Signatures from a database that is not ClamAV's signed one are reported with a
  ".UNOFFICIAL" suffix ("Eicar-Test-Signature.UNOFFICIAL").

Limits, with their reason: CHUNK_BYTES = 64 KiB (clamd reads chunks of any size up to its
StreamMaxLength; 64 KiB per sendall keeps the copies small and lets us notice an early
reply within 64 KiB once the kernel's socket buffers are full: over loopback TCP that is
after 2-4 MB more); MAX_REPLY_BYTES = 64 KiB (a clamd reply is one short line per match;
more means we are not talking to clamd). clamd's own limits decide what is scanned:
StreamMaxLength (INSTREAM only; over it: ClamdSizeLimit), MaxFileSize / MaxScanSize /
MaxFiles / MaxRecursion / MaxScanTime (both commands; over them clamd answers "OK" for the
part it skipped, unless `AlertExceedsMax yes`, then "Heuristics.Limits.Exceeded.<Limit>
FOUND"). Run clamd with `AlertExceedsMax yes` and `AlertEncrypted yes`, and treat the names
for which is_heuristic_unchecked() is true as UNCHECKED, never as a virus or as clean.

Timeouts: `connect_timeout` bounds the connect (a timeout there is ClamdUnavailable, as is a
refusal or a missing socket file); `timeout` bounds everything after it (sending the
command and the data, clamd's scan, reading the reply) as one deadline, so a peer that
trickles bytes cannot stretch it; over it: ClamdTimeout. `timeout` must cover clamd's scan
of the largest object sent and stay below the message's scan deadline.

Failures are ClamdError subclasses, each saying what happened and where (the spec):
ClamdUnavailable (nothing to talk to), ClamdTimeout, ClamdSizeLimit, ClamdProtocolError
(an empty, malformed or truncated reply, or the connection closed early) and ClamdScanError
(clamd answered "... ERROR" for another reason). None of them means "clean". Caller bugs
(a bad spec; FILDES over TCP, or of a write-only, closed or non-regular descriptor) are
ValueErrors.

Connection reuse (zIDSESSION) is left out on purpose. Measured here (clamd 1.4.6, loopback,
1000 sequential INSTREAM scans of 68-1200 bytes): a new connection per scan took 0.29-0.41
ms, a session 0.22-0.25 ms; a saving of under 0.2 ms per scan, next to milliseconds of
decoding per message, against session state (clamd's IdleTimeout closes idle sessions,
replies carry request ids, a failed request poisons the connection, one session per
thread). Over a network, a connection costs one round trip more; revisit for a remote clamd.
The same holds for the virus check's method `parts` (one INSTREAM per decoded part: a
message of ten parts saves under 2 ms with a session).

Configuration keys: none read here; the caller passes the spec and the timeouts.
"""

from __future__ import annotations

import copy
import fcntl
import io
import os
import re
import select
import socket
import stat
import struct
import time
from dataclasses import dataclass
from typing import BinaryIO, Union

from pymavis import netclient
from pymavis.netclient import SocketSpec

CHUNK_BYTES = 64 * 1024
MAX_REPLY_BYTES = 64 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 3.0   # a local clamd accepts at once; 3 s rides out one lost SYN
DEFAULT_TIMEOUT_S = 30.0          # a mail-sized object scans in well under a second

_SIZE_LIMIT = "INSTREAM size limit exceeded"
_HEURISTIC_UNCHECKED = ("Heuristics.Encrypted.", "Heuristics.Limits.Exceeded")

Scannable = Union[bytes, bytearray, memoryview, BinaryIO]


# errors ----------------------------------------------------------------------------------

class ClamdError(Exception):
    """clamd could not give an answer; never to be read as "clean"."""

    def __init__(self, message: str, spec: str):
        super().__init__(f"clamd {spec}: {message}")
        self.spec = spec


class ClamdUnavailable(ClamdError):
    """Nothing to talk to: refused, no such socket file, connect timeout."""


class ClamdTimeout(ClamdError):
    """Connected, but the exchange did not finish within the I/O timeout."""


class ClamdSizeLimit(ClamdError):
    """clamd refused the stream: longer than its StreamMaxLength."""


class ClamdProtocolError(ClamdError):
    """An empty, malformed or truncated reply, or the connection closed early."""


class ClamdScanError(ClamdError):
    """clamd answered "... ERROR" (other than the size limit)."""


# values ----------------------------------------------------------------------------------

def is_heuristic_unchecked(name: str) -> bool:
    """True for the names with which clamd says it could not look inside: encrypted
    content (Heuristics.Encrypted.Zip, .RAR, .7Zip, .PDF, ...) and skipped content
    (Heuristics.Limits.Exceeded.MaxFileSize, .MaxScanSize, .MaxFiles, .MaxRecursion,
    .MaxScanTime, .EmailHeaders, ...). The caller maps them to UNCHECKED."""
    return name.startswith(_HEURISTIC_UNCHECKED)


@dataclass(frozen=True)
class ScanReply:
    """clamd's verdict: the names it reported (empty when clean) and its reply as text
    (its lines joined with newlines, terminators dropped)."""

    infected: tuple[str, ...]
    raw: str

    @property
    def clean(self) -> bool:
        return not self.infected

    @property
    def unchecked(self) -> tuple[str, ...]:
        """The reported names that mean "could not look inside" (is_heuristic_unchecked)."""
        return tuple(name for name in self.infected if is_heuristic_unchecked(name))

    @property
    def viruses(self) -> tuple[str, ...]:
        """The reported names that are findings, not "could not look inside"."""
        return tuple(name for name in self.infected if not is_heuristic_unchecked(name))


def parse_socket_spec(spec: str) -> SocketSpec:
    """netclient.parse_socket_spec, naming clamd in its error."""
    return netclient.parse_socket_spec(spec, "clamd socket")


def parse_reply(raw: bytes, spec: str = "?") -> ScanReply:
    """Read a scan reply (one or more NUL- or newline-terminated lines).

    FOUND lines give the names; a reply with no FOUND line must say OK, or it raises:
    ClamdSizeLimit / ClamdScanError for "... ERROR", ClamdProtocolError for anything else.
    A FOUND next to an ERROR line still counts as found: a match is never "clean".
    """
    text = raw.decode("utf-8", "replace")
    lines = [line.strip() for line in re.split(r"[\0\n]", text) if line.strip()]
    if not lines:
        raise ClamdProtocolError("empty reply (closed without an answer)", spec)
    found, ok, errors = [], False, []
    for line in lines:
        if line.endswith(" FOUND"):
            # "stream: NAME FOUND", "fd[12]: NAME FOUND", "/a path: NAME FOUND"
            _where, sep, name = line[: -len(" FOUND")].rpartition(": ")
            if not sep or not name or name != name.strip() or " " in name:
                raise ClamdProtocolError(f"no virus name in {_show(raw)}", spec)
            found.append(name)
        elif line.endswith(": OK"):
            ok = True
        elif line.endswith("ERROR"):
            errors.append(line[: -len("ERROR")].strip())
        else:
            raise ClamdProtocolError(f"unexpected reply {_show(raw)}", spec)
    if found:
        return ScanReply(tuple(found), "\n".join(lines))
    if errors:
        if any(_SIZE_LIMIT in e for e in errors):
            raise ClamdSizeLimit(f"{'; '.join(errors)} (over clamd's StreamMaxLength)", spec)
        raise ClamdScanError("; ".join(errors), spec)
    if ok:
        return ScanReply((), "\n".join(lines))
    raise ClamdProtocolError(f"unexpected reply {_show(raw)}", spec)


def _show(raw: bytes) -> str:
    return repr(raw[:200]) + ("..." if len(raw) > 200 else "")


# the client ------------------------------------------------------------------------------

class ClamdClient:
    """One clamd, addressed by `spec`; each call opens and closes its own connection."""

    def __init__(self, spec: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.address = parse_socket_spec(spec)
        self.spec = str(self.address)
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ClamdClient({self.spec!r})"

    @property
    def can_pass_fd(self) -> bool:
        """FILDES works only over a unix socket."""
        return self.address.is_unix

    def with_timeout(self, timeout: float) -> "ClamdClient":
        """The same clamd with another I/O `timeout`: what is left of a budget that several
        scans share (checks/virus.py, method parts)."""
        other = copy.copy(self)
        other.timeout = timeout
        return other

    # commands ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise unless clamd answers PONG."""
        with _Exchange(self) as ex:
            ex.send(b"zPING\0")
            raw = ex.read_reply()
        if raw.strip(b"\0\n") != b"PONG":
            raise ClamdProtocolError(f"PING answered {_show(raw)}", self.spec)

    def version(self) -> str:
        """'ClamAV 1.4.6/27830/Sat Nov 21 09:23:45 2026': engine, database version and date
        (only 'ClamAV 1.4.6' when clamd has no signed database, as in our tests)."""
        with _Exchange(self) as ex:
            ex.send(b"zVERSION\0")
            raw = ex.read_reply()
        text = raw.strip(b"\0\n").decode("utf-8", "replace")
        if not text.startswith("ClamAV "):
            raise ClamdProtocolError(f"VERSION answered {_show(raw)}", self.spec)
        return text

    def instream(self, data: Scannable) -> ScanReply:
        """Scan bytes, or a binary file object from its current position to its end."""
        with _Exchange(self) as ex:
            ex.send(b"zINSTREAM\0")
            if isinstance(data, (bytes, bytearray, memoryview)):
                view = memoryview(data).cast("B")
                chunks = (view[i:i + CHUNK_BYTES] for i in range(0, len(view), CHUNK_BYTES))
            else:
                chunks = iter(lambda: data.read(CHUNK_BYTES), b"")
            for chunk in chunks:
                if not ex.send(struct.pack(">I", len(chunk)), chunk):
                    break       # clamd answered early: the size limit, or an error
            else:
                ex.send(b"\0\0\0\0")
            raw = ex.read_reply()
        try:
            return parse_reply(raw, self.spec)
        except ClamdSizeLimit:
            raise ClamdSizeLimit(f"stream refused after {ex.sent} bytes sent: longer than "
                                 f"clamd's StreamMaxLength ({_show(raw)})", self.spec) from None

    def fildes(self, file: int | BinaryIO) -> ScanReply:
        """Scan a whole regular file by passing its descriptor (unix socket only).

        `file` is a descriptor or an object with fileno() (flushed first). The descriptor
        must be readable. Its offset is the same after the call as before."""
        if not self.address.is_unix:
            raise ValueError(f"clamd {self.spec}: FILDES passes a file descriptor and needs "
                             "a unix: socket; use instream() (or scan()) over TCP")
        fd = _readable_fd(file)
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            with _Exchange(self) as ex:
                ex.send(b"zFILDES\0")
                ex.send_fd(fd)
                raw = ex.read_reply()
        finally:
            os.lseek(fd, offset, os.SEEK_SET)    # clamd moved it (same open file)
        return parse_reply(raw, self.spec)

    def scan(self, data: Scannable | int) -> ScanReply:
        """Bytes: INSTREAM. A file (descriptor or object with fileno()): the whole file, by
        FILDES over a unix socket, else by INSTREAM read from offset 0 (the file's offset is
        not moved). A file object without a real descriptor: INSTREAM from its position."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.instream(data)
        if not isinstance(data, int):
            try:
                data.fileno()
            except (AttributeError, io.UnsupportedOperation):
                return self.instream(data)      # BytesIO and the like
        if self.address.is_unix:
            return self.fildes(data)
        return self.instream(_PreadFile(_readable_fd(data)))


def _readable_fd(file) -> int:
    if isinstance(file, int):
        fd = file
    else:
        if hasattr(file, "flush"):
            file.flush()    # bytes in Python's buffer are invisible to clamd ("OK")
        fd = file.fileno()
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise ValueError(f"file descriptor {fd}: {exc.strerror}") from exc
    if flags & os.O_ACCMODE == os.O_WRONLY:
        raise ValueError(f"file descriptor {fd} is write-only: clamd would read nothing "
                         "from it and answer OK")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise ValueError(f"file descriptor {fd} is not a regular file (clamd scans only "
                         "those by descriptor; send a pipe's data with instream())")
    return fd


class _PreadFile:
    """read() over a descriptor from offset 0 with pread: the descriptor's offset stays."""

    def __init__(self, fd: int):
        self.fd, self.pos = fd, 0

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data


class _Exchange:
    """One connection: connect, send, read the reply; socket errors become ClamdErrors."""

    def __init__(self, client: ClamdClient):
        self.client = client
        self.spec = client.spec
        self.sock: socket.socket | None = None
        self.deadline = 0.0
        self.sent = 0

    def __enter__(self) -> "_Exchange":
        try:
            # TCP_NODELAY: else the 4-byte terminator after a chunk's tail waits for a delayed ACK
            self.sock = netclient.connect(self.client.address, self.client.connect_timeout, nodelay=True)
        except netclient.ConnectFailed as exc:
            raise ClamdUnavailable(f"{exc} (is clamd running and listening there?)", self.spec) from exc
        self.deadline = time.monotonic() + self.client.timeout
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()

    def _arm(self, doing: str) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ClamdTimeout(f"no answer within {self.client.timeout:g} s ({doing})", self.spec)
        self.sock.settimeout(left)

    def _reply_waiting(self) -> bool:
        """Has clamd said something (or closed) while we are still sending?"""
        poller = select.poll()      # not select(): a milter may hold descriptors past 1024
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def send(self, *parts: bytes | memoryview) -> bool:
        """Send unless clamd has already answered; False when it has (stop sending)."""
        if self._reply_waiting():
            return False
        try:
            for part in parts:
                self._arm(f"sending, {self.sent} bytes sent")
                self.sock.sendall(part)
                self.sent += len(part)
        except TimeoutError as exc:
            raise ClamdTimeout(f"no progress sending within {self.client.timeout:g} s "
                               f"({self.sent} bytes sent)", self.spec) from exc
        except (BrokenPipeError, ConnectionResetError):
            return False    # clamd stopped reading: its reply (if any) says why
        except OSError as exc:
            raise ClamdProtocolError(f"send failed after {self.sent} bytes: {_oserror(exc)}",
                                     self.spec) from exc
        return True

    def send_fd(self, fd: int) -> None:
        try:
            self._arm("passing the descriptor")
            socket.send_fds(self.sock, [b"\0"], [fd])
        except TimeoutError as exc:
            raise ClamdTimeout(f"could not pass the descriptor within {self.client.timeout:g} s",
                               self.spec) from exc
        except OSError as exc:
            raise ClamdProtocolError(f"passing the descriptor failed: {_oserror(exc)}",
                                     self.spec) from exc

    def read_reply(self) -> bytes:
        """Everything up to clamd's close (it closes after each reply outside a session)."""
        reply = b""
        try:
            while True:
                self._arm(f"reading the reply, {len(reply)} bytes so far")
                data = self.sock.recv(4096)
                if not data:
                    break
                reply += data
                if len(reply) > MAX_REPLY_BYTES:
                    raise ClamdProtocolError(f"reply longer than {MAX_REPLY_BYTES} bytes: "
                                             f"{_show(reply)}", self.spec)
        except TimeoutError as exc:
            raise ClamdTimeout(f"no complete answer within {self.client.timeout:g} s "
                               f"(got {_show(reply)})", self.spec) from exc
        except ConnectionResetError as exc:
            if not reply:
                raise ClamdProtocolError(f"connection reset after {self.sent} bytes sent, "
                                         "no reply", self.spec) from exc
        except OSError as exc:
            raise ClamdProtocolError(f"reading the reply failed: {_oserror(exc)}",
                                     self.spec) from exc
        if not reply:
            raise ClamdProtocolError(f"connection closed without a reply ({self.sent} bytes "
                                     "sent)", self.spec)
        if not reply.endswith((b"\0", b"\n")):
            raise ClamdProtocolError(f"truncated reply {_show(reply)} (connection closed "
                                     "before its end)", self.spec)
        return reply


def _oserror(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__
