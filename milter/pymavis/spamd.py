"""A small synchronous spamd client (SPAMC/1.5): PING, CHECK, SYMBOLS, REPORT, HEADERS, TELL.

Our own rather than PyPI's (see DEPENDENCIES.md: spamassassin-client reports "spam" when
spamd fails, `spamc` is Python 2, aiospamc is async-only).

    client = SpamdClient("unix:/run/spamd.sock", user="amavis", timeout=30)
    reply = client.symbols(message)     # SpamReply(score=1005.2, required=5.0, is_spam=True,
    reply.tests                         #   tests=("GTUBE", "MISSING_DATE", ...))

Socket specs are netclient.py's (parse_socket_spec): `unix:/path`, `inet:HOST:PORT`,
`inet:PORT@HOST`. A bad spec is a ValueError at construction time.

Which command, measured against spamd 4.0.1 (every one returns "Spam: True ; 1005.2 / 5.0",
so score, required score and verdict come with all of them):
- symbols(): SYMBOLS, the rule names as one comma-separated line: the machine format, no
  scores. The one to use per message.
- report(): REPORT, SpamAssassin's text report; we parse its "pts rule name" table into
  `scores` ((name, points) pairs). The points are rounded to one decimal ("1000", "-0.0")
  and the table is meant for people, so this is the less reliable way to get scores.
  spamd has no command returning names with exact scores; for those, run spamd with
  `--cf='add_header all Tests _TESTSSCORES(,)_'` and call headers(): X-Spam-Tests then
  reads "GTUBE=1000,MISSING_DATE=2.739,...".
- headers(): HEADERS, the header block SpamAssassin would give the message (X-Spam-Status,
  X-Spam-Flag, X-Spam-Level, ...) in `headers`; `tests` is read from X-Spam-Status. Note
  that with SpamAssassin's default `report_safe 1` a spam's header block is that of the
  report wrapping it (a new Content-Type: multipart/mixed).
- check(): CHECK, verdict and score only.
- tell(): TELL (Message-class: spam|ham, Set: local) for learning; spamd answers EX_UNAVAILABLE
  (SpamdServerError, code 69) unless started with --allow-tell, and EX_OK without "DidSet"
  for a message it had already learned as that class (tell() returns False).

Protocol (spamd(8), "PROTOCOL"): "COMMAND SPAMC/1.5\\r\\n", headers (User:, Content-length:,
Compress: zlib), a blank line, the message; spamd answers "SPAMD/1.1 0 EX_OK\\r\\n", headers
(Spam:, Content-length:), a blank line, a body, and closes. With `Compress: zlib` spamd
reads the compressed body up to EOF, not up to Content-length: we half-close after sending,
always. One connection per command: the client object holds only settings and is safe to
share between threads.

Limits: the message size is the caller's business: spamd spends 90-430 ms on an ordinary
message and seconds on megabytes (spamc's default cap is 500 KB); cut or skip before
calling. MAX_REPLY_BYTES = 1 MiB: no reply to these commands carries the message back
(no PROCESS), and HEADERS returns at most the message's header block; more means we are not
talking to spamd.

Timeouts, as in clamd.py: `connect_timeout` bounds the connect (over it, refused or no
socket file: SpamdUnavailable); `timeout` bounds everything after it as one deadline
(SpamdTimeout). Failures are SpamdError subclasses naming the spec: SpamdUnavailable,
SpamdTimeout, SpamdProtocolError (empty, malformed or truncated reply) and SpamdServerError
(spamd answered an EX_* code other than EX_OK: `.code`, e.g. 76 EX_PROTOCOL, 69
EX_UNAVAILABLE). None of them means "ham".

Configuration keys: none read here; the caller passes spec, user, compression and timeouts.
"""

from __future__ import annotations

import re
import socket
import time
import zlib
from dataclasses import dataclass

from pymavis import netclient

MAX_REPLY_BYTES = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 3.0   # a local spamd accepts at once; 3 s rides out one lost SYN
DEFAULT_TIMEOUT_S = 30.0          # spamd takes under 0.5 s for a mail-sized message
PROTOCOL = b"SPAMC/1.5"

