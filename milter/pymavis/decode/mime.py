"""MIME pieces of the walker: a bounded parse, declared names and types, ambiguity, uuencode.

Python's `email` package (policy compat32: about 3x faster than policy.default, see
DEPENDENCIES.md) builds the entity tree; the walker in `pymavis.decode` numbers and
bounds its traversal. This module knows MIME and nothing about parts or limits' values:
it returns plain data and raises `ParseStopped` when a parse had to stop early.

Limits: `parse()` stops the parser itself when the nesting depth, the number of entities
or the deadline is exceeded - Python's parser recurses about three frames per nesting
level (1,000 levels end in RecursionError) and parses 100,000 parts in more than a second.
What was parsed before the stop is kept: the partial tree is walked like a whole one.

What can fail: nothing here should raise on bad input except `ParseStopped`; garbage
charsets, broken encoded-words and undecodable base64 fall back to a lossy decoding.
The walker turns any unexpected exception into a Problem.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import urllib.parse
from collections.abc import Iterator
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import Compat32
from email.utils import decode_rfc2231, quote, unquote

# The parser gets the message in pieces of this size so the deadline is looked at
# while a big message is being parsed, not only after.
FEED_CHUNK = 64 * 1024


class _RawHeaders(Compat32):
    """compat32, but header values come back unfolded, 8-bit bytes still surrogate-escaped.

    compat32 hands out folded values as they were: a `boundary="simple<CRLF> boundary"`
    never matches its delimiter line, so the message reads as one text part while mail
    clients (and policy.default) see the attachments - unfolding (RFC 5322 2.2.3) closes
    that gap. And compat32 turns a value with 8-bit bytes into a Header object whose
    str() puts U+FFFD in place of each such byte, losing a raw UTF-8 or Latin-1 file
    name; we decode those bytes ourselves (`_undo_surrogates`).
    """

    def header_fetch_parse(self, name, value):
        return _FOLD.sub("", value) if "\n" in value else value


_FOLD = re.compile(r"\r?\n(?=[ \t])")


class Entity(Message):
    """A compat32 Message whose header parameters are parsed in linear time, and safely.

    Python's own parameter parsing (`email.message._parseparam`) is quadratic: a 1 MB
    Content-Type with 200,000 parameters takes 15 s per lookup, and the parser looks
    up `boundary` itself. And `email.utils.decode_params` raises TypeError on
    `boundary*=a; boundary*0=b` and ValueError on a 5,000-digit continuation number,
    which would stop the parse of the whole message. Same results as Python otherwise.

    XXX: overrides `Message._get_params_preserve`, a private method (unchanged since
    Python 3.2), because get_param, get_params, get_boundary and get_filename all go
    through it.
    """

    def _get_params_preserve(self, failobj, header):
        value = self.get(header)
        if value is None:
            return failobj
        params = []
        for piece in split_params(str(value)):
            name, sep, val = piece.partition("=")
            params.append((name.strip().lower(), val.strip()) if sep else (piece.strip(), ""))
        return decode_params(params)


POLICY = _RawHeaders(message_factory=Entity)


class ParseStopped(Exception):
    """The parser was stopped by a limit ("depth", "parts" or "deadline").

    `root` holds what was parsed until then (None if nothing was).
    """

    def __init__(self, limit: str, root: Message | None):
        super().__init__(limit)
        self.limit = limit
        self.root = root


class _BoundedParser(BytesFeedParser):
    """compat32 feed parser that refuses to nest or multiply entities beyond a cap.

    XXX: hooks `FeedParser._new_message`, a private method (stable since Python 3.2),
    because the parser offers no public way to bound its recursion.
    """

    def __init__(self, max_nesting: int, max_entities: int, deadline: float):
        super().__init__(policy=POLICY)
        self.max_nesting = max_nesting
        self.max_entities = max_entities
        self.deadline = deadline
        self.entities = 0
        self.root: Message | None = None

    def _new_message(self) -> None:
        if len(self._msgstack) >= self.max_nesting:
            raise ParseStopped("depth", self.root)
        if self.entities >= self.max_entities:
            raise ParseStopped("parts", self.root)
        if time.monotonic() > self.deadline:
            raise ParseStopped("deadline", self.root)
        self.entities += 1
        super()._new_message()
        if self.root is None:
            self.root = self._msgstack[0]


def parse(raw: bytes, max_nesting: int, max_entities: int, deadline: float) -> Message:
    """The entity tree of `raw`, or ParseStopped carrying the partial tree."""
    parser = _BoundedParser(max_nesting, max_entities, deadline)
    for offset in range(0, len(raw), FEED_CHUNK):
        parser.feed(raw[offset : offset + FEED_CHUNK])
        if time.monotonic() > deadline:
            raise ParseStopped("deadline", parser.root)
    return parser.close()


# --- header parameters --------------------------------------------------------------


def split_params(value: str) -> list[str]:
    """`value` split at ';' outside double quotes, as email.message._parseparam does, linearly."""
    out: list[str] = []
    current: list[str] = []
    open_quote = False
    for piece in value.split(";"):
        current.append(piece)
        if (piece.count('"') - piece.count('\\"')) % 2:
            open_quote = not open_quote
        if not open_quote:
            out.append(";".join(current).strip())
            current = []
    if current:
        out.append(";".join(current).strip())
    return out


_RFC2231_NAME = re.compile(r"^(?P<name>\w+)\*((?P<num>[0-9]+)\*?)?$", re.ASCII)


def decode_params(params: list[tuple[str, str]]) -> list[tuple[str, object]]:
    """email.utils.decode_params without its crashes: RFC 2231 continuations joined in order.

    Unlike Python's, an unnumbered `name*=` is kept apart from `name*0=` continuations
    (Python sorts None against ints and raises), and absurd continuation numbers are
    just large numbers.
    """
    out: list[tuple[str, object]] = [params[0]] if params else []
    continued: dict[str, list[tuple[int, str, bool]]] = {}
    for name, value in params[1:]:
        encoded = name.endswith("*")
        value = unquote(value)
        match = _RFC2231_NAME.match(name)
        if match is None:
            out.append((name, '"%s"' % quote(value)))
        elif match.group("num") is None:
            out.append(_joined(match.group("name"), [value], encoded))
        else:
            num = match.group("num")
            index = int(num) if len(num) < 10 else 10**10
            continued.setdefault(match.group("name"), []).append((index, value, encoded))
    for name, pieces in continued.items():
        pieces.sort(key=lambda piece: piece[0])
        values = [urllib.parse.unquote(v, encoding="latin-1") if enc else v for _, v, enc in pieces]
        out.append(_joined(name, values, any(enc for _, _, enc in pieces), decoded=True))
    return out


def _joined(name: str, values: list[str], extended: bool, decoded: bool = False) -> tuple[str, object]:
    if extended and not decoded:
        values = [urllib.parse.unquote(v, encoding="latin-1") for v in values]
    value = quote("".join(values))
    if extended:
        charset, language, value = decode_rfc2231(value)
        return name, (charset, language, '"%s"' % value)
    return name, '"%s"' % value


# --- declared type and name ---------------------------------------------------------


def declared_type(entity: Message) -> str | None:
    """The first Content-Type's value (the one Python uses), lowercased, no parameters."""
    value = entity.get("content-type")
    if value is None:
        return None
    return _undo_surrogates(str(value)).split(";", 1)[0].strip().lower() or None


