"""The work of end-of-message, run in our own worker pool (never on libmilter's threads):
resolve per-recipient settings, run the checks in order, decide per recipient, collapse
into one Outcome. Pure apart from the checks' own I/O; the adapter applies the result.

A check that could not do its work becomes UNCHECKED (minor 0, its reason) for every
recipient: never clean. The header edits of passed mail are per recipient (edits.py);
recipients whose edits differ from the largest group's are re-submitted with their own
(resubmit.py) before the answer is given, when `resubmit.socket` names a listener; else
the largest group's edits apply to all and the log says RECIPIENTS REQUIRE DIFFERENT
HEADERS. A re-submission that fails before anything was sent answers TEMPFAIL; after one
group was sent, the groups left stay in this transaction (never lost, never sent twice).
Our Authentication-Results field (checks/auth.py) is the same for every group and is
inserted after the other edits; originating mail in a bank with `dkim_sign` is then signed
as it will leave (auth/dkimsign.py), and arriving mail in a bank with `arc_seal` gets our ARC
set on top of that (auth/arcseal.py), each re-submitted group with its own edits. Neither is
added to mail leaving as VIRUS, BANNED, SPAM or SPAMMY (to lovers): it would vouch for it.
A message that cannot be signed or sealed passes without, with a warning.

Right after the authentication check (`_after_auth`): the banks its results choose
(policy.by_auth: auth_result_policy, author_to_policy_bank) are merged onto the path and
every recipient's settings are looked up again under them, so decoding, the virus, banned
and spam checks and the decisions all see the new policy (when the configuration has such
banks, the early spamd call waits for the auth check); the size and header checks ran
before, their findings stand, but the new bank's lovers, bypasses and destinies decide
what they do. Then the bank's DMARC verdict: `reject` is the answer at once (554 5.7.1,
for every recipient: DMARC's policy is the author domain's, not a recipient's; no later
check runs), `quarantine` adds a SPAM minor 2 finding that blocks (decide.FINDING_DESTINY)
and makes our field say `dis=quarantine` when it blocked someone, `score` is the spam
check's (checks/spam.py). The policy the message was decided under is Result.policy.

Blocked recipients' copies are kept (keep.py) before the answer and before the passed
recipients' edits and re-submissions; when that fails the answer is TEMPFAIL (QUARANTINE
FAILED logged), so the MTA keeps the message and nothing was sent on. A bank with
`sql_log_failure_is_fatal` writes its SQL log row at the same point, for the same reason.
When the re-submission then fails before anything was sent (TEMPFAIL: the MTA offers the
message again, under a new mail_id), the copy kept for this attempt is removed and its row
says TEMPFAIL. Notices
(notify.py) are queued to disk after that and sent by the outbox's own thread.

Test hooks (environment, tests only): with PYMAVIS_FAULT_INJECT=MARKER a message whose
Subject contains MARKER raises here, to prove that an internal error answers TEMPFAIL and
the MTA keeps the message; with PYMAVIS_SLOW_INJECT=MARKER:SECONDS such a message takes that
long, to test shutdown with work in flight.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

from . import checks as checks_mod
from . import edits, keep, notices, progress, resubmit, sqllog, sqlstore
from . import policy as policy_mod
from .auth import arcseal, dkimsign, dmarc
from .auth import resolver as auth_dns
from .categories import Ccat, Finding
from .checks import auth as auth_mod
from .checks import spam as spam_mod
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
    policy: object | None = field(default=None, compare=False, repr=False)  # as decided: with the banks auth chose


def scan_for(config, policy, txn, rcpt_settings) -> checks_mod.Scan:
    """The checks' view of one message, with the configuration's decoding settings."""
    if config is None:
        return checks_mod.Scan(txn, policy, rcpt_settings)
    return checks_mod.Scan(txn, policy, rcpt_settings, limits=config["decode"], type_map=config["file_type_map"],
                           rule_sets=config["banned_rules"],
                           scanners=(config["av_scanners"], config["av_scanners_backup"]),
                           first_infected_stops_scan=config["first_infected_stops_scan"],
                           spam_scanners=config["spam_scanners"],
                           spam_cache=spam_mod.verdict_cache(config["spam_cache"]["ttl_s"],
                                                             config["spam_cache"]["max_entries"]),
                           myhostname=config.myhostname,
                           dns=auth_dns.lookup_for(config["dns"]), dns_deadline_s=config["dns"]["deadline_s"],
                           authserv_id=config["authserv_id"] or config.myhostname,
                           gate=checks_mod.decode_gate(config["milter"]["decode_workers"],
                                                      config["milter"]["decode_memory_bytes"]))


def unchecked(result: checks_mod.CheckResult) -> Finding:
    return Finding(result.name, Ccat.UNCHECKED, 0, f"{result.name} check failed: {result.could_not_check}")


_FAULT_MARKER = os.environ.get("PYMAVIS_FAULT_INJECT")
_SLOW_MARKER, _, _SLOW_SECONDS = os.environ.get("PYMAVIS_SLOW_INJECT", "").partition(":")


class InjectedFault(RuntimeError):
    pass


def process(config, policy, txn, checks=None, *, keep_blocked: bool = True) -> Result:
    """The checks, the decisions and the one answer; blocked recipients' copies stored
    first unless `keep_blocked` is false (`pymavis scan` only looks)."""
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
    checks = checks if checks is not None else checks_mod.CHECKS
    start_spam = spam_mod.check in checks
    if start_spam and not policy_mod.auth_may_load_banks(config):
        spam_mod.start(scan)   # spamd works while the auth check, decoding and clamd do
        start_spam = False
    rejected = None   # the answer to a DMARC failure the bank rejects, given right after the auth check
    try:
        for check in checks:
            progress.entering(check)   # pymavis status: D, V, S
            t1 = time.monotonic()
            result = check(scan)
            results.append(result)
            scan.found.extend(result.findings)
            if result.could_not_check:
                scan.found.append(unchecked(result))
            if result.auth is not None:
                rejected = _after_auth(config, scan, result.auth)
            timings.append((result.name, (time.monotonic() - t1) * 1000))
            if rejected is not None:
                break
            if start_spam and result.name == "auth":
                spam_mod.start(scan)   # once the banks that change what spamd is sent, and whether, are in
                start_spam = False
    except LookupFailed as exc:
        reply = Reply("451", "4.3.0", f"Temporary lookup failure, id={txn.mail_id}")
        return Result(Outcome(Action.TEMPFAIL, reply, lookup_error=str(exc)), (), tuple(results), tuple(timings), scan,
                      scan.policy)
    finally:
        scan.release_contents()   # the parts' bytes (method parts), also when the virus check did not run
    policy, rcpt_settings = scan.policy, scan.rcpt_settings
    findings = tuple(scan.found)
    tempfail = next((r.tempfail for r in results if r.tempfail), None)
    if tempfail:
        reply = Reply("451", "4.3.0", f"Temporary content check failure, try again later, id={txn.mail_id}")
        return Result(Outcome(Action.TEMPFAIL, reply), findings, tuple(results), tuple(timings), scan, policy)
    t2 = time.monotonic()
    if rejected is not None:
        outcome = rejected
    else:
        decisions: tuple[RcptDecision, ...] = tuple(decide(policy, rs, findings) for rs in rcpt_settings)
        outcome = collapse(policy, decisions, txn.mail_id)
    spam_view = next((r.spam for r in results if r.spam is not None), None)
    auth_view = scan.auth or next((r.auth for r in results if r.auth is not None), None)
    if auth_view is not None and auth_view.dmarc is not None and any(
            d.blocking is not None and d.blocking.check == auth_mod.DMARC_CHECK for d in outcome.decisions):
        auth_view = auth_mod.with_disposition(auth_view, auth_view.dmarc.action)
    timings.append(("decide", (time.monotonic() - t2) * 1000))
    keeping = outcome.action is not Action.TEMPFAIL and config is not None and keep_blocked
    kept = None
    # Both before any re-submission: a keep, or a row of a bank with sql_log_failure_is_fatal,
    # that fails answers TEMPFAIL, and the MTA's retry must not deliver again what went out.
    row_first = keeping and policy.sql_log_failure_is_fatal and sqllog.sql_log(config) is not None
    if keeping:
        progress.entering(progress.QUARANTINE)
        t3 = time.monotonic()
        outcome, kept = _keep(config, policy, txn, outcome, rcpt_settings, spam_view)
        timings.append(("quarantine", (time.monotonic() - t3) * 1000))
    if row_first:
        outcome = _sql_log(config, policy, txn, outcome, spam_view)
    if outcome.action is Action.CONTINUE and not outcome.quarantine_reason:   # not held: edits, re-submission
        t4 = time.monotonic()
        scanned = any(r.scanned_by for r in results)
        outcome = dataclasses.replace(_pass_edits(config, policy, txn, outcome, findings, scanned, spam_view,
                                                  auth_view), quarantined=outcome.quarantined)
        timings.append(("edits", (time.monotonic() - t4) * 1000))
        if outcome.action is Action.TEMPFAIL:   # the re-submission failed, nothing went out
            outcome = _retracted(config, policy, txn, outcome, kept, row_first, spam_view)
    if keeping:
        if outcome.action is not Action.TEMPFAIL:
            try:
                notices.send_notices(config, policy, txn, outcome, findings, rcpt_settings, spam_view)
            except Exception:   # a notice must never change the answer: the message is safe
                log.exception("mail_id %s: building notices failed", txn.mail_id)
        if not row_first:
            outcome = _sql_log(config, policy, txn, outcome, spam_view)
    return Result(outcome, findings, tuple(results), tuple(timings), scan, policy)


def _retracted(config, policy, txn, outcome: Outcome, kept, row_written: bool, spam_view) -> Outcome:
    """This attempt answered TEMPFAIL after its copy was kept or its row written: the MTA
    offers the message again (a new mail_id, kept and logged again then), so this attempt's
    copy goes and its row says TEMPFAIL. Best effort: a failure is logged, the answer stays."""
    if kept is not None:
        try:
            keep.keeper(config).discard(kept)
        except (sqlstore.StoreError, OSError) as exc:
            log.error("mail_id %s: answered TEMPFAIL, but its quarantined copy could not be removed (the "
                      "MTA's retry is kept again): %s", txn.mail_id, exc)
            return outcome
        log.info("mail_id %s: quarantined copy removed: the message is answered TEMPFAIL and comes again",
                 txn.mail_id)
        outcome = dataclasses.replace(outcome, quarantined="")
    if row_written and outcome.decisions:
        try:
            sqllog.sql_log(config).write_now(sqllog.entry_for(config, policy, txn, outcome, spam_view), replace=True)
        except sqlstore.StoreError as exc:
            log.error("mail_id %s: the SQL log row could not be changed to TEMPFAIL: %s", txn.mail_id, exc)
    return outcome


def _after_auth(config, scan, view) -> Outcome | None:
    """The banks the results choose, loaded; then the bank's DMARC verdict (module doc).
    Returns the answer when the bank rejects. Raises LookupFailed."""
    txn, policy = scan.txn, scan.policy
    if config is not None:
        chosen = policy_mod.by_auth(config, policy, view.results,
                                    tuple(v for n, v in txn.headers if n.lower() == "from"))
        for why in chosen.refused:
            log.info("mail_id %s: %s", txn.mail_id, why)
        new = policy_mod.extend(config, policy, chosen.names) if chosen.names else policy
        if new is not policy:
            for name, why in chosen.loaded:
                if name not in policy.bank_path:
                    log.info("mail_id %s: policy bank %s loaded by %s; bank path %s", txn.mail_id, name, why,
                             new.bank_path_str)
            scan.policy = new
            scan.rcpt_settings = tuple(resolve_rcpt(new, rs.rcpt) for rs in scan.rcpt_settings)
    verdict = auth_mod.dmarc_verdict(scan.policy, view.results, txn.mail_id)
    scan.auth = dataclasses.replace(view, dmarc=verdict)
    if verdict is None:
        return None
    log.info("mail_id %s: %s; %s %s", txn.mail_id, verdict.detail, verdict.setting, verdict.action)
    if verdict.action not in ("reject", "quarantine"):
        return None
    finding = auth_mod.dmarc_finding(verdict)
    scan.found.append(finding)
    if verdict.action == "quarantine":
        return None
    decisions = []
    for rs in scan.rcpt_settings:
        top = max((f for f in scan.found if f.applies_to(rs.rcpt)), key=lambda f: (f.ccat, f.minor))
        decisions.append(RcptDecision(rs.rcpt, top.ccat, top.minor, finding, "reject"))
    return Outcome(Action.REJECT, auth_mod.dmarc_reply(verdict, txn.mail_id), decisions=tuple(decisions))


def _sql_log(config, policy, txn, outcome: Outcome, spam_view) -> Outcome:
    """The message's rows in amavis's tables (sqllog.py): queued, or written before the answer
    in a bank with sql_log_failure_is_fatal (TEMPFAIL when that fails). Kept mail has them."""
    sql = sqllog.sql_log(config)
    if sql is None or outcome.quarantined or not outcome.decisions:
        return outcome
    entry = sqllog.entry_for(config, policy, txn, outcome, spam_view)
    if not policy.sql_log_failure_is_fatal:
        sql.submit(entry)
        return outcome
    try:
        sql.write_now(entry)
    except sqlstore.StoreError as exc:
        log.error("mail_id %s: SQL log failed, answering TEMPFAIL (sql_log_failure_is_fatal): %s", txn.mail_id, exc)
        reply = Reply("451", "4.3.0", f"Temporary failure logging the message, try again later, id={txn.mail_id}")
        return Outcome(Action.TEMPFAIL, reply, decisions=outcome.decisions)
    return outcome


def _keep(config, policy, txn, outcome: Outcome, rcpt_settings, spam_view) -> tuple[Outcome, object]:
    """Blocked recipients' copies stored before the answer (keep.py); TEMPFAIL when that
    fails. (outcome, the index entry written or None)."""
    copies, hold = keep.plan(policy, outcome.decisions, rcpt_settings, spam_view)
    if not copies:
        return outcome, None
    if getattr(txn.spool, "truncated", False):
        log.error("mail_id %s: not quarantined: only the first %d of %d bytes were kept (over the storage limit)",
                  txn.mail_id, txn.spool.stored, txn.spool.size)
        return outcome, None
    reasons = keep.reasons_for(outcome.decisions)
    try:
        entry = keep.keeper(config).keep(txn, policy, outcome, copies, reasons, spam_view, held=hold)
    except keep.KeepFailed as exc:
        log.error("mail_id %s: QUARANTINE FAILED, answering TEMPFAIL: %s", txn.mail_id, exc)
        reply = Reply("451", "4.3.0", f"Temporary failure keeping the message, try again later, id={txn.mail_id}")
        return Outcome(Action.TEMPFAIL, reply, decisions=outcome.decisions, quarantine_failed=str(exc)), None
    where = ", ".join(f"{c.method}:{c.location}" if c.location else c.method for c in copies)
    if hold:
        category, reason = reasons[outcome.decisions[0].rcpt]
        return Outcome(Action.CONTINUE, quarantine_reason=f"pymavis {txn.mail_id}: {reason}",
                       decisions=outcome.decisions, quarantined=where), entry
    return dataclasses.replace(outcome, quarantined=where), entry


def _pass_edits(config, policy, txn, outcome: Outcome, findings, scanned: bool, spam_view,
                auth_view=None) -> Outcome:
    """The passed recipients' header and address edits, grouped into this transaction's
    and the re-submitted ones (module doc)."""
    subject = txn.header("Subject")
    passed = [d for d in outcome.decisions if not d.blocked]
    per_rcpt = {d.rcpt: edits.for_rcpt(config, policy, d, findings, scanned, subject, spam_view) for d in passed}
    extension = {}
    notify = outcome.notify_sender
    if spam_view is not None:
        for d in passed:
            j = spam_view.judgement(d.rcpt)
            new = edits.extended(policy, d.rcpt, j.extension) if j is not None else None
            if new:
                extension[d.rcpt] = new
        # no sender notice for spam above the recipient's spam_dsn_cutoff_level
        notify = tuple(r for r in notify if not ((j := spam_view.judgement(r)) and j.ccat is Ccat.SPAM
                                                  and j.over(j.levels.dsn_cutoff)))
    common = edits.removals(txn, spam_view) + edits.auth_removals(txn, auth_view)
    last = edits.auth_field(auth_view)   # Authentication-Results: inserted last, so it is on top
    key = _signing_key(config, policy, txn, passed)
    sealing = _sealing(config, policy, txn, passed, auth_view)
    groups = edits.groups(per_rcpt)
    kept, resubmitted = (groups[0] if groups else edits.Group((), ())), []
    if len(groups) > 1:
        resubmitted, left = _resubmit(config, txn, common, groups[1:], extension, last, key, sealing)
        if resubmitted is None:
            reply = Reply("451", "4.3.0", f"Temporary failure re-submitting for other recipients, id={txn.mail_id}")
            return Outcome(Action.TEMPFAIL, reply, decisions=outcome.decisions)
        if left:
            log.warning("mail_id %s: RECIPIENTS REQUIRE DIFFERENT HEADERS; %s get the edits of %s", txn.mail_id,
                        ", ".join(f"<{r}>" for g in left for r in g.rcpts), ", ".join(f"<{r}>" for r in kept.rcpts))
    gone = {r for g in resubmitted for r in g.rcpts}
    stay_extended = {old: new for old, new in extension.items() if old not in gone}
    headers = common + kept.headers + last
    if key is not None or sealing is not None:
        headers = _signed(txn.spool.read(), headers, key, sealing, txn.mail_id)
    return Outcome(
        Action.CONTINUE,
        headers=headers,
        del_rcpts=outcome.del_rcpts + tuple(r for g in resubmitted for r in g.rcpts) + tuple(stay_extended),
        add_rcpts=tuple(stay_extended.values()),
        notify_sender=notify,
        decisions=outcome.decisions,
    )


# Mail leaving with one of these main categories (to lovers) is never DKIM-signed or ARC-sealed:
# our signature would vouch for it.
_NOT_SIGNED = frozenset({Ccat.VIRUS, Ccat.BANNED, Ccat.SPAM, Ccat.SPAMMY})


def _unsigned_as(passed) -> str:
    """The _NOT_SIGNED categories passed recipients get the mail as ("" when none)."""
    return ", ".join(sorted({d.main.name for d in passed if d.main in _NOT_SIGNED}))


def _signing_key(config, policy, txn, passed):
    """The DKIM key to sign this passed mail with (auth/dkimsign.py), or None: only with
    dkim_sign on, in an originating bank, for a From domain with a key, a message stored
    whole, and no passed recipient getting it as virus, banned, spam or spammy."""
    if config is None or not policy.dkim_sign or not policy.originating or getattr(txn.spool, "truncated", False):
        return None
    if _unsigned_as(passed):
        log.info("mail_id %s: not DKIM-signed: it leaves as %s", txn.mail_id, _unsigned_as(passed))
        return None
    author = dmarc.author_domain([v for n, v in txn.headers if n.lower() == "from"])
    return dkimsign.key_for(config["dkim_signing_keys"], author)


def _sealing(config, policy, txn, passed, auth_view):
    """(key, authserv-id) to ARC-seal this passed mail with (auth/arcseal.py), or None: only
    with arc_seal on, for a message stored whole whose chain was verified here (arriving mail:
    our field has arc=) with a result a seal can carry, and no passed recipient getting it as
    virus, banned, spam or spammy."""
    if config is None or not policy.arc_seal or getattr(txn.spool, "truncated", False):
        return None
    arc = auth_view.results.arc if auth_view is not None and auth_view.field is not None else None
    if arc is None:
        log.debug("mail_id %s: not ARC-sealed: its ARC chain was not verified (originating mail)", txn.mail_id)
        return None
    if arc.result not in arcseal.SEALABLE:
        log.info("mail_id %s: not ARC-sealed: the chain it arrived with is arc=%s (%s)", txn.mail_id, arc.result,
                 arc.reason)
        return None
    if _unsigned_as(passed):
        log.info("mail_id %s: not ARC-sealed: it leaves as %s", txn.mail_id, _unsigned_as(passed))
        return None
    return config["arc_sealing"], auth_view.authserv_id


def _signed(raw: bytes, headers: tuple, key, sealing, mail_id: str) -> tuple[HeaderEdit, ...]:
    """`headers` with our DKIM-Signature, then our ARC set, added at the top: each made over
    the message as it leaves with the edits before it."""
    if key is not None:
        headers += _signature(resubmit.message_bytes(raw, headers), key, mail_id)
    if sealing is not None:
        headers += _seal(resubmit.message_bytes(raw, headers), sealing, mail_id)
    return headers


def _seal(data: bytes, sealing, mail_id: str) -> tuple[HeaderEdit, ...]:
    """Our ARC set for `data`, inserted so that the ARC-Seal ends up on top; none (and a
    warning) when it cannot be made."""
    key, authserv_id = sealing
    try:
        fields = arcseal.seal(data, key, authserv_id)
    except dkimsign.SignFailed as exc:
        log.warning("mail_id %s: not ARC-sealed for %s: %s", mail_id, key.domain, exc)
        return ()
    log.debug("mail_id %s: ARC-sealed d=%s s=%s (%s)", mail_id, key.domain, key.selector, fields[0][1].split(";")[0])
    return tuple(HeaderEdit(name, value, "insert") for name, value in reversed(fields))


def _signature(data: bytes, key, mail_id: str) -> tuple[HeaderEdit, ...]:
    """The DKIM-Signature field for `data` (the message as it leaves), inserted at the top
    after our other edits; none (and a warning) when dkimpy refuses."""
    try:
        value = dkimsign.signature(data, key)
    except dkimsign.SignFailed as exc:
        log.warning("mail_id %s: not DKIM-signed for %s: %s", mail_id, key.domain, exc)
        return ()
    log.debug("mail_id %s: DKIM-signed d=%s s=%s a=%s", mail_id, key.domain, key.selector, key.algorithm)
    return (HeaderEdit("DKIM-Signature", value, "insert"),)


def _resubmit(config, txn, common, groups, extension, last=(), key=None, sealing=None):
    """(groups sent, groups left in this transaction); (None, ...) when the first failed."""
    settings = config["resubmit"]
    if not settings["socket"] or getattr(txn.spool, "truncated", False):
        return [], groups
    raw = txn.spool.read()
    rcpt_by_addr = {r.addr: r for r in txn.rcpts}
    sent = []
    for i, group in enumerate(groups):
        rcpts = [dataclasses.replace(rcpt_by_addr[a], addr=extension.get(a, a)) for a in group.rcpts]
        headers = _signed(raw, common + group.headers + last, key, sealing, txn.mail_id)
        data = resubmit.message_bytes(raw, headers)
        try:
            reply = resubmit.send(settings, config.myhostname, txn, rcpts, data)
        except resubmit.ResubmitFailed as exc:
            log.error("mail_id %s: re-submission for %s failed: %s", txn.mail_id,
                      ", ".join(f"<{r.addr}>" for r in rcpts), exc)
            if not sent:
                return None, groups
            return sent, groups[i:]
        log.info("mail_id %s: re-submitted for %s with their own header edits: %s", txn.mail_id,
                 ", ".join(f"<{r.addr}>" for r in rcpts), reply)
        sent.append(group)
    return sent, []
