"""Make untrusted text safe for a header value or an SMTP reply.

CR and LF would let a sender inject header lines or reply lines; other control
characters confuse MTAs and log readers. libmilter's setreply treats `%` as a format
character, so replies double it (pymilter checks and refuses single `%`).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_text(text: str, limit: int = 900) -> str:
    """One line of printable text (tabs kept), at most `limit` characters."""
    text = _CONTROL.sub(" ", str(text).replace("\r\n", " "))
    return text[:limit]


def reply_text(text: str, limit: int = 400) -> str:
    """One reply line: control characters become spaces, `%` is doubled for libmilter."""
    text = _CONTROL.sub(" ", str(text).replace("\t", " "))[:limit]
    return text.replace("%", "%%")
