"""OVERSIZED: a message larger than a recipient's `message_size_limit`.

Sizes are the bytes the MTA gave us (header section plus body, CRLF line ends), as
amavisd-new counts them. The limit is per recipient (a lookup); 0 means no limit.
The adapter also refuses a RCPT early when the ESMTP SIZE parameter already exceeds
that recipient's limit, and stops storing body bytes once every limit is passed.
"""

from __future__ import annotations

from pymavis.categories import Ccat, Finding

from . import CheckResult


def check(scan) -> CheckResult:
    txn = scan.txn
    over = {}
    for rs in scan.rcpt_settings:
        limit = rs.get("message_size_limit")
        if limit and txn.size > limit:
            over.setdefault(limit, set()).add(rs.rcpt)
    findings = tuple(
        Finding("size", Ccat.OVERSIZED, 0, f"size {txn.size} > limit {limit}", frozenset(rcpts),
                (("size", txn.size), ("limit", limit)))
        for limit, rcpts in sorted(over.items())
    )
    return CheckResult("size", findings)
