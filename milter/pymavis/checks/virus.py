"""VIRUS: the message through the configured scanners (amavisd-new's @av_scanners and
@av_scanners_backup), with a failure that never reads as clean.

Scanners (`av_scanners`, `av_scanners_backup`, config/schema.py) are clamd daemons reached
by our own client (pymavis/clamd.py). Each primary scans the whole message (as the MTA
gave it to us, from the spool): method `fildes` passes the spool file's descriptor over a
unix socket (no copy) when the spool is a file, and streams a message still held in memory
(writing it to disk only to pass a descriptor would cost more); `instream` always streams
(TCP or unix). All primaries run in order,
unless `first_infected_stops_scan`; the backups run, in order, only when every primary
failed, until one answers.

A scanner's answer is one of:
- infected: the virus names it reported -> one VIRUS finding (names joined by ", ");
- clean;
- heuristics saying it could not look inside (Heuristics.Encrypted.*, Heuristics.Limits.*,
  clamd.is_heuristic_unchecked) -> UNCHECKED minor 1 (encrypted) or 2 (over limits);
- failed (unreachable, timeout, garbage, ERROR) or over its size limit (`max_size`, or
  clamd's StreamMaxLength): it did not answer.

When no scanner answered: only size limits in the way -> UNCHECKED minor 2 (retrying would
not help); otherwise the log says ALL VIRUS SCANNERS FAILED with each reason and
`virus_scanners_failure_is_fatal` (default true) answers TEMPFAIL (the MTA keeps the mail
and retries), false -> UNCHECKED minor 0. Never clean.

`CheckResult.scanned_by` names the scanners that answered: the pipeline adds the
X-Virus-Scanned header (`x_header_tag`) only then.

Skipped when every recipient bypasses virus checks (bypass_virus_checks); a recipient who
bypasses while others are scanned is treated as a lover (decide.py). A spool truncated
because every recipient's size limit was passed is not scanned (UNCHECKED over limits).

Threads: runs in the pipeline's worker (never on libmilter's threads). Time: each scanner
has its own connect and I/O timeouts; they run one after the other, so the sum of the
timeouts of the scanners that can run must stay below milter.scan_deadline_s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pymavis import clamd
from pymavis.categories import Ccat, Finding
from pymavis.log import log

from . import CheckResult


@dataclass(frozen=True)
class Scanner:
    """One configured scanner."""

    name: str
    client: clamd.ClamdClient
    method: str        # "fildes" | "instream"
    max_size: int      # bytes; 0: no limit of ours (clamd's StreamMaxLength still applies)


class _OverLimit(Exception):
    pass


def _scan_one(scanner: Scanner, spool) -> clamd.ScanReply:
    if scanner.max_size and spool.stored > scanner.max_size:
        raise _OverLimit(f"message {spool.stored} bytes > max_size {scanner.max_size}")
    if scanner.method == "fildes" and spool.on_disk:
        return scanner.client.fildes(spool.fileno())
    return scanner.client.instream(spool.reader())


def _run(scanner: Scanner, spool, answers: list, failures: list) -> clamd.ScanReply | None:
    started = time.monotonic()
    try:
        reply = _scan_one(scanner, spool)
    except (_OverLimit, clamd.ClamdSizeLimit) as exc:
        failures.append((scanner.name, "over limits", str(exc)))
        return None
    except (clamd.ClamdError, OSError) as exc:
        failures.append((scanner.name, "failed", f"{type(exc).__name__}: {exc}"))
        return None
    answers.append((scanner.name, reply, (time.monotonic() - started) * 1000))
    return reply


def check(scan) -> CheckResult:
    primaries, backups = scan.scanners
    if not primaries and not backups:
        return CheckResult("virus")
    if scan.everyone("bypass_virus_checks"):
        return CheckResult("virus")
    started = time.monotonic()
    spool = scan.txn.spool
    if getattr(spool, "truncated", False):
        finding = Finding("virus", Ccat.UNCHECKED, 2, f"not scanned: message not stored whole ({spool.size} bytes)")
        return CheckResult("virus", (finding,), elapsed_ms=_ms(started))
    answers: list = []
    failures: list = []
    for scanner in primaries:
        reply = _run(scanner, spool, answers, failures)
        if reply is not None and reply.infected and not reply.unchecked and scan.first_infected_stops_scan:
            break
    if not answers:
        for scanner in backups:
            if _run(scanner, spool, answers, failures) is not None:
                break
    elapsed = _ms(started)
    if not answers:
        return _none_answered(scan, failures, elapsed)
    for name, kind, why in failures:
        log.warning("mail_id %s: virus scanner %s %s: %s", scan.txn.mail_id, name, kind, why)
    return CheckResult("virus", _findings(answers), elapsed_ms=elapsed,
                       scanned_by=tuple(name for name, _, _ in answers))


def _findings(answers) -> tuple[Finding, ...]:
    viruses, scanners, unchecked = [], [], []
    for name, reply, _ in answers:
        for virus in reply.infected:
            if clamd.is_heuristic_unchecked(virus):
                unchecked.append(virus)
            elif virus not in viruses:
                viruses.append(virus)
                scanners.append(name)
    findings = []
    if viruses:
        findings.append(Finding("virus", Ccat.VIRUS, 0, ", ".join(viruses), None,
                                (("virus_names", tuple(viruses)), ("scanners", tuple(dict.fromkeys(scanners))))))
    if unchecked:
        minor = 1 if any(".Encrypted." in name for name in unchecked) else 2
        kind = "encrypted" if minor == 1 else "over limits"
        findings.append(Finding("virus", Ccat.UNCHECKED, minor, f"{kind}: scanner reported {', '.join(unchecked)}"))
    return tuple(findings)


def _none_answered(scan, failures, elapsed) -> CheckResult:
    reasons = "; ".join(f"{name}: {why}" for name, _, why in failures)
    if failures and all(kind == "over limits" for _, kind, _ in failures):
        finding = Finding("virus", Ccat.UNCHECKED, 2, f"over limits: no scanner took the message ({reasons})")
        return CheckResult("virus", (finding,), elapsed_ms=elapsed)
    log.error("mail_id %s: ALL VIRUS SCANNERS FAILED: %s", scan.txn.mail_id, reasons)
    if getattr(scan.policy, "virus_scanners_failure_is_fatal", True):
        return CheckResult("virus", elapsed_ms=elapsed, tempfail=f"all virus scanners failed ({reasons})")
    return CheckResult("virus", could_not_check=f"all virus scanners failed ({reasons})", elapsed_ms=elapsed)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
