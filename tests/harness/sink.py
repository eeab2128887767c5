"""An SMTP sink for end-to-end tests: accepts mail on a loopback port and keeps it for asserts.

Postfix relays to it (`relayhost = [127.0.0.1]:PORT`); tests read `sink.messages` or wait with
`sink.wait_for(n)`. Each accepted message keeps the envelope (MAIL FROM, RCPT TO list, the
MAIL/RCPT parameters), the HELO name, the client address, and the raw DATA bytes exactly as
received after dot-unstuffing (CRLF line ends kept, the terminating "." removed).

Why not Postfix's `smtp-sink -d DIR`: its dump rewrites the message (LF line ends, its own
X-Client-Addr/X-Mail-Args/X-Rcpt-Args headers and a Received header prepended, RCPT arguments
unparsed), and it cannot be told to reject the next N transactions. This sink is standard
library only (socketserver, one thread per connection) and does both.

Protocol: EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffing), RSET, NOOP, VRFY (252), QUIT;
anything else 502. It advertises PIPELINING (replies are written in command order, so
pipelined input just works) and 8BITMIME (without it Postfix would convert 8-bit bodies to
quoted-printable before delivering here, and tests would not see the bytes pymavis saw).

Limits, with their reason: command lines up to `MAX_LINE` bytes (RFC 5321 says 512; Postfix
sends long ESMTP parameter lists), a message up to `MAX_MESSAGE_BYTES` (a runaway client must
not eat the test machine's memory; answered 552), and `IDLE_TIMEOUT_S` of silence before the
connection is dropped (a stuck client must not keep a thread forever).

Scripted failures: `sink.set_reply("451 4.3.0 try later", count=2, stage="eom")` answers the
next two transactions with that reply at that stage instead of accepting them; they are
counted in `sink.rejected` and not kept in `messages`.
"""

from __future__ import annotations

import collections
import email
import email.message
import email.policy
import socketserver
import threading
import time
from dataclasses import dataclass, field

from .net import DEFAULT_TIMEOUT_S, LOOPBACK

MAX_LINE = 4096
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
IDLE_TIMEOUT_S = 120.0
STAGES = ("mail", "rcpt", "data", "eom")


