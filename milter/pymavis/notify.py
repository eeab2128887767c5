"""Notifications, as amavisd-new sends them: a DSN to the sender, a notice to an admin, a
warning to a blocked recipient. This module builds each as SMTP-ready bytes (a `Notice`)
and queues it durably (`Outbox`); notices.py decides who is told.

Building. Every notice is text from a template (`Templates`), with the message's `Facts`
put in through `${name}` macros. The facts are untrusted (the Subject, the sender, virus
names...), so every value is made one line first: RFC 5322 folding undone, control
characters (C0, C1, DEL, U+2028/U+2029, which Python's splitlines breaks on) turned into
spaces, cut at `VALUE_LIMIT` characters. Header values are then encoded by the email
package, folded at 78: plain ASCII by the header registry, anything else RFC 2047 encoded
whole by email.header. Not the registry for those: it decodes a `=?` in its input as an
encoded word, and an encoded CR LF comes out raw, a new header line (Python 3.11 does
exactly that). As a last guard each header line is checked before it is written.
Addresses go into To: as addresses, not as display text; a non-ASCII one stays UTF-8 (it
cannot be RFC 2047 encoded). Bodies are UTF-8, sent 8bit, or quoted-printable when a line
would pass 998 bytes; every line ends in CRLF.

The sender DSN (RFC 3464) is multipart/report: the template's text, a
message/delivery-status part (one block per failed recipient, Status 5.x.x) and the
original header section as text/rfc822-headers (8-bit kept, cut at
`MAX_ORIGINAL_HEADERS` bytes). `dsn_suppressed` says when none may go (amavis's rules:
null sender, a virus known to forge senders, bulk or automatic mail, NOTIFY=NEVER, spam
over the DSN cutoff).

Templates: a text file per notice (`TEMPLATE_NAMES`): `#` comment lines, header lines,
an empty line, the body. `notify.templates_dir` holds replacements by file name; the
others stay the shipped ones (templates/ next to this file). An unknown macro, a stray
`$`, a header pymavis sets itself or a file that is not a known template is a
TemplateError naming the file and line, raised when `Templates` is built, so a
configuration check finds it.

Queueing. `Outbox.put()` writes one file per notice: a JSON line (kind, envelope, time
queued) and then the message bytes, written under DIR/tmp, fsynced, renamed into DIR,
the directory fsynced. The outbox's thread sends the files oldest first with the caller's
`send` (any exception is a failed attempt), deletes each on success and retries the
others with exponential backoff from `retry_s` up to `MAX_RETRY_S`; a notice still
unsent `max_age_s` after it was queued is moved to DIR/failed/ and logged as given up.
A file is locked (flock) while it is sent, so two outboxes on one directory never send
it twice. A failure to queue raises OutboxError naming the path.
"""

from __future__ import annotations

import difflib
import email.header
import email.policy
import email.utils
import fcntl
import itertools
import json
import os
import quopri
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, fields
from email.headerregistry import Address
from pathlib import Path

from .log import log as _default_log
from .quarantine import durable_write, fsync_dir
from .sanitize import ascii_text

SHIPPED = Path(__file__).parent / "templates"
TEMPLATE_NAMES = ("dsn-sender.txt", "notice-admin.txt", "warn-recipient.txt")
KINDS = ("dsn", "admin", "recipient")

# A macro value longer than three 78-character lines is noise or an attack; the notice
# must stay readable, and a header built from a few such values still folds to a few lines.
VALUE_LIMIT = 250
# Header values from a template (after macros) are cut here, for the same reason.
HEADER_LIMIT = 500
# The original header section in a DSN: enough for any real one (Postfix's header_size_limit is
# 100 KiB), small enough that a bounce of a message with a huge header stays small.
MAX_ORIGINAL_HEADERS = 100 * 1024
# RFC 5321 4.5.3.1.6: a text line is at most 998 octets plus CRLF.
MAX_LINE = 998
# Backoff stops growing at one hour: a notice later than that is still worth sending,
# but not worth waiting for longer between tries.
MAX_RETRY_S = 3600.0
# The sending thread looks at the directory at least this often, so notices put there by
# another process are not left waiting for this process's next put().
RESCAN_S = 60.0
# A temp file older than this is a put() that died half-way; its caller never got a name.
STALE_TMP_S = 3600.0

