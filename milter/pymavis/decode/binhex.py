"""BinHex 4.0 (.hqx, RFC 1741 appendix): the forks of the Mac files a text carries.

Python 3.11 removed the `binhex` module and binascii's hqx helpers, so this is our own
decoder. `members(text, room)` finds each "(This file must be converted with BinHex ...)"
line followed, after white space only, by ':'; decodes the 6-bit characters up to the
closing ':' (line breaks and blanks between them ignored); undoes the run-length
encoding (0x90 n: the byte before, n times in all; 0x90 0: a literal 0x90); reads the
header (name length, name, version, type, creator, flags, data fork length, resource
fork length, CRC) and yields `Member(name, data fork)`, then `Member(name, resource
fork)` when that is not empty. Both carry the header's file name (Mac Roman), which
is what the recipient's decoder writes. A marker with no ':' after it is text about
BinHex, not BinHex: nothing is yielded.

Limits: linear time and memory. The 6-bit characters go through bytes.translate and
base64 (C code); the run-length decoder jumps from one 0x90 to the next and stops once
it has what the header declares or just more than `room()` (the walk's remaining byte
quota; a run expands 2 bytes into at most 255). Forks larger than the room end the
walk: Issue("over limits", stops="bytes").

Failures are Issues, never exceptions: a character outside the alphabet (decoding stops
there), no closing ':', a stream that begins with a run or ends inside one, a header
or fork shorter than declared (what is there is yielded), a CRC mismatch - each an
Issue("error", "BinHex <name>: ...", or "BinHex unreadable: ..." without a header). A
bad CRC does not withhold a fork: lenient decoders still write it out, and the scanners
should see what a recipient may get; the error makes the message UNCHECKED anyway.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator

from pymavis.decode.archives import Issue, Member

MARKER = b"(This file must be converted with BinHex"
_START = re.compile(re.escape(MARKER) + rb"[^)\r\n]*\)[ \t\r\n]*:")

# The 64 characters in 6-bit order, and base64's: a translation turns one into the other.
ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_TO_BASE64 = bytes.maketrans(ALPHABET, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_BLANKS = b" \t\r\n"
_OUTSIDE = re.compile(rb"[^" + re.escape(ALPHABET) + rb"]")
RUN = 0x90

# Header after the name: version 1, type 4, creator 4, flags 2, data length 4,
# resource length 4, CRC 2.
_AFTER_NAME = 21
_HEADER_MAX = 1 + 255 + _AFTER_NAME


def members(text: bytes, room: Callable[[], int]) -> Iterator[Member | Issue]:
    """The forks of every BinHex block in `text`, lazily; see the module header."""
    pos = 0
    while (start := _START.search(text, pos)) is not None:
        end = text.find(b":", start.end())
        encoded = text[start.end() : end if end >= 0 else len(text)]
        pos = end + 1 if end >= 0 else len(text)
        try:
            yield from _block(encoded, end >= 0, room)
        except ValueError as exc:  # corrupt header or stream: binascii.Error, UnicodeError, ours
            yield Issue("error", f"BinHex unreadable: {type(exc).__name__}: {exc}")


def _block(encoded: bytes, closed: bool, room: Callable[[], int]) -> Iterator[Member | Issue]:
    """The forks of one block (the characters between the colons); ValueError if it has no header."""
    packed, problem = _sextets(encoded)
    if not closed and problem is None:
        problem = "no closing ':'"
    header, _ = _unrun(packed, _HEADER_MAX)  # a header cut short says so below
    name, data_len, rsrc_len, header_len = _header(header)
    label = f"BinHex {name or '(no name)'}"
    if problem:
        yield Issue("error", f"{label}: {problem}")
    if binascii.crc_hqx(header[: header_len - 2], 0) != int.from_bytes(header[header_len - 2 : header_len], "big"):
        yield Issue("error", f"{label}: header CRC mismatch")
    left = room()
    wanted = data_len + 2 + rsrc_len + 2  # the forks and their CRCs
    stream, cut = _unrun(packed, header_len + min(wanted, left + 5))
    forks = stream[header_len:]
    if len(forks) > left + 4:
        yield Issue("over limits", f"{label}: forks ({data_len} + {rsrc_len} bytes) > quota left ({left} bytes)",
                    "bytes")
        return
    if cut:
        yield Issue("error", f"{label}: {cut}")
    for fork, offset, length in (("data", 0, data_len), ("resource", data_len + 2, rsrc_len)):
        content = forks[offset : offset + length]
        crc = forks[offset + length : offset + length + 2]
        if len(crc) < 2:
            yield Issue("error", f"{label}: {fork} fork cut short ({len(content)} of {length} bytes, no CRC)")
        elif binascii.crc_hqx(content, 0) != int.from_bytes(crc, "big"):
            yield Issue("error", f"{label}: {fork} fork CRC mismatch")
        if fork == "data" or length:
            yield Member(name, content)
        if len(crc) < 2:
            return  # nothing after it


def _sextets(encoded: bytes) -> tuple[bytes, str | None]:
    """The bytes the 6-bit characters stand for; decoding stops at a character outside the
    alphabet (the problem returned)."""
    chars = encoded.translate(None, _BLANKS)
    problem = None
    if (stranger := _OUTSIDE.search(chars)) is not None:
        problem = f"character {chr(chars[stranger.start()])!r} outside the BinHex alphabet, decoded up to it"
        chars = chars[: stranger.start()]
    if len(chars) % 4 == 1:  # 6 bits do not make a byte
        chars = chars[:-1]
    chars = chars.translate(_TO_BASE64)
    return base64.b64decode(chars + b"=" * (-len(chars) % 4)), problem


def _unrun(packed: bytes, limit: int) -> tuple[bytes, str | None]:
    """`packed` with its runs expanded, at most `limit` bytes; and why it ended early, if it did."""
    out = bytearray()
    pos = 0
    while len(out) < limit:
        mark = packed.find(RUN, pos, pos + limit - len(out) + 1)
        if mark < 0:
            out += packed[pos : pos + limit - len(out)]
            return bytes(out), None
        out += packed[pos:mark]
        if mark + 1 >= len(packed):
            return bytes(out), "stream ends inside a run"
        count = packed[mark + 1]
        if count == 0:
            out.append(RUN)
        elif not out:  # only possible at the very start
            raise ValueError("run with no byte before it")
        else:
            out += out[-1:] * (count - 1)
        pos = mark + 2
    return bytes(out[:limit]), None


def _header(header: bytes) -> tuple[str | None, int, int, int]:
    """(file name, data fork length, resource fork length, header length) from the header."""
    if not header:
        raise ValueError("no header")
    header_len = 1 + header[0] + _AFTER_NAME
    if len(header) < header_len:
        raise ValueError(f"header cut short ({len(header)} of {header_len} bytes)")
    name = header[1 : 1 + header[0]].decode("mac_roman") or None
    lengths = 1 + header[0] + 11
    data_len = int.from_bytes(header[lengths : lengths + 4], "big")
    rsrc_len = int.from_bytes(header[lengths + 4 : lengths + 8], "big")
    return name, data_len, rsrc_len, header_len
