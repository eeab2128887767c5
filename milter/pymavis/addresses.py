"""Address lists in the forms nearly all mail uses, read by a regex.

`addr`, `<addr>` and `Name <addr>` (a name free of quotes, comments, groups, brackets, `@`
and encoded words, below), with addr a dot-atom at a dot-separated domain.
email.utils.getaddresses and the header registry are the references for everything else;
for these forms they find the same addresses and report no defect, at ~20 times the cost.
The JSON events read From and To through this, and the bad-header check skips its parse
for a list that is plain.
"""

from __future__ import annotations

import re

_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_ADDR = rf"{_DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# The name: Python 3.11's header registry raises on a name that begins with "." (a phrase
# begins with a word) or ends in "." just before "<", on CR or LF and on lone high
# surrogates, and the bad-header check reports that as a syntax error, so a name with any of
# them is not plain. Nor is a list with an encoded word ("=?"; plain_addresses): the registry
# decodes those, and fails on some broken ones.
_NAME = r"(?:[^<>@,\"()\\:;\[\].\s\ud800-\udbff][^<>@,\"()\\:;\[\]\r\n\ud800-\udbff]*)?"
_PLAIN_ITEM = re.compile(rf"[ \t]*(?:{_NAME}(?<!\.)<({_PLAIN_ADDR})>|({_PLAIN_ADDR}))[ \t]*")


def plain_addresses(value: str) -> list[str] | None:
    """The addresses of an address list whose items are all plain (empty items are
    skipped, as the references do); None as soon as one item is not, or when the list
    holds an encoded word."""
    if "=?" in value:
        return None
    found = []
    for item in value.split(","):
        m = _PLAIN_ITEM.fullmatch(item)
        if m:
            found.append(m.group(1) or m.group(2))
        elif item.strip():
            return None
    return found