@dataclass(frozen=True)
class SinkMessage:
    """One accepted mail transaction."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    helo: str = ""
    peer: str = ""
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[tuple[str, ...], ...] = ()
    queue_id: str = ""

    @property
    def message(self) -> email.message.EmailMessage:
        """The DATA parsed with `email.policy.default` (header lookups are case-insensitive)."""
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class _Transaction:
    mail_from: str
    mail_options: tuple[str, ...]
    scripted: tuple[str, str] | None  # (stage, reply) this transaction must be answered with
    rcpt_tos: list[str] = field(default_factory=list)
    rcpt_options: list[tuple[str, ...]] = field(default_factory=list)
    rejected: bool = False  # counted in SMTPSink.rejected already


def _parse_path(arg: str, keyword: str) -> tuple[str, tuple[str, ...]] | None:
    """Split 'FROM:<a@b> SIZE=1 BODY=8BITMIME' into ('a@b', ('SIZE=1', 'BODY=8BITMIME'))."""
    if not arg.upper().startswith(keyword + ":"):
        return None
    rest = arg[len(keyword) + 1 :].strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        return rest[1:end], tuple(rest[end + 1 :].split())
    parts = rest.split()
    if not parts:
        return None
    return parts[0], tuple(parts[1:])


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(IDLE_TIMEOUT_S)

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        sink = self.server.sink
        peer = self.client_address[0]
        self.reply(f"220 {sink.hostname} ESMTP pymavis test sink")
        helo = ""
        tx: _Transaction | None = None
        try:
            while True:
                raw = self.rfile.readline(MAX_LINE + 1)
                if not raw:
                    return
                if len(raw) > MAX_LINE:
                    self.reply("500 5.5.2 line too long")
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    helo, tx = arg.strip(), None
                    self.reply(
                        f"250-{sink.hostname}\r\n250-PIPELINING\r\n"
                        f"250-SIZE {MAX_MESSAGE_BYTES}\r\n250-8BITMIME\r\n"
                        "250 ENHANCEDSTATUSCODES"
                    )
                elif verb == "HELO":
                    helo, tx = arg.strip(), None
                    self.reply(f"250 {sink.hostname}")
                elif verb == "MAIL":
                    parsed = _parse_path(arg.strip(), "FROM")
                    if tx is not None:
                        self.reply("503 5.5.1 nested MAIL command")
                    elif parsed is None:
                        self.reply("501 5.5.4 syntax: MAIL FROM:<address>")
                    else:
                        scripted = sink._next_scripted()
                        if scripted and scripted[0] == "mail":
                            sink._count_rejected()
                            self.reply(scripted[1])
                        else:
                            tx = _Transaction(parsed[0], parsed[1], scripted)
                            self.reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    parsed = _parse_path(arg.strip(), "TO")
                    if tx is None:
                        self.reply("503 5.5.1 need MAIL command")
                    elif parsed is None:
                        self.reply("501 5.5.4 syntax: RCPT TO:<address>")
                    elif tx.scripted and tx.scripted[0] == "rcpt":
                        if not tx.rejected:
                            tx.rejected = True
                            sink._count_rejected()
                        self.reply(tx.scripted[1])
                    else:
                        tx.rcpt_tos.append(parsed[0])
                        tx.rcpt_options.append(parsed[1])
                        self.reply("250 2.1.5 ok")
                elif verb == "DATA":
                    if tx is None or not tx.rcpt_tos:
                        self.reply("503 5.5.1 need RCPT command")
                    elif tx.scripted and tx.scripted[0] == "data":
                        sink._count_rejected()
                        self.reply(tx.scripted[1])
                        tx = None
                    else:
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        data = self._read_data()
                        if data is None:
                            self.reply("552 5.3.4 message too big for the test sink")
                        elif tx.scripted and tx.scripted[0] == "eom":
                            sink._count_rejected()
                            self.reply(tx.scripted[1])
                        else:
                            queue_id = sink._deliver(tx, data, helo, peer)
                            self.reply(f"250 2.0.0 Ok: queued as {queue_id}")
                        tx = None
                elif verb == "RSET":
                    tx = None
                    self.reply("250 2.0.0 ok")
                elif verb == "NOOP":
                    self.reply("250 2.0.0 ok")
                elif verb == "VRFY":
                    self.reply("252 2.0.0 cannot verify")
                elif verb == "QUIT":
                    self.reply("221 2.0.0 bye")
                    return
                else:
                    self.reply("502 5.5.2 command not implemented")
        except (TimeoutError, ConnectionError):
            return

    def _read_data(self) -> bytes | None:
        """Read DATA up to the lone '.'; undo dot-stuffing. None if over MAX_MESSAGE_BYTES."""
        chunks: list[bytes] = []
        size = 0
        too_big = False
        while True:
            raw = self.rfile.readline(MAX_MESSAGE_BYTES)
            if not raw:
                raise ConnectionError("client closed the connection during DATA")
            if raw in (b".\r\n", b".\n"):
                return None if too_big else b"".join(chunks)
            if raw.startswith(b"."):
                raw = raw[1:]
            size += len(raw)
            if size > MAX_MESSAGE_BYTES:
                too_big, chunks = True, []
            elif not too_big:
                chunks.append(raw)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: "SMTPSink"


class SMTPSink:
    """A threaded SMTP server on a loopback port that keeps every accepted message.

    Use as a context manager or call start()/stop(). `port=0` picks a free port.
    """

    def __init__(self, host: str = LOOPBACK, port: int = 0, *, hostname: str = "sink.test"):
        self.host = host
        self.hostname = hostname
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._messages: list[SinkMessage] = []
        self._scripted: collections.deque[tuple[str, str]] = collections.deque()
        self._rejected = 0
        self._seq = 0

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> "SMTPSink":
        server = _Server((self.host, self._requested_port), _Handler)
        server.sink = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
            name=f"smtp-sink:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> "SMTPSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sink not started")
        return self._server.server_address[1]

    # what tests read ---------------------------------------------------------------------

    @property
    def messages(self) -> list[SinkMessage]:
        """A copy of the accepted messages, in arrival order."""
        with self._cond:
            return list(self._messages)

    @property
    def rejected(self) -> int:
        """How many transactions were answered with a scripted reply."""
        with self._cond:
            return self._rejected

    def wait_for(self, n: int = 1, timeout: float = DEFAULT_TIMEOUT_S) -> list[SinkMessage]:
        """Wait until at least `n` messages have arrived; return all of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sink got {len(self._messages)} message(s), expected {n}, "
                        f"within {timeout:g} s"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages, the scripted replies and the rejected count."""
        with self._cond:
            self._messages.clear()
            self._scripted.clear()
            self._rejected = 0

    def clear_replies(self) -> None:
        """Drop the scripted replies not used yet: accept again from the next transaction."""
        with self._cond:
            self._scripted.clear()

    def set_reply(self, reply: str, count: int = 1, stage: str = "eom") -> None:
        """Answer the next `count` transactions with `reply` (e.g. "451 4.3.0 later") at
        `stage`: "mail", "rcpt" (every RCPT), "data" (the DATA command) or "eom"."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {STAGES}")
        if not reply[:3].isdigit() or reply[0] not in "45":
            raise ValueError(f"reply {reply!r} must start with a 4xx or 5xx code")
        with self._cond:
            self._scripted.extend([(stage, reply)] * count)

    # called by the handler threads -------------------------------------------------------

    def _next_scripted(self) -> tuple[str, str] | None:
        with self._cond:
            if not self._scripted:
                return None
            return self._scripted.popleft()

    def _count_rejected(self) -> None:
        with self._cond:
            self._rejected += 1

    def _deliver(self, tx: _Transaction, data: bytes, helo: str, peer: str) -> str:
        with self._cond:
            self._seq += 1
            queue_id = f"SINK{self._seq:06d}"
            self._messages.append(
                SinkMessage(
                    mail_from=tx.mail_from,
                    rcpt_tos=tuple(tx.rcpt_tos),
                    data=data,
                    helo=helo,
                    peer=peer,
                    mail_options=tx.mail_options,
                    rcpt_options=tuple(tx.rcpt_options),
                    queue_id=queue_id,
                )
            )
            self._cond.notify_all()
            return queue_id
