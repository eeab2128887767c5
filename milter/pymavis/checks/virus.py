"""VIRUS: the message through the configured scanners (amavisd-new's @av_scanners and
@av_scanners_backup), with a failure that never reads as clean.

Scanners (`av_scanners`, `av_scanners_backup`, config/schema.py) are clamd daemons reached
by our own client (pymavis/clamd.py). A scanner's `method` says what clamd is given:

| method     | what clamd gets                                                                  |
|------------|----------------------------------------------------------------------------------|
| `fildes`   | the whole message (as the MTA gave it to us, from the spool): the spool file's   |
|            | descriptor over a unix socket (no copy) when the spool is a file; a message      |
|            | still in memory is streamed (writing it to disk only to pass a descriptor would  |
|            | cost more)                                                                       |
| `instream` | the whole message, streamed (zINSTREAM; TCP or unix)                             |
| `parts`    | the decoded parts (decode/, the walk the banned check sees), one zINSTREAM each: |
|            | the message's header section first, then, in walk order, every part with bytes  |
|            | of its own (decode/contents.py): text bodies, attachments, archive and TNEF      |
|            | members, and the containers' own bytes too (an archive as well as its members,  |
|            | a text holding a uuencoded block, a base64 message/rfc822; so bytes that no     |
|            | member holds are seen), a multipart's preamble and epilogue. Not sent: the      |
|            | header fields of MIME parts and of nested messages, and transfer-encoded text   |
|            | (only what it decodes to)                                                        |

All primaries run in order, unless `first_infected_stops_scan`; the backups run, in order,
only when every primary failed, until one answers.

Method `parts`, case by case (its answer is one of those listed below the table):

| case                                              | this scanner's answer                            |
|---------------------------------------------------|--------------------------------------------------|
| a part infected                                   | infected: the names from every part sent,        |
|                                                   | deduplicated; the log names the part ("virus     |
|                                                   | scanner clamd: P=p003,L=1/2,M=...,T=zip,N=a.zip  |
|                                                   | INFECTED: Eicar-Test-Signature"), the finding    |
|                                                   | has (name, part) pairs as `virus_parts`. The     |
|                                                   | parts after it are not sent, whatever            |
|                                                   | first_infected_stops_scan says (one infected     |
|                                                   | part decides this scanner's answer)              |
| a part with heuristics (Heuristics.Encrypted.*,   | as for a whole message (UNCHECKED 1 / 2); the    |
| Heuristics.Limits.*)                              | parts after it are still sent                    |
| a part over `max_size` (not sent) or over clamd's | the other parts are still sent: a virus in them  |
| StreamMaxLength                                   | is infected; else this scanner is over limits,   |
|                                                   | as a whole message over them (never clean)       |
| a part failed (unreachable, timeout, garbage,     | failed, as a whole message failing (backups,     |
| ERROR), or `timeout_s` spent before the last part | the failure policy); no more parts are sent      |
| the walk met a problem (encrypted, over limits,   | the whole message is streamed instead of the     |
| ambiguous MIME, a decoder error: content.py), the | parts, as by `instream` (amavis's keeping of the |
| parts could not be kept (disk full), or the       | original for MAIL-UNDECIPHERABLE): what our      |
| message was not decoded (the spool could not be   | decoders could not open, clamd may, and nothing  |
| read; no parts kept for it)                       | is skipped. The log says why                     |
| every part sent, none infected                    | clean                                            |

`timeout_s` bounds one scanner's whole answer, all parts together (each part gets what is
left), so the rule on the sum of the timeouts below holds for `parts` too; `max_size` is
per part. One connection per part (clamd.py: zIDSESSION would save under 0.2 ms a scan).
The walk keeps the parts' bytes only when a scanner has method `parts` and a recipient
does not bypass virus checks (Scan.wants_contents); the walk then runs even when every
recipient bypasses banned checks, and its problems are UNCHECKED findings (content.py).
The kept bytes are freed when this check ends.

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
from dataclasses import dataclass, replace

from pymavis import clamd
from pymavis.categories import Ccat, Finding
from pymavis.log import log

from . import CheckResult, ScannerCall


@dataclass(frozen=True)
class Scanner:
    """One configured scanner."""

    name: str
    client: clamd.ClamdClient
    method: str        # "fildes" | "instream" | "parts" (module doc)
    max_size: int      # bytes; 0: no limit of ours (clamd's StreamMaxLength still applies)


@dataclass(frozen=True)
class PartsReply(clamd.ScanReply):
    """A method-`parts` answer: clamd's names over all parts sent, and where each was found
    ((name, part path) pairs; "header" for the header section)."""

    found_in: tuple[tuple[str, str], ...] = ()


HEADER = "header"   # where a name found in the message's header section is reported


class _OverLimit(Exception):
    pass


class _PartFailed(Exception):
    """A part could not be scanned: the scanner failed (the message says which part)."""


def _scan_one(scanner: Scanner, spool) -> clamd.ScanReply:
    if scanner.max_size and spool.stored > scanner.max_size:
        raise _OverLimit(f"message {spool.stored} bytes > max_size {scanner.max_size}")
    if scanner.method == "fildes" and spool.on_disk:
        return scanner.client.fildes(spool.fileno())
    return scanner.client.instream(spool.reader())


def _not_decoded(scan) -> str | None:
    """Why method parts must scan the whole message instead (module doc), or None."""
    try:
        walk = scan.walk
    except OSError as exc:
        return f"not decoded (spool read failed: {exc})"
    if scan.contents is None:
        return "not decoded (no decoded parts kept for this message)"
    if scan.contents.failed:
        return f"decoded parts not kept ({scan.contents.failed})"
    if walk.problems:
        first = walk.problems[0]
        more = f" (+{len(walk.problems) - 1} more)" if len(walk.problems) > 1 else ""
        return f"decoding incomplete ({first.minor}: {first.part or '-'}: {first.detail}{more})"
    return None


def _scan_parts(scanner: Scanner, scan) -> clamd.ScanReply:
    """Method parts: the header section and each kept part by zINSTREAM, within one
    `timeout_s` budget; or the whole message (module doc). Raises _OverLimit, _PartFailed,
    or what _scan_one raises."""
    txn = scan.txn
    why = _not_decoded(scan)
    if why is not None:
        log.info("mail_id %s: virus scanner %s: %s; scanning the whole message", txn.mail_id, scanner.name, why)
        return _scan_one(scanner, txn.spool)    # streamed: method parts is never fildes
    contents = scan.contents
    labels = {p.path: p.part_path() for p in scan.walk.parts}
    head = txn.spool.read_head()
    items = [(HEADER, len(head), lambda: head)]
    items += [(path, size, lambda path=path: contents.open(path)) for path, size in contents]
    deadline = time.monotonic() + scanner.client.timeout
    names, found_in, lines, over = [], [], [], []
    for done, (where, size, data) in enumerate(items):
        if scanner.max_size and size > scanner.max_size:
            over.append(f"part {where} {size} bytes > max_size {scanner.max_size}")
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise _PartFailed(f"ClamdTimeout: {done} of {len(items)} parts scanned within timeout_s "
                              f"{scanner.client.timeout:g} s")
        try:
            reply = scanner.client.with_timeout(left).instream(data())
        except clamd.ClamdSizeLimit as exc:
            over.append(f"part {where} ({size} bytes): {exc}")
            continue
        except (clamd.ClamdError, OSError) as exc:
            raise _PartFailed(f"{type(exc).__name__} at part {where} ({done + 1} of {len(items)}): {exc}") from exc
        lines.append(f"{where}: {reply.raw}")
        if reply.infected:
            log.info("mail_id %s: virus scanner %s: %s INFECTED: %s", txn.mail_id, scanner.name,
                     labels.get(where, f"P=p001,{where}"), ", ".join(reply.infected))
            names.extend(n for n in reply.infected if n not in names)
            found_in.extend((n, where) for n in reply.infected)
            if reply.viruses:
                break    # a virus: this scanner's answer is infected
    if over and all(clamd.is_heuristic_unchecked(n) for n in names):
        raise _OverLimit("; ".join(over))
    return PartsReply(tuple(names), "\n".join(lines), tuple(found_in))


def _run(scanner: Scanner, scan, answers: list, failures: list) -> clamd.ScanReply | None:
    started = time.monotonic()
    try:
        if scanner.method == "parts":
            reply = _scan_parts(scanner, scan)
        else:
            reply = _scan_one(scanner, scan.txn.spool)
    except (_OverLimit, clamd.ClamdSizeLimit) as exc:
        failures.append((scanner.name, "over limits", str(exc)))
        return None
    except _PartFailed as exc:
        failures.append((scanner.name, "failed", str(exc)))
        return None
    except (clamd.ClamdError, OSError) as exc:
        failures.append((scanner.name, "failed", f"{type(exc).__name__}: {exc}"))
        return None
    answers.append((scanner.name, reply, (time.monotonic() - started) * 1000))
    return reply


def check(scan) -> CheckResult:
    calls: list = []
    try:
        result = _check(scan, calls)
    finally:
        scan.release_contents()    # the parts' bytes (method parts) are not needed after us
    return replace(result, scanner_calls=tuple(calls)) if calls else result


def _timed(calls: list, scanner: Scanner, scan, answers: list, failures: list) -> clamd.ScanReply | None:
    """_run, with the call listed for the per-scanner latency histogram (checks.ScannerCall)."""
    started = time.monotonic()
    failed = len(failures)
    reply = _run(scanner, scan, answers, failures)
    if reply is not None:
        outcome = "infected" if reply.viruses else "unchecked" if reply.unchecked else "clean"
    else:
        outcome = "over_limits" if failures[failed:] and failures[-1][1] == "over limits" else "failed"
    calls.append(ScannerCall("virus", scanner.name, outcome, _ms(started)))
    return reply


def _check(scan, calls: list) -> CheckResult:
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
        reply = _timed(calls, scanner, scan, answers, failures)
        if reply is not None and reply.viruses and scan.first_infected_stops_scan:   # a heuristic beside it: still a virus
            break
    if not answers:
        for scanner in backups:
            if _timed(calls, scanner, scan, answers, failures) is not None:
                break
    elapsed = _ms(started)
    if not answers:
        return _none_answered(scan, failures, elapsed)
    for name, kind, why in failures:
        log.warning("mail_id %s: virus scanner %s %s: %s", scan.txn.mail_id, name, kind, why)
    return CheckResult("virus", _findings(answers), elapsed_ms=elapsed,
                       scanned_by=tuple(name for name, _, _ in answers))


def _findings(answers) -> tuple[Finding, ...]:
    viruses, scanners, unchecked, parts = [], [], [], []
    for name, reply, _ in answers:
        parts.extend(pair for pair in getattr(reply, "found_in", ())
                     if not clamd.is_heuristic_unchecked(pair[0]) and pair not in parts)
        for virus in reply.infected:
            if clamd.is_heuristic_unchecked(virus):
                unchecked.append(virus)
            elif virus not in viruses:
                viruses.append(virus)
                scanners.append(name)
    findings = []
    if viruses:
        values = (("virus_names", tuple(viruses)), ("scanners", tuple(dict.fromkeys(scanners))))
        if parts:   # method parts: (name, part path) pairs
            values += (("virus_parts", tuple(parts)),)
        findings.append(Finding("virus", Ccat.VIRUS, 0, ", ".join(viruses), None, values))
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
