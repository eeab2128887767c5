"""Make untrusted text safe for a header value or an SMTP reply.

CR and LF would let a sender inject header lines or reply lines; other control
characters confuse MTAs and log readers; SMTP replies and header values are ASCII, so
anything else is escaped. libmilter's setreply treats `%` as a format
character, so replies double it (pymilter checks and refuses single `%`).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def ascii_text(text: str) -> str:
    """Non-ASCII characters as escapes (\\u202e, \\xe9): decoded file names may hold
    anything, including bidi controls that would reorder a reader's view of the line."""
    return str(text).encode("ascii", "backslashreplace").decode("ascii")


def header_text(text: str, limit: int = 900, *, ascii_only: bool = True) -> str:
    """One line of printable text (tabs kept), at most `limit` characters; ASCII unless
    `ascii_only` is false (a value that came from the message, such as its Subject)."""
    text = str(text).replace("\r\n", " ")
    if ascii_only:
        text = ascii_text(text)
    else:  # bytes that were not UTF-8 (kept as surrogates) cannot go back to the MTA as text
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = _CONTROL.sub(" ", text)
    return text[:limit]


def reply_text(text: str, limit: int = 400) -> str:
    """One ASCII reply line: control characters become spaces, `%` is doubled for libmilter."""
    text = _CONTROL.sub(" ", ascii_text(str(text).replace("\t", " ")))[:limit]
    return text.replace("%", "%%")
