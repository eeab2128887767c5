"""UNCHECKED: what the walk over a message's parts could not look into.

The walk (decode/) reports problems instead of raising; each kind becomes one UNCHECKED
finding for every recipient, with amavisd-new's minor codes where amavis has one:

    minor  problem       meaning
      0    error         a decoder failed on a part (the exception's class in the detail)
      1    encrypted     an encrypted archive member (zip, 7z, rar)
      2    over limits   depth, parts, expanded bytes, member ratio or decoding time; also
                         a message we did not store whole (every recipient's size limit
                         was passed, transaction.Spool.truncated)
      3    ambiguous     MIME that two parsers read differently: two Content-Type fields,
                         two boundary parameters (amavisd-new CVE-2024-28054); ours

The detail names the first problem of the kind and how many more there were; every
problem goes to the log with its numbers. When the message has several kinds, decide
sees one finding per kind and the highest minor leads.

The walk runs only when some recipient needs the parts: the banned check
(`bypass_banned_checks`), or a virus scanner with method `parts` for a recipient who does
not bypass virus checks (Scan.wants_contents); then the problems above are findings too.
"""

from __future__ import annotations

import time

from pymavis.categories import Ccat, Finding

from . import CheckResult

MINOR = {"error": 0, "encrypted": 1, "over limits": 2, "ambiguous": 3}
NEEDS_PARTS = ("bypass_banned_checks",)  # decoding is skipped when everyone bypasses all of these


def needs_parts(scan) -> bool:
    return not all(scan.everyone(setting) for setting in NEEDS_PARTS) or scan.wants_contents


def check(scan) -> CheckResult:
    if not needs_parts(scan):
        return CheckResult("decode")
    started = time.monotonic()
    try:
        walk = scan.walk
    except OSError as exc:
        return CheckResult("decode", could_not_check=f"spool read failed: {exc}")
    by_kind: dict[str, list] = {}
    for problem in walk.problems:
        by_kind.setdefault(problem.minor, []).append(problem)
    findings = []
    for kind, problems in sorted(by_kind.items(), key=lambda item: MINOR.get(item[0], 0)):
        first = problems[0]
        where = f"{first.part}: " if first.part else ""
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        findings.append(Finding("decode", Ccat.UNCHECKED, MINOR.get(kind, 0), f"{kind}: {where}{first.detail}{more}",
                                None, (("problems", tuple(f"{p.minor}: {p.part or '-'}: {p.detail}" for p in problems)),)))
    return CheckResult("decode", tuple(findings), elapsed_ms=(time.monotonic() - started) * 1000)