# Headers every notice gets from this module; a template may not set them.
RESERVED = {"from", "to", "cc", "bcc", "sender", "date", "message-id", "mime-version", "auto-submitted",
            "return-path", "received", "content-type", "content-transfer-encoding", "content-disposition"}

_POLICY = email.policy.SMTP
_POLICY_UTF8 = email.policy.SMTPUTF8
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_STATUS = re.compile(r"5\.\d{1,3}\.\d{1,3}")
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_RECIPIENTS_MACRO = re.compile(r"\$(\{recipients\}|recipients\b)")


class TemplateError(Exception):
    """A template file is unusable; the message names the file (and line) and the problem."""


class OutboxError(Exception):
    """A notice could not be queued; the message names the path and the reason."""


@dataclass(frozen=True)
class Facts:
    """What a template can say about one message (each field is also a macro)."""

    mail_id: str
    category: str                 # "VIRUS", "BANNED", "SPAM", "BADH", "UNCHECKED", "OVERSIZED"
    reason: str                   # "INFECTED: Eicar-Signature", "BANNED: application/x-dosexec,.exe,foo.exe"
    sender: str                   # envelope sender, '' for <>
    recipients: tuple[str, ...]   # the recipients this notice is about
    subject: str = ""             # the original Subject as received (RFC 2047 is decoded here)
    from_header: str = ""
    message_id: str = ""
    virus_names: tuple[str, ...] = ()
    spam_score: float | None = None
    bank: str = ""                # policy bank names, ','-joined
    queue_id: str = ""
    client_ip: str = ""
    date: float = 0.0             # when received (epoch); 0: now
    myhostname: str = "localhost"
    quarantine: str = ""          # where it is held, '' if not


@dataclass(frozen=True)
class Notice:
    """One message to send."""

    kind: str                     # "dsn" | "admin" | "recipient"
    mail_from: str                # envelope sender ('' = <>)
    rcpts: tuple[str, ...]
    data: bytes                   # CRLF line ends, ready for SMTP DATA


MACROS = tuple(f.name for f in fields(Facts))


# -- making untrusted text safe ----------------------------------------------------------

