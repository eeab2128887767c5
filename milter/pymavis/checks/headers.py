"""BADH: bad-header checks on the raw header section, with amavisd-new's minor codes.

`header_problems(raw_header)` is a pure function over the header section's bytes (up to the
first empty line; `header_section(message)` cuts it out). It returns every problem found, in
the order below; `check()` turns them into at most one Finding, Ccat.BADH with the minor code
of the first problem (amavis also reports one minor per message: the first it finds).

    minor  test      what we flag
      1    mime      MIME-Version other than 1.0; Content-Type without a parsable type/subtype,
                     or multipart/* without boundary=; unknown Content-Transfer-Encoding
                     ("7-bit", "quoted printable"); only the top-level header section
      2    8bit      non-ASCII bytes, unless `allow_utf8` and the field is valid UTF-8 (RFC 6532)
      3    control   NUL, CR not part of CRLF, other C0 controls except TAB (DEL is not flagged)
      4    empty     a continuation line made up entirely of whitespace
      5    long      a physical line over 998 octets, CRLF not counted (RFC 5322 2.1.1)
      6    syntax    a line that is neither a field head (name, optional WSP, ':') nor a
                     continuation; a continuation before the first field; an address field
                     (From, Sender, Reply-To, To, Cc, Bcc, Resent-*) the email package cannot
                     parse: unbalanced <> or quotes, garbage entries, an empty From/Sender
      7    missing   no From or no Date (RFC 5322 3.6)
      8    multiple  more than one of a singleton field: RFC 5322 3.6's Date, From, Sender,
                     Reply-To, To, Cc, Bcc, Message-ID, In-Reply-To, References, Subject, and
                     the MIME fields amavis adds (MIME-Version, Content-Type,
                     Content-Transfer-Encoding, Content-ID, Content-Description,
                     Content-Disposition) and Auto-Submitted (amavisd-new 2.4.3 on)

Order (which problem is "first"): fields top-down; within one field the tests run in the
order of amavis's per-field chain as we know it from its messages -- syntax of the field
head, long, empty, control, 8bit -- then our value checks (address syntax, MIME); after the
last field, missing (From before Date), then multiple (in order of first occurrence).
XXX: amavis's chain order is from its documentation and X-Amavis-Alert samples, not from
its source (not at hand); the minor codes and test names are amavis's exactly.

Test names are amavis's `%allowed_header_tests` keys ('other' is accepted and never used).
amavis's later 'utf8' test (flag even valid UTF-8) is `allow_utf8=False` here.

Limits: at most MAX_PER_TEST problems of one test are collected (a header with 10,000 NULs
yields 10 lines, not 10,000); address and MIME values longer than MAX_PARSE_CHARS are not
given to the email package's parser (its cost grows faster than linearly on hostile input);
the long/control/8bit tests still see them. Details are cropped and sanitised for one log
line: non-printable characters appear as \\xNN escapes.

Failure: the parser's exceptions on a value become a syntax (or mime) problem naming the
exception class; nothing escapes header_problems. check() reports could_not_check only when
the spool cannot be read.

Configuration read by check(): policy.allowed_header_tests (mapping name -> bool, or a
collection of names; absent: all tests), policy.bad_header_utf8_allowed (absent: True, i.e.
valid UTF-8 is allowed); per recipient bypass_header_checks (all bypass: the check is
skipped). bad_header_lovers is the decision's business, not this module's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from email import errors as email_errors
from email.headerregistry import HeaderRegistry

from pymavis.addresses import plain_addresses
from pymavis.categories import Ccat, Finding

from . import CheckResult

# amavis's minor codes of CC_BADH and their %allowed_header_tests names.
MINOR_OF_TEST = {"other": 0, "mime": 1, "8bit": 2, "control": 3, "empty": 4, "long": 5,
                 "syntax": 6, "missing": 7, "multiple": 8}
ALL_TESTS = frozenset(MINOR_OF_TEST)

MAX_LINE_OCTETS = 998           # RFC 5322 2.1.1, CRLF excluded
MAX_PER_TEST = 10               # bounded output on hostile headers; the first one decides
MAX_PARSE_CHARS = 16 * 1024     # longer values skip the email package's parser (see above)
MAX_DETAIL_CHARS = 1000         # the Finding's detail; amavis crops its diagnostics too
MAX_HEADER_BYTES = 1 << 20      # what is read of the spool looking for the header's end
EXCERPT_BEFORE, EXCERPT_AFTER = 30, 20

REQUIRED = ("from", "date")
SINGLETONS = frozenset({
    "date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to",
    "references", "subject",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "content-disposition", "auto-submitted",
})
ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc",
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
})
MAILBOX_REQUIRED = frozenset({"from", "sender", "resent-from", "resent-sender"})
KNOWN_CTE = frozenset({"7bit", "8bit", "binary", "quoted-printable", "base64",
                       # not RFC 2045 tokens, but written by old mailers and decoded by all
                       "uuencode", "uue"})
# Defects the email package reports on addresses that mail in the wild carries harmlessly:
# local-only addresses ("root"), "<>" and non-dot-atom local parts (some mobile carriers).
BENIGN_ADDRESS_DEFECTS = (
    "local part with no domain",
    "null addr-spec",
    "local-part is not dot-atom",
    "in local part",
    "repeated '.'",      # "s..palmer@enron.com": common in old corporate mail
    "encoded",           # RFC 2047 trouble in a display name is not an address error
)
FIELD_HEAD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f]")
NON_ASCII = re.compile(rb"[\x80-\xff]")
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
CONTENT_TYPE = re.compile(rf"\s*({TOKEN})\s*/\s*({TOKEN})\s*(?:;|$)", re.S)

_registry = HeaderRegistry()


@dataclass(frozen=True)
class HeaderProblem:
    minor: int
    test: str
    detail: str
    header: str | None     # the field's name as written, None when there is no valid name


def header_section(message: bytes) -> bytes:
    """The header section: everything before the first empty line (all of it if none)."""
    if message.startswith((b"\n", b"\r\n")):
        return b""
    m = re.search(rb"\n\r?\n", message)
    return message[: m.start() + 1] if m else message


def header_problems(raw_header: bytes, tests: frozenset[str] = ALL_TESTS, *,
                    allow_utf8: bool = True) -> list[HeaderProblem]:
    out = _Collector(tests)
    counts: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for name, lines in _fields(raw_header, out, allow_utf8):
        if name is None:
            continue
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        first_seen.setdefault(key, name)
        _check_lines(name, lines, out, allow_utf8)
        _check_value(name, key, lines, out)
    for key in REQUIRED:
        if key not in counts:
            out.add("missing", f'Missing required header field: "{key.title()}"', None)
    for key, n in counts.items():
        if n > 1 and key in SINGLETONS:
            name = first_seen[key]
            out.add("multiple", f'Duplicate header field: "{name}" ({n} times)', name)
    return out.problems


class _Collector:
    def __init__(self, tests):
        self.tests = tests
        self.problems: list[HeaderProblem] = []
        self.per_test: dict[str, int] = {}

    def wants(self, test: str) -> bool:
        return test in self.tests and self.per_test.get(test, 0) < MAX_PER_TEST

    def add(self, test: str, detail: str, header: str | None):
        if self.wants(test):
            self.per_test[test] = self.per_test.get(test, 0) + 1
            self.problems.append(HeaderProblem(MINOR_OF_TEST[test], test, detail, header))


def _fields(raw: bytes, out: _Collector, allow_utf8: bool):
    """Yield (name, physical lines without line ends) per field; report bad heads."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    name, current = None, None
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]          # CR of CRLF; any other CR is a control character
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
                continue
            out.add("syntax", f"Continuation line without a header field: {_excerpt(line, 0)}", None)
            continue
        if current is not None:
            yield name, current
        m = FIELD_HEAD.match(line)
        if m:
            name, current = m.group(1).decode("ascii"), [line]
        else:
            # A broken line still gets the other tests, under no name.
            out.add("syntax", f"Invalid header field head: {_excerpt(line, 0)}", None)
            name, current = None, None
            _check_lines(None, [line], out, allow_utf8)
    if current is not None:
        yield name, current


