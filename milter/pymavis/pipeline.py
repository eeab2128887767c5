"""The work of end-of-message, run in our own worker pool (never on libmilter's threads):
resolve per-recipient settings, run the checks in order, decide per recipient, collapse
into one Outcome. Pure apart from the checks' own I/O; the adapter applies the result.

A check that could not do its work becomes UNCHECKED (minor 0, its reason) for every
recipient: never clean. Mail passed to recipients despite findings carries one
`alert_header_tag` header per finding that applies to a passed recipient (amavis's
X-Amavis-Alert). Headers are per message in milter, so a finding for some passed
recipients is shown to all passed recipients (per-recipient header groups come later).

Test hooks (environment, tests only): with PYMAVIS_FAULT_INJECT=MARKER a message whose
Subject contains MARKER raises here, to prove that an internal error answers TEMPFAIL and
the MTA keeps the message; with PYMAVIS_SLOW_INJECT=MARKER:SECONDS such a message takes that
long, to test shutdown with work in flight.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import checks as checks_mod
from .categories import Ccat, Finding
from .decide import RcptDecision, decide, resolve_rcpt
from .log import log
from .lookups import LookupFailed
from .outcome import Action, HeaderEdit, Outcome, Reply, collapse


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    findings: tuple[Finding, ...]
    checks: tuple
    timings: tuple   # (stage, ms) pairs
    scan: checks_mod.Scan | None = field(default=None, compare=False, repr=False)  # None when no check ran


def pass_headers(config, policy, findings=(), decisions=(), scanned=False, subject=None) -> tuple[HeaderEdit, ...]:
    """Headers for passed mail: X-Virus-Scanned when a virus scanner answered, one alert
    per finding that concerns a passed recipient, the Subject tag of a passed recipient's
    main category (the highest tag wins)."""
    edits = []
    if scanned and policy.x_header_line:
        value = policy.x_header_line.replace("{mydomain}", config.mydomain).replace("{myhostname}", config.myhostname)
        edits.append(HeaderEdit(policy.x_header_tag, value, "insert"))
    if policy.alert_header_tag:
        passed = [d.rcpt for d in decisions if not d.blocked]
        edits.extend(HeaderEdit(policy.alert_header_tag, alert_text(f), "insert")
                     for f in findings if any(f.applies_to(r) for r in passed))
    tags = [policy.subject_tag_by_ccat.get(d.main.name) for d in sorted(decisions, key=lambda d: -d.main)
            if not d.blocked]
    tag = next((t for t in tags if t), None)
    if tag:
        edits.append(HeaderEdit("Subject", tag + subject, "change", from_message=True) if subject is not None
                     else HeaderEdit("Subject", tag.rstrip(), "add"))
    return tuple(edits)


_ALERT_PREFIX = {Ccat.VIRUS: "INFECTED, message contains virus: ", Ccat.BANNED: "BANNED, message contains ",
                 Ccat.UNCHECKED: "UNCHECKED, ", Ccat.OVERSIZED: "OVERSIZED, "}


def alert_text(finding: Finding) -> str:
    """amavis's X-Amavis-Alert wording ('BAD HEADER SECTION, ...' is already in the detail)."""
    return _ALERT_PREFIX.get(finding.ccat, "") + finding.detail


def scan_for(config, policy, txn, rcpt_settings) -> checks_mod.Scan:
    """The checks' view of one message, with the configuration's decoding settings."""
    if config is None:
        return checks_mod.Scan(txn, policy, rcpt_settings)
    return checks_mod.Scan(txn, policy, rcpt_settings, limits=config["decode"], type_map=config["file_type_map"],
                           rule_sets=config["banned_rules"],
                           scanners=(config["av_scanners"], config["av_scanners_backup"]),
                           first_infected_stops_scan=config["first_infected_stops_scan"],
                           gate=checks_mod.decode_gate(config["milter"]["decode_workers"],
                                                      config["milter"]["decode_memory_bytes"]))


def unchecked(result: checks_mod.CheckResult) -> Finding:
    return Finding(result.name, Ccat.UNCHECKED, 0, f"{result.name} check failed: {result.could_not_check}")


_FAULT_MARKER = os.environ.get("PYMAVIS_FAULT_INJECT")
_SLOW_MARKER, _, _SLOW_SECONDS = os.environ.get("PYMAVIS_SLOW_INJECT", "").partition(":")


class InjectedFault(RuntimeError):
    pass


def process(config, policy, txn, checks=None) -> Result:
    if _FAULT_MARKER and _FAULT_MARKER in (txn.header("Subject") or ""):
        raise InjectedFault(f"fault injected by PYMAVIS_FAULT_INJECT={_FAULT_MARKER!r}")
    if _SLOW_MARKER and _SLOW_MARKER in (txn.header("Subject") or ""):
        log.warning("PYMAVIS_SLOW_INJECT: mail_id %s sleeps %s s", txn.mail_id, _SLOW_SECONDS or 1)
        time.sleep(float(_SLOW_SECONDS or 1))
    timings = []
    t0 = time.monotonic()
    try:
        rcpt_settings = tuple(resolve_rcpt(policy, r.addr) for r in txn.rcpts)
    except LookupFailed as exc:
        # A failed lookup is never "not found": the MTA keeps the message and retries.
        reply = Reply("451", "4.3.0", f"Temporary lookup failure, id={txn.mail_id}")
        return Result(Outcome(Action.TEMPFAIL, reply, lookup_error=str(exc)), (), (), ())
    timings.append(("lookups", (time.monotonic() - t0) * 1000))
    results = []
    scan = scan_for(config, policy, txn, rcpt_settings)
    for check in (checks if checks is not None else checks_mod.CHECKS):
        t1 = time.monotonic()
        result = check(scan)
        results.append(result)
        timings.append((result.name, (time.monotonic() - t1) * 1000))
    findings = tuple(f for r in results for f in (*r.findings, *([unchecked(r)] if r.could_not_check else [])))
    tempfail = next((r.tempfail for r in results if r.tempfail), None)
    if tempfail:
        reply = Reply("451", "4.3.0", f"Temporary content check failure, try again later, id={txn.mail_id}")
        return Result(Outcome(Action.TEMPFAIL, reply), findings, tuple(results), tuple(timings), scan)
    t2 = time.monotonic()
    decisions: tuple[RcptDecision, ...] = tuple(decide(policy, rs, findings) for rs in rcpt_settings)
    scanned = any(r.scanned_by for r in results)
    headers = pass_headers(config, policy, findings, decisions, scanned, txn.header("Subject"))
    outcome = collapse(policy, decisions, txn.mail_id, headers)
    timings.append(("decide", (time.monotonic() - t2) * 1000))
    return Result(outcome, findings, tuple(results), tuple(timings), scan)
