"""Checks: each looks at one message and returns findings.

One interface: `check(scan: Scan) -> CheckResult`. A `Scan` holds the frozen transaction,
the merged policy, the recipients' resolved settings and the decoding settings; the walk
over the message's parts (decode/) runs once, on first use, so a message whose recipients
all bypass the checks that need parts is never decoded.

A check that could not do its work says so (`could_not_check`, with why); the pipeline
turns that into UNCHECKED for every recipient, never into clean.

The order in which checks run is stated here, in CHECKS, and nowhere else: size, then the
header section, then decoding (its problems are UNCHECKED), then banned content. Virus and
spam checks (later) come between decoding and banned, as in amavisd-new.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pymavis.banned import DEFAULT_RULE_SETS
from pymavis.categories import Finding
from pymavis.decode import DEFAULT_TYPE_MAP, Limits, Problem, Walk, walk


@dataclass(frozen=True)
class CheckResult:
    name: str
    findings: tuple[Finding, ...] = ()
    could_not_check: str | None = None   # why, when the check could not do its work
    elapsed_ms: float = 0.0


@dataclass
class Scan:
    """What the checks of one message share. Not shared between threads."""

    txn: object                  # transaction.Transaction (or anything with .spool, .size)
    policy: object               # policy.Policy
    rcpt_settings: tuple         # decide.RcptSettings, one per recipient
    limits: Limits = Limits()
    type_map: tuple = DEFAULT_TYPE_MAP
    rule_sets: dict = field(default_factory=lambda: dict(DEFAULT_RULE_SETS))
    decoded: bool = field(default=False, init=False)

    def everyone(self, setting: str) -> bool:
        """True when every recipient has `setting` (a bypass) true; False with no recipients."""
        return bool(self.rcpt_settings) and all(rs.get(setting) for rs in self.rcpt_settings)

    @functools.cached_property
    def walk(self) -> Walk:
        """Every part of the message (decode.walk), computed on first use. Raises only
        OSError (a spool that cannot be read). A message we did not store whole is not
        decoded: its walk is one 'over limits' problem."""
        self.decoded = True
        spool = self.txn.spool
        if getattr(spool, "truncated", False):
            detail = f"message not stored whole: {spool.size} bytes, over every recipient's size limit"
            return Walk((), (Problem("over limits", None, detail),), 0.0)
        return walk(spool.read(), self.limits, self.type_map)


def _registry():
    from . import banned, content, headers, size
    return (size.check, headers.check, content.check, banned.check)


CHECKS = _registry()
