"""Authentication of arriving mail (DKIM, SPF, DMARC, ARC) as a check: no findings, a view.

The work is pymavis.auth's (its module doc has the order and the results); this module
takes the message and the facts from the Scan, the settings from the policy bank, and
hands back an `AuthView`: the results and the value of our Authentication-Results field.
edits.py turns the view into header edits of passed mail: the field inserted at the top
for every recipient, and the arriving fields that claim our authserv-id removed first.

The check itself never blocks mail or makes it UNCHECKED: a DNS problem is a temperror
result in the field (and a warning in the log). The check is skipped (no view, no field)
when no method is on, or when the message was not stored whole (a body hash needs every
byte). The spooled message is read only when a DKIM-Signature or an ARC field is there
(SPF and DMARC need no bytes, and a message without ARC fields is arc=none).

What a DMARC failure does is the bank's (`dmarc_verdict`, called by the pipeline after the
banks the results choose are loaded, so their settings count). Only a `fail` under p=reject
or p=quarantine, after `pct=` (a message's draw is a digest of its mail_id, so a retried
message meets the same fate), gets an action:

| policy that applies                           | its action is the bank's  |
|-----------------------------------------------|---------------------------|
| p=reject                                      | `dmarc_reject_action`     |
| p=quarantine, or p=reject sampled out by pct= | `dmarc_quarantine_action` |

| action     | what happens                                                         | A-R       |
|------------|----------------------------------------------------------------------|-----------|
| none       | only reported (the default)                                          | dis=none  |
| reject     | the pipeline answers 554 5.7.1 at once, for every recipient          | (none)    |
| quarantine | a SPAM minor 2 finding that blocks (discard; kept in the spam        | dis=      |
|            | quarantine) unless the recipient loves spam or bypasses spam checks  | quarantine|
| score      | `dmarc_fail_score` added to every spam level (checks/spam.py)        | dis=none  |

Configuration: policy `dkim_verify`, `spf_verify`, `dmarc_verify`, `arc_verify` (and
`arc_seal`, which needs the chain's result: pipeline.py seals), `dkim_min_key_bits` (DKIM and ARC),
`originating`, `dmarc_reject_action`, `dmarc_quarantine_action`, `dmarc_fail_score`; global
`authserv_id` (default myhostname) and `dns:` (Scan.dns is the lookup it builds,
Scan.dns_deadline_s the time one message's lookups may take together).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass

from pymavis import auth
from pymavis.auth import dmarc as dmarc_mod
from pymavis.auth import header as ar_header
from pymavis.auth.resolver import Budget
from pymavis.categories import Ccat, Finding
from pymavis.log import log
from pymavis.outcome import Reply
from pymavis.sanitize import reply_text

from . import CheckResult

# The finding of a DMARC failure the bank quarantines or rejects (decide.FINDING_DESTINY):
# SPAM, because spam is where a forged author's mail goes (spam_quarantine_to, spam_admin,
# spam_lovers); minor 2, above spamd's 0 and 1, so the log and the quarantine tell it apart.
DMARC_CHECK, DMARC_CCAT, DMARC_MINOR = "dmarc", Ccat.SPAM, 2

# The fields whose presence makes the check read the message's bytes.
_SIGNED_BY = frozenset({"dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results"})


@dataclass(frozen=True)
class DmarcVerdict:
    """What the bank does about one DMARC failure."""

    domain: str
    policy: str        # the policy that applies after pct=: reject or quarantine
    action: str        # none, reject, quarantine, score
    setting: str       # the setting that chose the action
    reason: str        # why DMARC failed
    sampled_out: bool = False   # pct= made p=reject a quarantine

    @property
    def detail(self) -> str:
        pct = " (p=reject, sampled out by pct=)" if self.sampled_out else ""
        return f"DMARC policy of {self.domain}: {self.policy}{pct}, {self.reason}"


@dataclass(frozen=True)
class AuthView:
    results: auth.Results
    authserv_id: str
    field: str | None          # our Authentication-Results value; None: no method ran
    lookups: int = 0           # DNS lookups asked for this message
    dmarc: DmarcVerdict | None = None   # set by the pipeline (dmarc_verdict) when DMARC failed under a policy


def _draw(mail_id: str) -> int:
    """0..99, the same for the same mail_id: pct= sampling that a retry cannot dodge."""
    return int.from_bytes(hashlib.sha256(mail_id.encode("utf-8", "surrogateescape")).digest()[:4], "big") % 100


def dmarc_verdict(policy, results: auth.Results, mail_id: str) -> DmarcVerdict | None:
    """The bank's action for a DMARC fail under p=reject or p=quarantine (module doc);
    None when DMARC did not fail or its policy is none (after pct=)."""
    r = results.dmarc
    if r is None or r.result != "fail" or r.policy not in ("reject", "quarantine"):
        return None
    applied = dmarc_mod.applied_policy(r, _draw(mail_id))
    if applied == "none":
        return None
    setting = "dmarc_reject_action" if applied == "reject" else "dmarc_quarantine_action"
    return DmarcVerdict(r.from_domain, applied, getattr(policy, setting), setting, r.reason or "failed",
                        sampled_out=applied != r.policy)


def dmarc_finding(verdict: DmarcVerdict) -> Finding:
    return Finding(DMARC_CHECK, DMARC_CCAT, DMARC_MINOR, verdict.detail, None,
                   (("dmarc_domain", verdict.domain), ("dmarc_policy", verdict.policy)))


def dmarc_reply(verdict: DmarcVerdict, mail_id: str) -> Reply:
    return Reply("554", "5.7.1", reply_text(f"Reject, id={mail_id} - {verdict.detail}"))


def with_disposition(view: AuthView, disposition: str) -> AuthView:
    """The view with our field saying what was done about the DMARC policy (`dis=`)."""
    if view.field is None or disposition == "none":
        return view
    return dataclasses.replace(view, field=ar_header.value(view.authserv_id, view.results, disposition))


def settings_of(policy, receiver: str) -> auth.Settings:
    return auth.Settings(dkim=bool(policy.dkim_verify), spf=bool(policy.spf_verify), dmarc=bool(policy.dmarc_verify),
                         arc=bool(policy.arc_verify or policy.arc_seal), min_key_bits=policy.dkim_min_key_bits,
                         receiver=receiver)


def check(scan) -> CheckResult:
    started = time.monotonic()
    if scan.dns is None:
        return CheckResult("auth")
    policy, txn = scan.policy, scan.txn
    settings = settings_of(policy, scan.authserv_id)
    if not (settings.dkim or settings.spf or settings.dmarc or settings.arc):
        return CheckResult("auth")
    if getattr(txn.spool, "truncated", False):
        log.info("mail_id %s: not authenticated: message not stored whole (%d bytes)", txn.mail_id, txn.spool.size)
        return CheckResult("auth", elapsed_ms=_ms(started))
    signed = any(name.lower() in _SIGNED_BY for name, _ in txn.headers)
    try:
        message = txn.spool.read() if signed else b""
    except OSError as exc:
        return CheckResult("auth", could_not_check=f"cannot read the spooled message: {exc}", elapsed_ms=_ms(started))
    conn = txn.conn
    facts = auth.Facts(client_ip=conn.client_ip, helo=conn.helo, mail_from=txn.mail_from,
                       from_values=tuple(v for n, v in txn.headers if n.lower() == "from"),
                       originating=bool(policy.originating))
    budget = Budget(scan.dns, scan.dns_deadline_s)
    results = auth.authenticate(message, facts, settings, budget)
    field = ar_header.value(scan.authserv_id, results)
    if budget.failed:
        shown = "; ".join(str(exc) for exc in budget.failed[:3]) + ("; ..." if len(budget.failed) > 3 else "")
        log.warning("mail_id %s: %d authentication DNS lookup(s) failed, results are temperror: %s",
                    txn.mail_id, len(budget.failed), shown)
    log.debug("mail_id %s: authentication %s (%d lookups)", txn.mail_id, results.summary(), budget.asked)
    view = AuthView(results, scan.authserv_id, field, budget.asked)
    return CheckResult("auth", elapsed_ms=_ms(started), auth=view)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