def declared_name(entity: Message) -> str | None:
    """Content-Disposition filename, else Content-Type name; RFC 2231 and 2047 decoded."""
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        value = entity.get_param(param, None, header=header)
        if value is not None:
            name = _param_text(value)
            if name:
                return name
    return None


def decode_bytes(data: bytes, charset: str | None) -> str:
    """`data` in `charset`; an unknown or unusable charset falls back to UTF-8, then Latin-1."""
    if charset:
        charset = charset.split("*", 1)[0].strip()  # RFC 2231 language suffix
        try:
            return data.decode(charset, "replace")
        # LookupError: unknown or non-text codec; UnicodeError: codecs such as idna
        # that accept only errors="strict"; ValueError/TypeError: names with NULs etc.
        except (LookupError, UnicodeError, ValueError, TypeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _param_text(value: str | tuple) -> str:
    """A parameter value as text: RFC 2231 (charset'lang'%XX), raw 8-bit, RFC 2047."""
    if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded latin-1 text)
        charset, _language, text = value
        text = unquote(text)
        try:
            raw = text.encode("latin-1", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
        text = decode_bytes(raw, charset or "us-ascii")
    else:
        text = _undo_surrogates(unquote(str(value)))
    if "=?" in text:
        text = decode_words(text)
    return text


def _undo_surrogates(text: str) -> str:
    """Raw 8-bit bytes (surrogate-escaped by the bytes parser) read as UTF-8 or Latin-1."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    return decode_bytes(text.encode("utf-8", "surrogateescape"), None)


# RFC 2047 encoded-word; the charset may carry an RFC 2231 language (*en).
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ONLY_SPACE = re.compile(r"[ \t\r\n]*")


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words in `text`, leniently.

    Adjacent words in one charset are joined as bytes before decoding, so a multi-byte
    character split across two words survives; white space between words is dropped
    (RFC 2047 6.2). A word whose payload will not decode is left as it was. Our own
    decoder rather than email.header.decode_header, which round-trips the unencoded
    text through raw-unicode-escape (a literal "\\u202e" in a name would become U+202E).
    """
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_bytes(b"".join(pending), pending_charset))
        pending, pending_charset = [], None

    for match in _ENCODED_WORD.finditer(text):
        between = text[pos : match.start()]
        charset, encoding, payload = match.groups()
        data = _word_payload(encoding, payload)
        if data is None:  # undecodable: keep the word verbatim
            flush()
            out.append(text[pos : match.end()])
            pos = match.end()
            continue
        if not (pending and _ONLY_SPACE.fullmatch(between)):
            flush()
            out.append(between)
        if pending and charset.lower() != (pending_charset or "").lower():
            flush()
        pending.append(data)
        pending_charset = charset
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _word_payload(encoding: str, payload: str) -> bytes | None:
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        return None
    try:
        if encoding in "bB":
            return base64.b64decode(raw + b"=" * (-len(raw) % 4))
        return binascii.a2b_qp(raw, header=True)
    except (binascii.Error, ValueError):
        return None