def _check_lines(name, lines, out: _Collector, allow_utf8: bool):
    label = name or "(no field name)"
    if out.wants("long"):
        for i, line in enumerate(lines):
            if len(line) > MAX_LINE_OCTETS:
                out.add("long", f"Header line longer than {MAX_LINE_OCTETS} characters "
                        f"({len(line)} octets, line {i + 1} of the field): {label}", name)
                break
    if out.wants("empty"):
        for line in lines[1:]:
            if not line.strip(b" \t"):
                out.add("empty", f"Improper folded header field made up entirely of whitespace: "
                        f"{label}: {_excerpt(b'|'.join(lines), len(lines[0]))}", name)
                break
    if out.wants("control"):
        for line in lines:
            m = CONTROL.search(line)
            if m:
                out.add("control", f"Improper use of control character (char {m.group()[0]:02X} hex): "
                        f"{_excerpt(line, m.start())}", name)
                break
    if out.wants("8bit"):
        field = b"\r\n".join(lines)
        m = NON_ASCII.search(field)
        if m:
            try:
                field.decode("utf-8")
                valid = True
            except UnicodeDecodeError:
                valid = False
            if not (valid and allow_utf8):
                what = "Non-encoded 8-bit data" if valid else "Non-encoded non-ASCII data (and not UTF-8)"
                out.add("8bit", f"{what} (char {m.group()[0]:02X} hex): {_excerpt(field, m.start())}", name)


