"""What DKIM and ARC verification (dkimverify.py, arcverify.py) give dkimpy, and how they
read its answers.

- `KeyFetch(lookup)`: the dnsfunc given to dkimpy. Key lookups go through the one DNS
  function (auth/resolver.py). dkimpy catches its own DnsTimeoutError and KeyFormatError
  and answers "not verified", which would read as fail: so this function raises
  DnsTempError (not a dkimpy exception, so it travels out of dkimpy's verify calls) and
  notes whether a record was found and whether it parses, before dkimpy sees it. It
  remembers the last lookup only: the callers reset it before each signature and read it
  after.
- `DebugOnly()`: the logger given to dkimpy. dkimpy logs a missing key with
  logger.error, which is an ordinary result here, not an operator's problem: every line
  goes to debug (logger "pymavis.dkimpy"). dkimpy's messages quote the message's bytes.
- `validation(message)`: our (result, reason) for one of dkimpy's ValidationError
  messages. The reasons are fixed words (they go into the Authentication-Results comment).
"""

from __future__ import annotations

import logging
import re

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from .resolver import Lookup

DKIMPY_LOG = logging.getLogger("pymavis.dkimpy")


class DebugOnly:
    """The logger given to dkimpy (module doc)."""

    def _debug(self, msg, *args, **kwargs):
        DKIMPY_LOG.debug(msg, *args, **kwargs)

    debug = info = warning = error = exception = _debug


class KeyFetch:
    """The dnsfunc given to dkimpy: our lookup, with what it saw remembered."""

    def __init__(self, lookup: Lookup):
        self.lookup = lookup
        self.reset()

    def reset(self):
        self.found = None        # None: not asked; False: no record; True: a record
        self.key_problem = ""    # why the record found is not a usable key

    def __call__(self, name: bytes, timeout: float = 5):
        text = name.decode("ascii", "replace").rstrip(".")
        answers = self.lookup(text, "TXT")       # DnsTempError travels out through dkimpy
        self.found = bool(answers)
        if not answers:
            return None
        record = answers[0]
        try:
            dkim.evaluate_pk(name, record)
        except (dkim.KeyFormatError, ValueError) as exc:   # ValueError: binascii.Error on bad base64
            self.key_problem = "key revoked" if _revoked(record) else "bad key"
            DKIMPY_LOG.debug("key %s: %s", text, exc)
        return record

    def problem(self) -> str:
        """Why the last key looked up cannot verify anything: "no key", "key revoked",
        "bad key", or "" when it is a usable key (or nothing was asked)."""
        if self.found is False:
            return "no key"
        return self.key_problem


def _revoked(record: bytes) -> bool:
    try:
        return parse_tag_value(record).get(b"p", b"x").strip() == b""
    except InvalidTagValueList:
        return False


def text(value: bytes | None) -> str | None:
    """A tag value from the message as text, whitespace removed."""
    if value is None:
        return None
    return re.sub(r"\s+", "", value.decode("ascii", "backslashreplace"))


_VALIDATION = (("body hash mismatch", "fail", "body hash did not verify"),
               ("x= value is past", "permerror", "signature expired"),
               ("x= value is less than t=", "permerror", "signature expired before it was made"),
               ("t= value is in the future", "permerror", "signature from the future"),
               ("unknown signature algorithm", "permerror", "unknown algorithm"),
               ("i= domain is not a subdomain", "permerror", "i= not within d="),
               ("cv= value is not valid", "permerror", "bad cv= value"),
               ("missing ", "permerror", "signature lacks a required tag"))


def validation(message: str) -> tuple[str, str]:
    """(result, reason) for one of dkimpy's ValidationError messages."""
    for start, result, reason in _VALIDATION:
        if message.startswith(start):
            return result, reason
    return "permerror", "malformed signature"