# --- ambiguity ----------------------------------------------------------------------


# Parameters whose duplicates change what a reader sees: the part structure, the name.
_SINGLE_PARAMS = (("content-type", "boundary"), ("content-disposition", "filename"), ("content-type", "name"))


def ambiguities(entity: Message) -> list[str]:
    """Why this entity can be read in more than one way (empty if it cannot).

    Python's parser silently takes the first Content-Type header and the first
    `boundary=` parameter; other MIME readers (MIME::Parser, mail clients) take the
    last: a scanner and a client would then see different parts (amavisd-new's
    CVE-2024-28054). The same holds for two different file names.
    """
    found: list[str] = []
    types = entity.get_all("content-type") or []
    if len(types) > 1:
        found.append(f"{len(types)} Content-Type header fields")
    for header, label in (("content-transfer-encoding", "Content-Transfer-Encoding"),
                          ("content-disposition", "Content-Disposition")):
        values = {str(v).strip().lower() for v in entity.get_all(header) or []}
        if len(values) > 1:
            found.append(f"{len(values)} different {label} header fields")
    for header, key in _SINGLE_PARAMS:
        if header not in entity:
            continue
        values = {_param_text(v) for k, v in (entity.get_params(header=header) or [])[1:] if k == key}
        if len(values) > 1:
            found.append(f"{len(values)} different {key} parameters in {header.title()}")
    return found


# --- structure and content ----------------------------------------------------------

# Transfer encodings that hide a message/* body from the parser (it parsed the encoded
# text as a headerless message); compat32 decodes all of these in get_payload(decode=True).
_ENCODED_CTES = {"base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"}


def children(entity: Message) -> list[Message] | None:
    """The entity's sub-entities (multipart, message/*), or None for a leaf."""
    payload = entity.get_payload()
    if not isinstance(payload, list) or encoded_message(entity):
        return None
    if entity.get_content_type() == "message/delivery-status":
        return None  # header blocks, not entities: one text leaf (see content())
    return payload


def outside_parts(entity: Message) -> bytes:
    """A multipart's preamble and epilogue (the text before its first boundary and after
    its last), as bytes; b"" when both are empty or only white space. Mail readers do not
    show it, but it is in the message, and clamd scanning the whole message sees it."""
    texts = [t for t in (entity.preamble, entity.epilogue) if t and t.strip()]
    return "\r\n".join(texts).encode("ascii", "surrogateescape") if texts else b""