_STATUS = re.compile(rb"SPAMD/(\d+\.\d+) +(\d+) +(.*)")
_SPAM = re.compile(r"(True|False|Yes|No) ; (-?\d+(?:\.\d+)?) / (-?\d+(?:\.\d+)?)")
_REPORT_LINE = re.compile(r" *(-?\d+(?:\.\d+)?) +([A-Z0-9_]+)\b")
_STATUS_TESTS = re.compile(r"\btests=(\S*)")


class SpamdError(Exception):
    """spamd could not give an answer; never to be read as "ham"."""

    def __init__(self, message: str, spec: str):
        super().__init__(f"spamd {spec}: {message}")
        self.spec = spec


class SpamdUnavailable(SpamdError):
    """Nothing to talk to: refused, no such socket file, connect timeout."""


class SpamdTimeout(SpamdError):
    """Connected, but the exchange did not finish within the I/O timeout."""


class SpamdProtocolError(SpamdError):
    """An empty, malformed or truncated reply, or the connection closed early."""


class SpamdServerError(SpamdError):
    """spamd answered an EX_* code other than 0 (EX_OK)."""

    def __init__(self, code: int, text: str, spec: str):
        super().__init__(f"answered {code} {text}", spec)
        self.code = code


@dataclass(frozen=True)
class SpamReply:
    """spamd's verdict. `tests`: rule names (SYMBOLS, REPORT, HEADERS; empty for CHECK);
    `scores`: (name, points) pairs (REPORT only, one decimal); `headers`: HEADERS's block."""

    score: float
    required: float
    is_spam: bool
    tests: tuple[str, ...] = ()
    scores: tuple[tuple[str, float], ...] = ()
    headers: str = ""

    def header(self, name: str) -> str | None:
        """One field of `headers`, unfolded ("X-Spam-Status" -> "Yes, score=1005.2 ...")."""
        unfolded = re.sub(r"\r?\n[ \t]+", " ", self.headers)
        for line in unfolded.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None