def one_line(value, limit: int = VALUE_LIMIT) -> str:
    """`value` as one line of printable text (runs of white space one space), at most `limit` characters."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = " ".join(_UNSAFE.sub(" ", _UNFOLD.sub("", text)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def decoded(raw: str) -> str:
    """A header value as a reader sees it: RFC 2047 encoded words decoded, made one line."""
    text = _UNFOLD.sub("", str(raw))
    if "=?" in text:
        try:
            text = str(_POLICY.header_factory("X-Decoded", _UNSAFE.sub(" ", text)))
        except (ValueError, LookupError, IndexError):   # garbage stays as it came
            pass
    return one_line(text)


def address(addr: str) -> str:
    """An envelope address as an RFC 5322 addr-spec: one line, the local part quoted when it
    needs to be, the domain reduced to the characters a domain (or literal) may hold."""
    addr = one_line(addr, 320).strip("<>")
    local, at, domain = addr.rpartition("@")
    if not at:
        local, domain = addr, ""
    if len(local) > 1 and local[0] == local[-1] == '"':     # quoted already: Address quotes again
        local = re.sub(r'\\(.)', r"\1", local[1:-1])
    domain = re.sub(r"[^\w.\-\[\]:]", "", domain)
    return Address(username=local, domain=domain).addr_spec if local else domain


def _date(epoch: float) -> str:
    # XXX: a time before 2001 cannot be when a message arrived (it is a monotonic clock
    # reading passed by mistake); the notice says now rather than 1970.
    return email.utils.formatdate(epoch if epoch > 1e9 else time.time(), localtime=True)


def _hostname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "", name) or "localhost"


# -- templates ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Template:
    path: str
    headers: tuple[tuple[str, string.Template], ...]
    body: tuple[string.Template, ...]   # one per line


class Templates:
    """The notice templates: the shipped ones, any of them replaced by a file of the same
    name in `directory`. Every file is parsed and its macros checked here."""

    def __init__(self, directory: str | None = None):
        self.directory = directory
        paths = {name: SHIPPED / name for name in TEMPLATE_NAMES}
        if directory is not None:
            try:
                found = sorted(os.listdir(directory))
            except OSError as exc:
                raise TemplateError(f"notify templates directory {directory}: {exc.strerror}") from None
            for name in found:
                if name in paths:
                    paths[name] = Path(directory) / name
                elif name.endswith(".txt"):
                    hint = difflib.get_close_matches(name, TEMPLATE_NAMES, 1)
                    raise TemplateError(f"{Path(directory) / name}: not a notice template"
                                        + (f" (did you mean {hint[0]}?)" if hint else "")
                                        + f"; the templates are {', '.join(TEMPLATE_NAMES)}")
        self.paths = {name: str(path) for name, path in paths.items()}
        self._parsed = {name: _parse_template(str(path)) for name, path in paths.items()}

    def render(self, name: str, facts: Facts) -> tuple[list[tuple[str, str]], str]:
        """The template's header fields (values one line, not yet encoded) and body (LF line
        ends) with `facts` put in."""
        tpl = self._parsed[name]
        values = _macro_values(facts)
        rcpts = [one_line(r) for r in facts.recipients]
        values["recipients"] = ", ".join(rcpts)
        headers = [(field, one_line(t.substitute(values), HEADER_LIMIT)) for field, t in tpl.headers]
        lines = []
        for line in tpl.body:    # one recipient a line, each under the first
            at = _RECIPIENTS_MACRO.search(line.template)
            indent = re.sub(r"\S", " ", line.template[:at.start()]) if at else ""
            lines.append(line.substitute(values, recipients=("\n" + indent).join(rcpts)).rstrip())
        return headers, "\n".join(lines).rstrip("\n") + "\n"


def _macro_values(facts: Facts) -> dict[str, str]:
    values = {name: one_line(getattr(facts, name)) for name in MACROS}
    values["subject"] = decoded(facts.subject)
    values["from_header"] = decoded(facts.from_header)
    values["virus_names"] = ", ".join(one_line(v) for v in facts.virus_names)
    values["spam_score"] = "" if facts.spam_score is None else f"{facts.spam_score:.1f}"
    values["date"] = _date(facts.date)
    return values


def _parse_template(path: str) -> _Template:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise TemplateError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise TemplateError(f"{path}: {exc.strerror}") from None
    lines = text.replace("\r\n", "\n").split("\n")
    headers: list[tuple[int, str, str]] = []
    n = 0
    for n, line in enumerate(lines, 1):
        if line == "":
            break
        if line.startswith("#"):
            continue
        if line[0] in " \t" and headers:
            lineno, field, value = headers[-1]
            headers[-1] = (lineno, field, value + " " + line.strip())
            continue
        field, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(field):
            raise TemplateError(f"{path}:{n}: expected a header line 'Name: value' or an empty line "
                                f"before the body, got {line[:60]!r}")
        if field.lower() in RESERVED:
            raise TemplateError(f"{path}:{n}: {field} is set by pymavis, not by a template")
        headers.append((n, field, value.strip()))
    else:
        n = len(lines)
    if not any(field.lower() == "subject" for _, field, _ in headers):
        raise TemplateError(f"{path}: no Subject header line")
    body = lines[n:]
    for lineno, _, value in headers:
        _check_macros(path, lineno, value)
    for offset, line in enumerate(body):
        _check_macros(path, n + 1 + offset, line)
    return _Template(path, tuple((field, string.Template(value)) for _, field, value in headers),
                     tuple(string.Template(line) for line in body))


def _check_macros(path: str, lineno: int, text: str) -> None:
    for match in string.Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if match.group("invalid") is not None:
            raise TemplateError(f"{path}:{lineno}: '$' not followed by a macro name "
                                f"(write $$ for a dollar sign, ${{name}} for a macro)")
        if name is not None and name not in MACROS:
            hint = difflib.get_close_matches(name, MACROS, 1)
            raise TemplateError(f"{path}:{lineno}: unknown macro ${{{name}}}"
                                + (f" (did you mean ${{{hint[0]}}}?)" if hint else "")
                                + f"; known: {', '.join(MACROS)}")


# -- header lines and bodies -------------------------------------------------------------

def _fold(name: str, value: str) -> bytes:
    """One unstructured header field, encoded and folded. Plain ASCII is folded by the
    header registry; anything else is RFC 2047 encoded whole by email.header: the registry
    would decode a `=?` in it as an encoded word (an encoded CR LF comes out raw), and
    Python 3.11's registry drops a space between the encoded words it folds."""
    if value.isascii() and "=?" not in value:
        folded = _POLICY.header_factory(name, value).fold(policy=_POLICY)
    else:
        folded = f"{name}: " + email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return _checked(name, folded)