def encoded_message(entity: Message) -> bool:
    """A message/* entity whose body is transfer-encoded (rfc822 inside base64)."""
    cte = str(entity.get("content-transfer-encoding", "")).strip().lower()
    return entity.get_content_maintype() == "message" and cte in _ENCODED_CTES


def content(entity: Message) -> bytes:
    """A leaf's decoded content. Lenient: bad base64 yields what could be decoded."""
    if encoded_message(entity):
        inner = entity.get_payload()
        # The parser read the encoded text as a message without headers (base64 has no
        # ':'); its body, or its regenerated text if lines looked like headers, is the
        # encoded message.
        encoded = "".join(
            part.get_payload() if not part.keys() and isinstance(part.get_payload(), str)
            else part.as_string()
            for part in inner
        )
        carrier = Message(policy=POLICY)
        carrier["Content-Transfer-Encoding"] = entity["content-transfer-encoding"]
        carrier.set_payload(encoded)
        return carrier.get_payload(decode=True) or b""
    if entity.get_content_type() == "message/delivery-status":
        # compat32 gives a list of header blocks; the report is text, keep it as a leaf
        blocks = entity.get_payload()
        if isinstance(blocks, list):
            text = "\n".join(block.as_string() for block in blocks)
            return text.encode("utf-8", "surrogateescape")
    data = entity.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def nested_message(data: bytes, max_nesting: int, max_entities: int, deadline: float) -> Message | None:
    """`data` parsed as a message when it is one (has headers and a body), else None."""
    root = parse(data, max_nesting, max_entities, deadline)
    if root.keys() and (root.is_multipart() or root.get_payload()):
        return root
    return None


# --- mbox files ---------------------------------------------------------------------

# A "From " envelope line followed by a header field: where an mbox message begins.
_MBOX_FROM = re.compile(rb"^From [^\r\n]*\r?\n[!-9;-~]+:", re.M)


def mbox_starts(data: bytes) -> bool:
    """`data` begins like an mbox file: a "From " line, then a header field."""
    return _MBOX_FROM.match(data) is not None


def mbox_messages(data: bytes) -> Iterator[bytes]:
    """The messages of an mbox file, lazily, each with its "From " line (Python's parser
    takes it as the envelope). Lines inside a message that begin with "From " are quoted
    (">From ") by every mbox writer, so only a real envelope line starts a message."""
    start = 0
    for match in _MBOX_FROM.finditer(data, 1):
        yield data[start : match.start()]
        start = match.start()
    yield data[start:]


# --- uuencode inside text -----------------------------------------------------------

_UU_BEGIN = re.compile(rb"^begin +[0-7]{3,4} +([^\r\n]*?)[ \t]*\r?$", re.M)
_UU_END = re.compile(rb"^end[ \t]*\r?$", re.M)


def uu_blocks(text: bytes) -> Iterator[tuple[str | None, bytes]]:
    """(name, decoded content) of each `begin NNN name` ... `end` block, lazily.

    A block without `end` runs to the end of the text; lines that do not decode end
    the block (what uudecode keeps of a damaged file).
    """
    pos = 0
    while (begin := _UU_BEGIN.search(text, pos)) is not None:
        end = _UU_END.search(text, begin.end())
        stop = end.start() if end else len(text)
        name = decode_bytes(begin.group(1), None) or None
        yield name, _uudecode(text[begin.end() : stop])
        pos = end.end() if end else len(text)


def _uudecode(body: bytes) -> bytes:
    out = []
    for line in body.splitlines():
        if not line.strip():
            continue
        if line[0] in (0x60, 0x20) and len(line.rstrip()) <= 1:  # zero-length line: data ends
            break
        try:
            out.append(binascii.a2b_uu(line))
        except binascii.Error:
            # Some encoders pad lines with garbage; decode exactly the declared length
            # (the workaround the old stdlib uu module used).
            length = (((line[0] - 32) & 63) * 4 + 5) // 3
            try:
                out.append(binascii.a2b_uu(line[:length]))
            except binascii.Error:
                break
    return b"".join(out)