class SpamdClient:
    """One spamd, addressed by `spec`; each call opens and closes its own connection."""

    def __init__(self, spec: str, *, user: str | None = None, compress: bool = False,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.address = netclient.parse_socket_spec(spec, "spamd socket")
        self.spec = str(self.address)
        if user is not None and not re.fullmatch(r"[^\s:]+", user):
            raise ValueError(f"spamd user {user!r}: no spaces or colons")
        self.user, self.compress = user, compress
        self.connect_timeout, self.timeout = connect_timeout, timeout

    def __repr__(self) -> str:
        return f"SpamdClient({self.spec!r})"

    def ping(self) -> None:
        """Raise unless spamd answers PONG."""
        status, _headers, _body = self._exchange(b"PING", None)
        if status != "PONG":
            raise SpamdProtocolError(f"PING answered {status!r}", self.spec)

    def check(self, message: bytes) -> SpamReply:
        return self._verdict(self._exchange(b"CHECK", message)[1])

    def symbols(self, message: bytes) -> SpamReply:
        headers, body = self._exchange(b"SYMBOLS", message)[1:]
        tests = tuple(name.strip() for name in body.decode("ascii", "replace").split(","))
        return self._verdict(headers, tests=tuple(t for t in tests if t))

    def report(self, message: bytes) -> SpamReply:
        headers, body = self._exchange(b"REPORT", message)[1:]
        text = body.decode("utf-8", "replace")
        _intro, sep, table = text.partition("\n---- ")     # " pts rule name" ruler
        rows = table.splitlines()[1:] if sep else []
        scores = tuple((m[2], float(m[1])) for row in rows if (m := _REPORT_LINE.match(row)))
        return self._verdict(headers, tests=tuple(n for n, _ in scores), scores=scores)

    def headers(self, message: bytes) -> SpamReply:
        headers, body = self._exchange(b"HEADERS", message)[1:]
        reply = self._verdict(headers, headers=body.decode("utf-8", "replace"))
        status = re.sub(r",\s+", ",", reply.header("X-Spam-Status") or "")   # folded
        m = _STATUS_TESTS.search(status)
        tests = tuple(t for t in m[1].split(",") if t and t != "none") if m else ()
        return SpamReply(reply.score, reply.required, reply.is_spam, tests,
                         headers=reply.headers)

    def tell(self, message: bytes, message_class: str) -> bool:
        """Learn `message` as "spam" or "ham" (Set: local). True when spamd says it did
        ("DidSet: local"); False when it answered EX_OK without that: the message was
        already learned as that class, or (see spamd's log) it could not write its Bayes
        files. TELL needs spamd's --allow-tell, else SpamdServerError code 69."""
        if message_class not in ("spam", "ham"):
            raise ValueError(f"message class {message_class!r}: expected 'spam' or 'ham'")
        extra = {"Message-class": message_class, "Set": "local"}
        headers = self._exchange(b"TELL", message, extra)[1]
        return "local" in headers.get("didset", "")

    # one exchange ------------------------------------------------------------------------

    def _verdict(self, reply_headers: dict[str, str], **fields) -> SpamReply:
        m = _SPAM.fullmatch(reply_headers.get("spam", ""))
        if not m:
            raise SpamdProtocolError(f"no 'Spam: True ; SCORE / REQUIRED' header in "
                                     f"{reply_headers!r}", self.spec)
        return SpamReply(float(m[2]), float(m[3]), m[1] in ("True", "Yes"), **fields)

    def _exchange(self, command: bytes, message: bytes | None,
                  extra: dict[str, str] | None = None) -> tuple[str, dict[str, str], bytes]:
        """Send one request; (status text, headers with lower-case names, body)."""
        head = [command + b" " + PROTOCOL]
        if message is not None:
            if self.compress:
                message = zlib.compress(message)
                head.append(b"Compress: zlib")
            head.append(b"Content-length: %d" % len(message))
        if self.user is not None:
            head.append(b"User: " + self.user.encode())
        head += [f"{k}: {v}".encode() for k, v in (extra or {}).items()]
        request = b"\r\n".join(head) + b"\r\n\r\n" + (message or b"")
        raw = self._send_and_read(request)
        top, sep, body = raw.partition(b"\r\n\r\n")
        lines = top.split(b"\r\n") if sep else raw.rstrip(b"\r\n").split(b"\r\n")
        status = _STATUS.fullmatch(lines[0])
        if not status:
            raise SpamdProtocolError(f"unexpected reply {_show(raw)}", self.spec)
        if status[2] != b"0":
            raise SpamdServerError(int(status[2]), status[3].decode("utf-8", "replace"),
                                   self.spec)
        headers = {}
        for line in lines[1:]:
            key, colon, value = line.decode("utf-8", "replace").partition(":")
            if not colon:
                raise SpamdProtocolError(f"bad header line {line!r}", self.spec)
            headers[key.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) != len(body)):
            raise SpamdProtocolError(f"truncated reply: Content-length {length}, got "
                                     f"{len(body)} bytes", self.spec)
        return status[3].decode("utf-8", "replace"), headers, body

    def _send_and_read(self, request: bytes) -> bytes:
        try:
            sock = netclient.connect(self.address, self.connect_timeout)
        except netclient.ConnectFailed as exc:
            raise SpamdUnavailable(f"{exc} (is spamd running and listening there?)", self.spec) from exc
        deadline = time.monotonic() + self.timeout
        reply = b""
        with sock:
            try:
                _arm(sock, deadline)
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)   # spamd reads a zlib body up to EOF
                while True:
                    _arm(sock, deadline)
                    data = sock.recv(65536)
                    if not data:
                        break
                    reply += data
                    if len(reply) > MAX_REPLY_BYTES:
                        raise SpamdProtocolError(f"reply longer than {MAX_REPLY_BYTES} "
                                                 f"bytes: {_show(reply)}", self.spec)
            except TimeoutError as exc:
                raise SpamdTimeout(f"no complete answer within {self.timeout:g} s (got "
                                   f"{_show(reply)})", self.spec) from exc
            except OSError as exc:
                if not reply:
                    raise SpamdProtocolError(f"exchange failed: {exc.strerror or exc!r}",
                                             self.spec) from exc
        if not reply:
            raise SpamdProtocolError("connection closed without a reply", self.spec)
        return reply


def _arm(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)


def _show(raw: bytes) -> str:
    return repr(raw[:200]) + ("..." if len(raw) > 200 else "")
