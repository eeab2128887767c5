"""A milter protocol client: the MTA side of the milter wire protocol, version 6 (stdlib only).

It speaks to a running milter as Postfix 3.7 does, so tests can drive pymavis with any raw
message, with exact control over macros and envelope, and read every reply and edit:

    with MilterClient("127.0.0.1", port) as mc:
        mc.negotiate()
        res = mc.send_message(raw, mail_from="<a@example.org>", rcpts=["<b@example.com>"])
        assert res.action == "continue" and ("insheader", 0, "X-Virus-Scanned", ...) in ...

Wire format (libmilter's mfdef.h): a packet is a 4-byte big-endian length, a 1-byte command
and the data; strings are NUL-terminated; integers are 32-bit big-endian.

What it does as Postfix does (milter8.c, cleanup):
- Offers protocol version 6, every action (SMFIF_* 0x1FF) and every protocol bit of
  libmilter's SMFI_CURR_PROT (the NO* skips, the NR_* no-reply bits, SKIP, RCPT_REJ,
  HDR_LEADSPC; Postfix's MILTER8_V6_PROTO_MASK); then skips the commands the milter said
  no to and reads no reply where it asked for none.
- Sends the macros of a stage (SMFIC_MACRO) just before the stage's command; when the milter
  asked for a list of macros per stage (SMFIR_SETSYMLIST in its negotiation reply), only
  those.
- Splits the raw message into header fields and body like Postfix's cleanup: a header line
  is `Name:` (printable ASCII name, optional blanks before the colon), a line starting with
  a blank continues it, an empty line ends the header, and any other line is the first line
  of the body (so a message without a separator, or starting with an mbox "From " line, is
  all body). Folded lines are joined with "\\n" (Postfix's internal form); the value loses
  its first space after the colon unless HDR_LEADSPC was negotiated. A NUL in a header value
  ends it (milter strings are C strings).
- Body: every line ends in CRLF (bare LF becomes CRLF; a CR not before LF is kept), sent in
  chunks of at most MILTER_CHUNK_SIZE (65535) bytes.
- After each transaction, SMFIC_ABORT (Postfix's mail_reset); close() sends SMFIC_QUIT.

Limits:
- A header field longer than MILTER_MAX_DATA_SIZE (65535) bytes is cut to fit. XXX:
  libmilter refuses a bigger packet and drops the connection; Postfix would send it
  (header_size_limit is 102400) and lose the milter. Tests want the milter's answer instead.
- `timeout` bounds each wait for a reply; a milter that stays silent raises MilterTimeout
  naming the stage.

Failure: MilterTimeout (a TimeoutError) for silence, MilterProtocolError for a closed
connection, an unknown or malformed reply, or a negotiation the MTA could not accept.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

PROTOCOL_VERSION = 6
MILTER_CHUNK_SIZE = 65535       # mfdef.h: body chunk size
MILTER_MAX_DATA_SIZE = 65535    # mfdef.h: libmilter's default limit on a packet's data

# Commands (MTA -> milter), mfdef.h SMFIC_*.
C_ABORT, C_BODY, C_CONNECT, C_MACRO, C_BODYEOB = b"A", b"B", b"C", b"D", b"E"
C_HELO, C_QUIT_NC, C_HEADER, C_MAIL, C_EOH = b"H", b"K", b"L", b"M", b"N"
C_OPTNEG, C_QUIT, C_RCPT, C_DATA, C_UNKNOWN = b"O", b"Q", b"R", b"T", b"U"

# Replies (milter -> MTA), mfdef.h SMFIR_*.
R_ADDRCPT, R_DELRCPT, R_ADDRCPT_PAR, R_SHUTDOWN = b"+", b"-", b"2", b"4"
R_ACCEPT, R_REPLBODY, R_CONTINUE, R_DISCARD = b"a", b"b", b"c", b"d"
R_CHGFROM, R_CONN_FAIL, R_ADDHEADER, R_INSHEADER = b"e", b"f", b"h", b"i"
R_SETSYMLIST, R_CHGHEADER, R_PROGRESS, R_QUARANTINE = b"l", b"m", b"p", b"q"
R_REJECT, R_SKIP, R_TEMPFAIL, R_REPLYCODE = b"r", b"s", b"t", b"y"

# Actions the milter may ask for, mfapi.h SMFIF_*.
F_ADDHDRS, F_CHGBODY, F_ADDRCPT, F_DELRCPT = 0x01, 0x02, 0x04, 0x08
F_CHGHDRS, F_QUARANTINE, F_CHGFROM, F_ADDRCPT_PAR, F_SETSYMLIST = 0x10, 0x20, 0x40, 0x80, 0x100
ALL_ACTIONS = 0x1FF             # SMFI_CURR_ACTS; what Postfix 3.7 offers

# Protocol bits, mfdef.h SMFIP_*.
P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT = 0x01, 0x02, 0x04, 0x08
P_NOBODY, P_NOHDRS, P_NOEOH, P_NR_HDR = 0x10, 0x20, 0x40, 0x80
P_NOUNKNOWN, P_NODATA, P_SKIP, P_RCPT_REJ = 0x100, 0x200, 0x400, 0x800
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
P_NR_DATA, P_NR_UNKN, P_NR_EOH, P_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
P_HDR_LEADSPC = 0x100000
# Postfix milter8.c MILTER8_V6_PROTO_MASK: the V4 skips + SKIP + RCPT_REJ + every NR_* + LEADSPC,
# which is all of libmilter's SMFI_CURR_PROT.
POSTFIX_PROTOCOL = 0x1FFFFF

# Stage -> (command, "no such command" bit, "no reply" bit, SMFIM_* index of its macro list).
_STAGES = {
    "connect": (C_CONNECT, P_NOCONNECT, P_NR_CONN, 0),
    "helo": (C_HELO, P_NOHELO, P_NR_HELO, 1),
    "mail": (C_MAIL, P_NOMAIL, P_NR_MAIL, 2),
    "rcpt": (C_RCPT, P_NORCPT, P_NR_RCPT, 3),
    "data": (C_DATA, P_NODATA, P_NR_DATA, 4),
    "header": (C_HEADER, P_NOHDRS, P_NR_HDR, None),
    "eoh": (C_EOH, P_NOEOH, P_NR_EOH, 6),
    "body": (C_BODY, P_NOBODY, P_NR_BODY, None),
    "eom": (C_BODYEOB, 0, 0, 5),
}

_FINAL = {R_CONTINUE: "continue", R_ACCEPT: "accept", R_REJECT: "reject", R_DISCARD: "discard",
          R_TEMPFAIL: "tempfail", R_REPLYCODE: "replycode", R_SKIP: "skip",
          R_CONN_FAIL: "conn_fail", R_SHUTDOWN: "shutdown"}
_EDITS = {R_ADDHEADER: "addheader", R_INSHEADER: "insheader", R_CHGHEADER: "chgheader",
          R_ADDRCPT: "addrcpt", R_ADDRCPT_PAR: "addrcpt_par", R_DELRCPT: "delrcpt",
          R_QUARANTINE: "quarantine", R_CHGFROM: "chgfrom", R_REPLBODY: "replbody"}

# Postfix is_header_buf(): printable ASCII name without ':', blanks allowed before the colon.
_HEADER_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")

_queue_ids = itertools.count(0x1A2B3C)
# Packets are queued and written together (as Postfix's buffered stream does): one small
# write per packet would meet Nagle's algorithm and delayed ACKs, 40 ms a round.
_FLUSH_BYTES = 256 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)     # Linux only


class MilterProtocolError(Exception):
    pass


class MilterTimeout(TimeoutError):
    pass


class RcptReply(NamedTuple):
    rcpt: str
    action: str
    reply: str | None


@dataclass
class Result:
    action: str                 # continue / accept / reject / discard / tempfail / replycode
    reply: str | None = None    # the SMFIR_REPLYCODE text of the final answer ("552 5.3.4 ...")
    rcpt_replies: list[RcptReply] = field(default_factory=list)
    modifications: list[tuple] = field(default_factory=list)
    stage: str = "eom"          # where the final answer came from


def _cstr(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0] + b"\0"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _enc(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def _bracket(addr: str) -> str:
    return addr if addr.startswith("<") else f"<{addr}>"


def split_message(raw: bytes, *, leading_space: bool = False) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (name, value), body with CRLF line ends), as Postfix hands them on."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [l[:-1] if l.endswith(b"\r") else l for l in lines]
    fields: list[list[bytes]] = []
    start = len(lines)
    for n, line in enumerate(lines):
        if line == b"":
            start = n + 1
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
            continue
        if _HEADER_RE.match(line):
            fields.append([line])
            continue
        start = n
        break
    headers = []
    for parts in fields:
        m = _HEADER_RE.match(parts[0])
        value = b"\n".join([parts[0][m.end():]] + parts[1:])
        if not leading_space and value.startswith(b" "):
            value = value[1:]
        value = value.split(b"\0", 1)[0]
        room = MILTER_MAX_DATA_SIZE - len(m.group(1)) - 2
        headers.append((m.group(1), value[:room]))
    body = b"".join(l + b"\r\n" for l in lines[start:])
    return headers, body


class MilterClient:
    def __init__(self, host: str, port: int, *, timeout: float = 60, actions: int = ALL_ACTIONS,
                 protocol: int = POSTFIX_PROTOCOL):
        self.host, self.port, self.timeout = host, port, timeout
        self.offer_actions, self.offer_protocol = actions, protocol
        self.actions: int | None = None     # what the milter asked for
        self.protocol: int | None = None
        self.version: int | None = None
        self.symlists: dict[int, set[str]] = {}
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._session: tuple | None = None  # (client, helo, connect macros) once connected
        self._session_answer: Result | None = None   # a connect/helo answer that ends the session
        self._stage = "connect"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- wire --------------------------------------------------------------------------
    def _send(self, cmd: bytes, data: bytes = b""):
        """Queue a packet; queued packets go out in one write before we wait for a reply."""
        self._out += struct.pack("!I", len(data) + 1) + cmd + data
        if len(self._out) >= _FLUSH_BYTES:
            self._flush()

    def _flush(self):
        try:
            self._sock.sendall(self._out)
        except socket.timeout:
            raise MilterTimeout(f"milter {self.host}:{self.port} took no data during {self._stage} "
                                f"for {self.timeout:g} s") from None
        except OSError as exc:
            raise MilterProtocolError(f"sending {self._stage}: {exc}") from exc
        self._out.clear()

    def _quickack(self):
        # libmilter writes each reply packet separately and Nagle holds the second (e.g. the
        # "continue" after an insheader) until our ACK, which Linux delays by 40 ms: ask for
        # immediate ACKs. TCP_QUICKACK is not sticky, so this is done before every read.
        if _QUICKACK is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _recv_exact(self, n: int) -> bytes:
        self._flush()
        buf = bytearray()
        while len(buf) < n:
            try:
                self._quickack()
                chunk = self._sock.recv(n - len(buf))
            except socket.timeout:
                raise MilterTimeout(f"milter {self.host}:{self.port} sent no reply to {self._stage} "
                                    f"within {self.timeout:g} s") from None
            except OSError as exc:
                raise MilterProtocolError(f"waiting for the reply to {self._stage}: {exc}") from exc
            if not chunk:
                raise MilterProtocolError(f"milter closed the connection while we waited for the reply "
                                          f"to {self._stage}")
            buf += chunk
        return bytes(buf)

    def _recv(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        if length < 1:
            raise MilterProtocolError(f"empty packet in reply to {self._stage}")
        packet = self._recv_exact(length)
        return packet[:1], packet[1:]

    def _answer(self, mods: list | None) -> tuple[str, str | None]:
        """Read until a final reply; edits go to `mods` (None: edits are a protocol error here)."""
        while True:
            code, data = self._recv()
            if code == R_PROGRESS:
                continue
            if code in _FINAL:
                reply = _text(data.rstrip(b"\0")) if code == R_REPLYCODE else None
                return _FINAL[code], reply
            if code in _EDITS and mods is not None:
                mods.append(self._edit(code, data))
                continue
            raise MilterProtocolError(f"unexpected reply {code!r} ({data[:80]!r}) to {self._stage}")

    @staticmethod
    def _edit(code: bytes, data: bytes) -> tuple:
        name = _EDITS[code]
        if code == R_REPLBODY:
            return (name, data)
        if code in (R_INSHEADER, R_CHGHEADER):
            (index,) = struct.unpack("!I", data[:4])
            hname, value = (data[4:].split(b"\0") + [b""])[:2]
            return (name, index, _text(hname), _text(value))
        args = [_text(a) for a in data.rstrip(b"\0").split(b"\0")] if data.rstrip(b"\0") else [""]
        return (name, *args)

    def _step(self, stage: str, data: bytes = b"", macros: dict | None = None,
              mods: list | None = None) -> tuple[str, str | None] | None:
        """Send one stage's macros and command; its answer, or None if skipped or no reply."""
        cmd, skip_bit, noreply_bit, macro_index = _STAGES[stage]
        if self.protocol & skip_bit:
            return None
        self._stage = stage
        if macros and macro_index is not None:
            wanted = self.symlists.get(macro_index)
            pairs = [(k, v) for k, v in macros.items()
                     if v is not None and (wanted is None or k in wanted or k.strip("{}") in wanted)]
            if pairs:
                self._send(C_MACRO, cmd + b"".join(_cstr(_enc(k)) + _cstr(_enc(v)) for k, v in pairs))
        self._send(cmd, data)
        if self.protocol & noreply_bit:
            return None
        return self._answer(mods)

    # --- session -----------------------------------------------------------------------
    def negotiate(self) -> tuple[int, int]:
        """Connect and exchange SMFIC_OPTNEG; returns (actions, protocol) the milter asked for."""
        if self.protocol is not None:
            return self.actions, self.protocol
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._stage = "negotiate"
        self._send(C_OPTNEG, struct.pack("!III", PROTOCOL_VERSION, self.offer_actions, self.offer_protocol))
        code, data = self._recv()
        if code != C_OPTNEG or len(data) < 12:
            raise MilterProtocolError(f"bad negotiation reply {code!r} {data[:40]!r}")
        version, actions, protocol = struct.unpack("!III", data[:12])
        if not 2 <= version <= PROTOCOL_VERSION:
            raise MilterProtocolError(f"milter protocol version {version} not supported")
        if actions & ~self.offer_actions:
            raise MilterProtocolError(f"milter asked for actions {actions:#x} beyond those offered "
                                      f"{self.offer_actions:#x}")
        if protocol & ~self.offer_protocol:
            raise MilterProtocolError(f"milter asked for protocol bits {protocol:#x} beyond those offered "
                                      f"{self.offer_protocol:#x}")
        rest = data[12:]
        while len(rest) >= 5:
            (index,) = struct.unpack("!I", rest[:4])
            names, _, rest = rest[4:].partition(b"\0")
            self.symlists[index] = set(_text(names).split())
        self.version, self.actions, self.protocol = version, actions, protocol
        return actions, protocol

    def _open_session(self, client, helo, connect_macros) -> Result | None:
        key = (tuple(client), helo, tuple(sorted(connect_macros.items())))
        if self._session is not None:
            if key != self._session:
                raise ValueError("client, helo and connect macros belong to the connection: "
                                 "use a new MilterClient for different ones")
            return self._session_answer
        if self.protocol is None:
            self.negotiate()
        self._session = key
        hostname, addr, port = client
        if addr is None:
            family = b"U"
            info = _cstr(_enc(hostname)) + family
        else:
            family = b"4" if ipaddress.ip_address(addr).version == 4 else b"6"
            info = _cstr(_enc(hostname)) + family + struct.pack("!H", port) + _cstr(_enc(addr))
        for stage, data, macros in (("connect", info, connect_macros), ("helo", _cstr(_enc(helo)), None)):
            answer = self._step(stage, data, macros)
            if answer is not None and answer[0] != "continue":
                self._session_answer = Result(answer[0], answer[1], stage=stage)
                return self._session_answer
        return None

    def send_message(self, raw: bytes, *, mail_from: str, rcpts: Iterable[str], macros: dict | None = None,
                     client=("client.example", "192.0.2.10", 41234), helo: str = "client.example",
                     mail_args: Iterable[str] = ()) -> Result:
        """One SMTP transaction. `macros` maps a stage ("connect", "helo", "mail", "rcpt", "data",
        "eoh", "eom") to macros added to (or, with value None, removed from) the defaults.
        Client, HELO and connect macros are sent with the first message of the connection."""
        staged = self.default_macros(client)
        for stage, extra in (macros or {}).items():
            if stage not in staged:
                raise ValueError(f"unknown macro stage {stage!r}; one of {', '.join(staged)}")
            staged[stage].update(extra)
        if self._session is not None and self._sock is None:
            raise MilterProtocolError("this client's connection was lost or closed; use a new MilterClient")
        try:
            ended = self._open_session(client, helo, staged["connect"])
            if ended is not None:
                return Result(ended.action, ended.reply, stage=ended.stage)
            result = self._transaction(raw, _bracket(mail_from), [_bracket(r) for r in rcpts], staged,
                                       list(mail_args))
            self._stage = "abort"
            self._send(C_ABORT)     # Postfix's mail_reset after every transaction; no reply
            self._flush()
            return result
        except (MilterTimeout, MilterProtocolError):
            self._drop()            # mid-transaction: the milter's state is unknown
            raise

    def send_many(self, raws: Iterable[bytes], **kwargs) -> list[Result]:
        """Several transactions on this connection, each with the same send_message arguments."""
        return [self.send_message(raw, **kwargs) for raw in raws]

    def default_macros(self, client) -> dict[str, dict[str, str | None]]:
        qid = f"{next(_queue_ids):X}"
        return {
            "connect": {"j": "mx.example.com", "{daemon_name}": "mx.example.com", "{daemon_port}": "25",
                        "{client_addr}": client[1], "{client_port}": str(client[2])},
            "helo": {}, "mail": {"i": qid}, "rcpt": {}, "data": {}, "eoh": {}, "eom": {"i": qid},
        }

    def _transaction(self, raw, mail_from, rcpts, staged, mail_args) -> Result:
        def mac(stage):
            return {k: v for k, v in staged[stage].items() if v is not None}

        answer = self._step("mail", b"".join(_cstr(_enc(a)) for a in [mail_from, *mail_args]), mac("mail"))
        if answer is not None and answer[0] != "continue":
            return Result(answer[0], answer[1], stage="mail")
        rcpt_replies, accepted = [], 0
        for rcpt in rcpts:
            answer = self._step("rcpt", _cstr(_enc(rcpt)), mac("rcpt")) or ("continue", None)
            rcpt_replies.append(RcptReply(rcpt, *answer))
            if answer[0] in ("accept", "discard"):      # for the whole message
                return Result(answer[0], answer[1], rcpt_replies, stage="rcpt")
            accepted += answer[0] == "continue"
        if not accepted:
            last = rcpt_replies[-1] if rcpt_replies else RcptReply("", "reject", None)
            return Result(last.action, last.reply, rcpt_replies, stage="rcpt")

        def ended(stage, answer):
            if answer is not None and answer[0] not in ("continue", "skip"):
                return Result(answer[0], answer[1], rcpt_replies, stage=stage)
            return None

        if r := ended("data", self._step("data", b"", mac("data"))):
            return r
        leadspc = bool(self.protocol & P_HDR_LEADSPC)
        headers, body = split_message(raw, leading_space=leadspc)
        for name, value in headers:
            if r := ended("header", self._step("header", name + b"\0" + value + b"\0")):
                return r
        if r := ended("eoh", self._step("eoh", b"", mac("eoh"))):
            return r
        for off in range(0, len(body), MILTER_CHUNK_SIZE):
            answer = self._step("body", body[off:off + MILTER_CHUNK_SIZE])
            if answer is not None and answer[0] == "skip":
                break
            if r := ended("body", answer):
                return r
        mods: list[tuple] = []
        answer = self._step("eom", b"", mac("eom"), mods)
        return Result(answer[0], answer[1], rcpt_replies, mods, stage="eom")

    def _drop(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._out.clear()

    def close(self):
        """Say QUIT (if the connection is still up) and close it."""
        if self._sock is None:
            return
        try:
            self._send(C_QUIT)
            self._flush()
        except (MilterProtocolError, MilterTimeout):
            pass            # the milter is gone already; nothing left to tell it
        finally:
            self._out.clear()
            self._sock.close()
            self._sock = None