def _fold_address(name: str, value: str) -> bytes:
    """A header holding one address with an optional display name (hdrfrom): the display
    name RFC 2047 encoded when needed, a non-ASCII address left UTF-8."""
    try:
        header = _POLICY.header_factory(name, value)
    except ValueError as exc:
        raise ValueError(f"{name}: {value!r} is not an address: {exc}") from None
    if len(header.addresses) != 1:
        raise ValueError(f"{name}: {value!r} must hold exactly one address")
    utf8 = not header.addresses[0].addr_spec.isascii()
    return _checked(name, header.fold(policy=_POLICY_UTF8 if utf8 else _POLICY), utf8_ok=utf8)


def _address_list(name: str, addrs) -> bytes:
    """To: the addresses as addr-specs, folded between addresses."""
    specs = [spec for spec in map(address, addrs) if spec] or ["undisclosed-recipients:;"]
    lines = [f"{name}:"]
    for i, spec in enumerate(specs):
        piece = " " + spec + ("," if i < len(specs) - 1 else "")
        if len(lines[-1]) + len(piece) > 78 and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += piece
    return _checked(name, "\r\n".join(lines) + "\r\n", utf8_ok=True)


def _checked(name: str, folded: str, *, utf8_ok: bool = False) -> bytes:
    """The folded field as bytes, after making sure it is one field: every line but the
    first a continuation, no bare CR or LF, no control characters, ASCII unless allowed."""
    if not folded.endswith("\r\n"):
        folded += "\r\n"
    lines = folded[:-2].split("\r\n")
    ok = (lines[0].startswith(f"{name}: ") and all(line[:1] in (" ", "\t") for line in lines[1:])
          and not any(_UNSAFE.search(line) for line in lines)
          and (utf8_ok or folded.isascii()))
    if not ok:
        raise ValueError(f"refusing to write header {name}: folding gave {folded[:200]!r}")
    data = folded.encode("utf-8")
    if any(len(line) > MAX_LINE for line in data.split(b"\r\n")):
        raise ValueError(f"refusing to write header {name}: a line over {MAX_LINE} bytes")
    return data


