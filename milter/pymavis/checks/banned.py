"""BANNED: the first part a recipient's banned rule sets deny (rules: pymavis/banned.py).

Which rule sets apply is per recipient (`banned_filename_maps`, "NO-EXE,DEFAULT"); the
rules are evaluated once per distinct list, so recipients sharing a list share a finding.
The finding's detail is amavis's part path of the offending part (its ancestors and
itself, " | "-joined), which the reply template shows as {detail}.

Skipped when every recipient bypasses banned checks; a recipient who bypasses while
others are checked is treated as a lover (decide.py). A spool that cannot be read is
could_not_check.
"""

from __future__ import annotations

import time

from pymavis import banned

from . import CheckResult


def check(scan) -> CheckResult:
    if scan.everyone("bypass_banned_checks"):
        return CheckResult("banned")
    started = time.monotonic()
    try:
        parts = scan.walk.parts
    except OSError as exc:
        return CheckResult("banned", could_not_check=f"spool read failed: {exc}")
    groups: dict[tuple, set] = {}
    for rs in scan.rcpt_settings:
        groups.setdefault(tuple(rs.get("banned_filename_maps")), set()).add(rs.rcpt)
    findings = []
    for names, rcpts in groups.items():
        result = banned.evaluate(parts, [scan.rule_sets[name] for name in names])
        if result is not None:  # one finding for everyone when everyone shares the list
            findings.append(banned.to_finding(result, frozenset(rcpts) if len(groups) > 1 else None))
    return CheckResult("banned", tuple(findings), elapsed_ms=(time.monotonic() - started) * 1000)
