"""Address lists in the forms nearly all mail uses, read by a regex.

`addr`, `<addr>` and `Name <addr>` (a name free of quotes, comments, groups, brackets and
`@`), with addr a dot-atom at a dot-separated domain. email.utils.getaddresses and the
header registry are the references for everything else; for these forms they find the
same addresses and report no defect, at ~20 times the cost. The JSON events read From and
To through this, and the bad-header check skips its parse for a list that is plain.
"""

from __future__ import annotations

import re

_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_ADDR = rf"{_DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ITEM = re.compile(rf"\s*(?:[^<>@,\"()\\:;\[\]]*<({_PLAIN_ADDR})>|({_PLAIN_ADDR}))\s*")


def plain_addresses(value: str) -> list[str] | None:
    """The addresses of an address list whose items are all plain (empty items are
    skipped, as the references do); None as soon as one item is not."""
    found = []
    for item in value.split(","):
        m = _PLAIN_ITEM.fullmatch(item)
        if m:
            found.append(m.group(1) or m.group(2))
        elif item.strip():
            return None
    return found