def _check_value(name: str, key: str, lines, out: _Collector):
    if key not in ADDRESS_FIELDS and key not in ("mime-version", "content-type", "content-transfer-encoding"):
        return
    # Unfolded: every continuation line starts with WSP, so joining without CRLF unfolds.
    raw_value = b"".join(lines)[FIELD_HEAD.match(lines[0]).end():]
    value = raw_value.decode("utf-8", "surrogateescape").strip()
    if len(value) > MAX_PARSE_CHARS:
        return
    if key in ADDRESS_FIELDS:
        if out.wants("syntax"):
            why = _address_error(key, name, value)
            if why:
                out.add("syntax", f"Header field syntax error ({why}): {name}: {_excerpt(value.encode('utf-8', 'surrogateescape'), 0, 60)}", name)
    elif out.wants("mime"):
        why = _mime_error(key, value)
        if why:
            out.add("mime", f"MIME error ({why}): {name}: {_excerpt(value.encode('utf-8', 'surrogateescape'), 0, 60)}", name)


def _address_error(key: str, name: str, value: str) -> str | None:
    if not value:
        return "no address" if key in MAILBOX_REQUIRED else None
    if plain_addresses(value) is not None:
        return None     # the registry finds no defect in these forms (pymavis.addresses)
    try:
        header = _registry(name, value)
    except (email_errors.HeaderParseError, ValueError, IndexError, TypeError, AttributeError,
            RecursionError) as exc:
        return f"parser failed: {type(exc).__name__}"
    for defect in header.defects:
        if isinstance(defect, email_errors.InvalidHeaderDefect):
            text = str(defect)
            if not any(b in text for b in BENIGN_ADDRESS_DEFECTS):
                return text
    return None


def _mime_error(key: str, value: str) -> str | None:
    bare = _strip_comments(value).strip()
    if key == "mime-version":
        return None if bare.replace(" ", "") == "1.0" else "MIME-Version is not 1.0"
    if key == "content-transfer-encoding":
        cte = bare.lower()
        if cte in KNOWN_CTE or cte.startswith("x-"):
            return None
        return "unknown Content-Transfer-Encoding"
    m = CONTENT_TYPE.match(bare)
    if not m:
        return "no type/subtype"
    if m.group(1).lower() == "multipart" and not re.search(r"(?i)\bboundary\s*\*?\s*=", bare):
        return "multipart without boundary"
    return None


def _strip_comments(value: str) -> str:
    """Drop RFC 5322 comments (nested, with quoted-pairs: Apple Mail writes
    'MIME-Version: 1.0 (Mac OS X Mail 16.0 \\(3696.100.31\\))'); one linear pass."""
    out, depth, i, quoted = [], 0, 0, False
    while i < len(value):
        c = value[i]
        if c == "\\":
            if not depth:
                out.append(value[i:i + 2])
            i += 2
            continue
        if quoted:
            quoted = c != '"'
            out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif not depth:
            quoted = c == '"'
            out.append(c)
        i += 1
    return "".join(out)


def _excerpt(data: bytes, pos: int, after: int = EXCERPT_AFTER) -> str:
    """A short, printable excerpt of `data` around `pos`, amavis-style: '...before[...]'."""
    start = max(0, pos - EXCERPT_BEFORE)
    end = min(len(data), pos + after)
    text = _printable(data[start:end])
    return ("..." if start else "") + text + ("[...]" if end < len(data) else "")


def _printable(data: bytes) -> str:
    """Valid UTF-8 shows as text; anything else non-ASCII as \\xNN, so a legacy charset is
    not shown as accidental UTF-8 letters. Non-printable characters are escaped either way."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("ascii", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _tests_from(policy) -> frozenset[str]:
    allowed = getattr(policy, "allowed_header_tests", None)
    if allowed is None:
        return ALL_TESTS
    if isinstance(allowed, Mapping):
        return frozenset(k for k, v in allowed.items() if v)
    return frozenset(allowed)


def check(scan) -> CheckResult:
    """Reads the header section from the spool, where the adapter wrote the fields exactly as
    it rebuilt them from the MTA's (name, value) pairs -- the same bytes txn.headers holds,
    already with CRLF line ends, without having to guess each field's ': ' separator."""
    started = time.monotonic()
    if scan.everyone("bypass_header_checks"):
        return CheckResult("header")
    try:
        raw = header_section(scan.txn.spool.read_head(MAX_HEADER_BYTES))
    except OSError as exc:
        return CheckResult("header", could_not_check=f"spool read failed: {exc}")
    policy = scan.policy
    problems = header_problems(raw, _tests_from(policy),
                               allow_utf8=bool(getattr(policy, "bad_header_utf8_allowed", True)))
    elapsed = (time.monotonic() - started) * 1000
    if not problems:
        return CheckResult("header", elapsed_ms=elapsed)
    first = problems[0]
    detail = "BAD HEADER SECTION, " + "; ".join(p.detail for p in problems)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 5] + "[...]"
    finding = Finding("header", Ccat.BADH, first.minor, detail, None,
                      (("minor", first.minor), ("test", first.test),
                       ("problems", tuple(f"{p.test}: {p.detail}" for p in problems))))
    return CheckResult("header", (finding,), elapsed_ms=elapsed)