def _text_body(text: str) -> tuple[str, str, bytes]:
    """(charset, Content-Transfer-Encoding, CRLF body) for a template's rendered text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw = text.encode("utf-8", "replace")
    charset = "us-ascii" if text.isascii() else "utf-8"
    if all(len(line) <= MAX_LINE for line in raw.split(b"\n")):
        cte = "7bit" if text.isascii() else "8bit"
    else:
        cte, raw = "quoted-printable", quopri.encodestring(raw)
    return charset, cte, raw.replace(b"\n", b"\r\n")


def _original_headers(head: bytes) -> bytes:
    """The header section for text/rfc822-headers: CRLF line ends, no NUL, lines split into
    continuations at MAX_LINE bytes, cut at a line end below MAX_ORIGINAL_HEADERS."""
    out, size = [], 0
    for line in re.split(rb"\r\n|\r|\n", head.replace(b"\0", b" ")):
        if not line:
            if out:
                break    # the empty line that ends the header section
            continue
        step = MAX_LINE - 1    # room for the space that makes a continuation line
        pieces = [line[:MAX_LINE]] + [b" " + line[i:i + step] for i in range(MAX_LINE, len(line), step)]
        size += sum(len(piece) + 2 for piece in pieces)
        if size > MAX_ORIGINAL_HEADERS:
            break
        out += pieces
    return b"".join(line + b"\r\n" for line in out)


def _common_headers(auto_submitted: str, hdrfrom: str, to, template_headers, myhostname: str,
                    mail_id: str) -> list[bytes]:
    idstring = re.sub(r"[^A-Za-z0-9_-]", "", mail_id)[:40] or None
    return [_fold_address("From", one_line(hdrfrom, 900)), _address_list("To", to),
            *(_fold(name, value) for name, value in template_headers),
            _checked("Date", f"Date: {email.utils.formatdate(localtime=True)}"),
            _checked("Message-ID", f"Message-ID: {email.utils.make_msgid(idstring, _hostname(myhostname))}"),
            _checked("Auto-Submitted", f"Auto-Submitted: {auto_submitted}"),
            b"MIME-Version: 1.0\r\n"]


def _single(facts: Facts, template: str, to, *, templates: Templates, hdrfrom: str) -> bytes:
    headers, body = templates.render(template, facts)
    charset, cte, raw = _text_body(body)
    head = _common_headers("auto-generated", hdrfrom, to, headers, facts.myhostname, facts.mail_id)
    head.append(f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n".encode())
    return b"".join(head) + b"\r\n" + raw


# -- the three notices -------------------------------------------------------------------

def sender_dsn(facts: Facts, original_headers: bytes, failed: list[tuple[str, str, str]], *,
               templates: Templates, hdrfrom: str, reporting_mta: str,
               arrival_date: float | None = None) -> Notice:
    """A delivery status notification (RFC 3464) to the envelope sender for the `failed`
    recipients, each (recipient, status 5.x.x, diagnostic such as '554 5.7.0 ...')."""
    if not facts.sender:
        raise ValueError(f"mail_id {facts.mail_id}: no DSN can go to the null sender")
    if not failed:
        raise ValueError(f"mail_id {facts.mail_id}: a DSN needs at least one failed recipient")
    headers, body = templates.render("dsn-sender.txt", facts)
    charset, cte, text = _text_body(body)
    status = [b"Reporting-MTA: dns; " + _hostname(reporting_mta).encode(),
              b"X-Pymavis-Mail-Id: " + ascii_text(one_line(facts.mail_id)).encode(),
              b"Arrival-Date: " + _date(arrival_date or facts.date).encode(), b""]
    for rcpt, code, diagnostic in failed:
        if not _STATUS.fullmatch(code):
            raise ValueError(f"mail_id {facts.mail_id}: DSN status {code!r} for <{one_line(rcpt)}> "
                             "is not a permanent failure code 5.x.x")
        status += [b"Final-Recipient: " + _dsn_address(rcpt), b"Action: failed", b"Status: " + code.encode(),
                   b"Diagnostic-Code: smtp; " + ascii_text(one_line(diagnostic, 900)).encode(), b""]
    status.pop()    # blank lines separate the blocks; one after the last would read as an empty block
    parts = [
        (f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n"
         "Content-Description: Notification\r\n").encode() + b"\r\n" + text,
        b"Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n"
        + b"".join(line + b"\r\n" for line in status),
    ]
    original = _original_headers(original_headers)
    eight_bit = not (original.isascii() and text.isascii())
    parts.append(b"Content-Type: text/rfc822-headers\r\n"
                 + (b"Content-Transfer-Encoding: 8bit\r\n" if not original.isascii() else b"")
                 + b"Content-Description: Undelivered message headers\r\n\r\n" + original)
    boundary = _boundary(parts)
    head = _common_headers("auto-replied", hdrfrom, (facts.sender,), headers, facts.myhostname, facts.mail_id)
    head.append(f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"\r\n'
                .encode())
    if eight_bit:
        head.append(b"Content-Transfer-Encoding: 8bit\r\n")
    data = b"".join(head) + b"\r\nThis is a MIME-encapsulated delivery status notification.\r\n"
    for part in parts:
        data += b"\r\n--" + boundary.encode() + b"\r\n" + part
    data += b"\r\n--" + boundary.encode() + b"--\r\n"
    return Notice("dsn", "", (facts.sender,), data)


def admin_notice(facts: Facts, admins: tuple[str, ...], *, templates: Templates, hdrfrom: str,
                 mail_from: str) -> Notice:
    """A notice to the admins (virus_admin, banned_admin, ...) about one message."""
    if not admins:
        raise ValueError(f"mail_id {facts.mail_id}: an admin notice needs an admin address")
    data = _single(facts, "notice-admin.txt", admins, templates=templates, hdrfrom=hdrfrom)
    return Notice("admin", mail_from, tuple(admins), data)


def recipient_warning(facts: Facts, rcpt: str, *, templates: Templates, hdrfrom: str, mail_from: str) -> Notice:
    """A warning to a recipient that mail for them was blocked."""
    data = _single(facts, "warn-recipient.txt", (rcpt,), templates=templates, hdrfrom=hdrfrom)
    return Notice("recipient", mail_from, (rcpt,), data)


def _dsn_address(rcpt: str) -> bytes:
    """'rfc822; ADDR', or for a non-ASCII address RFC 6533's 'utf-8; ADDR' with each
    non-ASCII character as \\x{HEX}."""
    addr = one_line(rcpt, 320).replace(" ", "")
    if addr.isascii():
        return b"rfc822; " + addr.encode()
    return b"utf-8; " + "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in addr).encode()


def _boundary(parts: list[bytes]) -> str:
    while True:
        boundary = f"=_pymavis_{secrets.token_hex(12)}"
        if not any(boundary.encode() in part for part in parts):
            return boundary


# -- when the sender is not told ---------------------------------------------------------

def dsn_suppressed(facts: Facts, headers, *, fake_sender_patterns, notify_never: bool,
                   spam_over_cutoff: bool) -> str | None:
    """Why no DSN may go to the sender, or None. `headers`: the (name, value) pairs of the
    message; `fake_sender_patterns`: regexes (searched) of viruses that forge the sender."""
    if not facts.sender:
        return "null sender"
    for name in facts.virus_names:
        if any(re.search(pattern, name) for pattern in fake_sender_patterns):
            return f"sender forged by the virus ({one_line(name)})"
    for field, value in headers:
        field, value = field.strip().lower(), value.strip().lower()
        if field == "precedence" and (m := re.match(r"(bulk|list|junk)\b", value)):
            return f"bulk mail (Precedence: {m.group(1)})"
    for field, value in headers:
        field, token = field.strip().lower(), re.split(r"[\s;(]", value.strip().lower(), maxsplit=1)[0]
        if field == "list-id" or (field == "auto-submitted" and token not in ("", "no")):
            return "automatic mail"
    if notify_never:
        return "NOTIFY=NEVER"
    if spam_over_cutoff:
        return "spam above the DSN cutoff"
    return None


# -- the outbox --------------------------------------------------------------------------

@dataclass
class _Retry:
    attempts: int
    next_try: float      # time.monotonic()


class Outbox:
    """A disk queue of Notices sent by a background thread with `send(notice)`.

    Layout: DIR/NAME.notice is one queued notice: a JSON line {"kind", "mail_from",
    "rcpts", "queued" (epoch)} and then the message bytes. DIR/tmp/ holds files being
    written, DIR/failed/ the notices given up on (same format). Retry counts live in
    memory: after a restart each notice is tried at once, and its age still counts from
    when it was queued."""

    SUFFIX = ".notice"

    def __init__(self, directory, send, *, retry_s: float = 30.0, max_age_s: float = 5 * 86400, log=None):
        if retry_s <= 0 or max_age_s <= 0:
            raise ValueError(f"outbox {directory}: retry_s and max_age_s must be positive")
        self.directory = Path(directory)
        self.retry_s, self.max_age_s = float(retry_s), float(max_age_s)
        self._send = send
        self._log = log or _default_log
        self._cond = threading.Condition()
        self._retries: dict[str, _Retry] = {}
        self._seq = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._kicked = False

    # queueing --------------------------------------------------------------------------

    def put(self, notice: Notice) -> str:
        """Queue `notice` durably; the queue file's name. Raises OutboxError."""
        if notice.kind not in KINDS or not notice.rcpts:
            raise ValueError(f"not a notice to queue: kind {notice.kind!r}, recipients {notice.rcpts!r}")
        with self._cond:
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq)}{self.SUFFIX}"
        envelope = {"kind": notice.kind, "mail_from": notice.mail_from, "rcpts": list(notice.rcpts),
                    "queued": time.time()}
        tmp, final = self.directory / "tmp" / name, self.directory / name
        try:
            (self.directory / "tmp").mkdir(parents=True, exist_ok=True, mode=0o750)
            durable_write(tmp, final, json.dumps(envelope, sort_keys=True).encode("ascii") + b"\n" + notice.data)
        except OSError as exc:
            raise OutboxError(f"outbox {exc.filename or self.directory}: {exc.strerror or exc}") from None
        with self._cond:
            self._kicked = True
            self._cond.notify_all()
        return name

    def pending(self) -> int:
        """How many notices are queued (not yet sent, not given up)."""
        return len(self._queued())

    def _queued(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if n.endswith(self.SUFFIX))
        except FileNotFoundError:
            return []

    # the sending thread ----------------------------------------------------------------

    def start(self) -> None:
        """Start sending, beginning with what an earlier run left queued."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            try:
                for sub in ("tmp", "failed"):
                    (self.directory / sub).mkdir(parents=True, exist_ok=True, mode=0o750)
            except OSError as exc:
                raise OutboxError(f"outbox {exc.filename or self.directory}: {exc.strerror or exc}") from None
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"outbox:{self.directory}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after the notice it is sending, if any; queued ones stay on disk."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._log.warning("outbox %s: sender thread still busy after %g s", self.directory, timeout)
            else:
                self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued (sent or given up); True if the queue is empty."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._kicked = True
            self._cond.notify_all()
            while self.pending():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))   # also notices another process draining DIR
        return True

    def _run(self) -> None:
        self._remove_stale_tmp()
        while True:
            try:
                wait = self._pass()
            except OSError as exc:    # the directory itself failed: log, keep the thread, try later
                wait = min(self.retry_s, RESCAN_S)
                self._log.error("outbox %s: %s; trying again in %g s", self.directory, exc, wait)
            with self._cond:
                self._cond.notify_all()           # flush() waiters look again
                if self._stopping:
                    return
                if not self._kicked:
                    self._cond.wait(min(wait, RESCAN_S))
                self._kicked = False
                if self._stopping:
                    return

    def _pass(self) -> float:
        """Try every queued notice that is due; seconds until the next retry is due."""
        names = self._queued()
        for gone in set(self._retries) - set(names):
            del self._retries[gone]
        for name in names:
            with self._cond:
                if self._stopping:
                    break
            retry = self._retries.get(name)
            if retry is None or retry.next_try <= time.monotonic():
                self._attempt(name)
        if not self._retries:
            return RESCAN_S
        return max(0.0, min(r.next_try for r in self._retries.values()) - time.monotonic())

    def _attempt(self, name: str) -> None:
        path = self.directory / name
        try:
            fh = open(path, "rb")
        except FileNotFoundError:            # sent by another outbox on this directory
            self._retries.pop(name, None)
            return
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:         # another outbox is sending it right now
                return
            if os.fstat(fh.fileno()).st_nlink == 0:
                self._retries.pop(name, None)
                return
            try:
                envelope, notice = _read_queued(fh.read(), path)
            except OutboxError as exc:
                self._log.error("%s; moved to %s", exc, self.directory / "failed")
                self._move_to_failed(path)
                return
            rcpts = ", ".join(f"<{r}>" for r in notice.rcpts)
            try:
                reply = self._send(notice)
            except Exception as exc:         # whatever `send` raises is a failed attempt
                self._failed(name, path, envelope, rcpts, exc)
                return
            path.unlink(missing_ok=True)
            fsync_dir(self.directory)
        self._retries.pop(name, None)
        self._log.info("notice %s sent to %s: %s", name, rcpts, reply if reply is not None else "ok")

    def _failed(self, name: str, path: Path, envelope: dict, rcpts: str, exc: Exception) -> None:
        retry = self._retries.setdefault(name, _Retry(0, 0.0))
        retry.attempts += 1
        why = str(exc) or type(exc).__name__
        age = time.time() - envelope["queued"]
        if age >= self.max_age_s:
            self._log.error("notice %s to %s: giving up after %d attempt(s) in %.0f s (max_age_s %g): %s; "
                            "moved to %s", name, rcpts, retry.attempts, age, self.max_age_s, why,
                            self.directory / "failed")
            self._move_to_failed(path)
            self._retries.pop(name, None)
            return
        delay = min(self.retry_s * 2 ** (retry.attempts - 1), MAX_RETRY_S)
        retry.next_try = time.monotonic() + delay
        self._log.warning("notice %s to %s: attempt %d failed: %s; next try in %.1f s",
                          name, rcpts, retry.attempts, why, delay)

    def _move_to_failed(self, path: Path) -> None:
        try:
            (self.directory / "failed").mkdir(exist_ok=True, mode=0o750)
            os.replace(path, self.directory / "failed" / path.name)
        except OSError as exc:
            self._log.error("outbox %s: cannot move %s to failed/: %s", self.directory, path.name, exc.strerror)

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        for path in (self.directory / "tmp").glob("*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    self._log.info("outbox %s: removed %s, left by a put() that never finished",
                                   self.directory, path)
            except OSError:
                continue    # gone meanwhile, or not ours to remove: not worth a retry


def _read_queued(raw: bytes, path: Path) -> tuple[dict, Notice]:
    line, newline, data = raw.partition(b"\n")
    try:
        envelope = json.loads(line)
        notice = Notice(envelope["kind"], envelope["mail_from"], tuple(envelope["rcpts"]), data)
        envelope["queued"] = float(envelope["queued"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OutboxError(f"{path}: corrupt queued notice: {exc}") from None
    if not newline or not notice.rcpts:
        raise OutboxError(f"{path}: corrupt queued notice: no envelope line or no recipients")
    return envelope, notice
