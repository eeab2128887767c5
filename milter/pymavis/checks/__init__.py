"""Checks: each looks at the frozen transaction and returns findings.

One interface: `check(txn, policy, rcpt_settings) -> CheckResult`. A check that could not
do its work says so (`could_not_check`), which is never read as clean. The order in which
checks run is stated here, in CHECKS, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymavis.categories import Finding


@dataclass(frozen=True)
class CheckResult:
    name: str
    findings: tuple[Finding, ...] = ()
    could_not_check: str | None = None   # why, when the check could not do its work
    elapsed_ms: float = 0.0


def _registry():
    from . import size
    return (size.check,)


CHECKS = _registry()
