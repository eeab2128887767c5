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


def header_text(text: str, limit: int = 900) -> str:
    """One line of printable ASCII text (tabs kept), at most `limit` characters."""
    text = _CONTROL.sub(" ", ascii_text(str(text).replace("\r\n", " ")))
    return text[:limit]


def reply_text(text: str, limit: int = 400) -> str:
    """One ASCII reply line: control characters become spaces, `%` is doubled for libmilter."""
    text = _CONTROL.sub(" ", ascii_text(str(text).replace("\t", " ")))[:limit]
    return text.replace("%", "%%")
