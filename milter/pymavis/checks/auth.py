"""Authentication of arriving mail (DKIM, SPF, DMARC) as a check: no findings, a view.

The work is pymavis.auth's (its module doc has the order and the results); this module
takes the message and the facts from the Scan, the settings from the policy bank, and
hands back an `AuthView`: the results and the value of our Authentication-Results field.
edits.py turns the view into header edits of passed mail: the field inserted at the top
for every recipient, and the arriving fields that claim our authserv-id removed first.

Nothing here blocks mail or makes it UNCHECKED: a DNS problem is a temperror result in
the field (and a warning in the log). The check is skipped (no view, no field) when no
method is on, or when the message was not stored whole (a body hash needs every byte).

Configuration: policy `dkim_verify`, `spf_verify`, `dmarc_verify`, `dkim_min_key_bits`,
`originating`; global `authserv_id` (default myhostname) and `dns:` (Scan.dns is the
lookup it builds, Scan.dns_deadline_s the time one message's lookups may take together).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pymavis import auth
from pymavis.auth import header as ar_header
from pymavis.auth.resolver import Budget
from pymavis.log import log

from . import CheckResult


@dataclass(frozen=True)
class AuthView:
    results: auth.Results
    authserv_id: str
    field: str | None          # our Authentication-Results value; None: no method ran
    lookups: int = 0           # DNS lookups asked for this message


def settings_of(policy, receiver: str) -> auth.Settings:
    return auth.Settings(dkim=bool(policy.dkim_verify), spf=bool(policy.spf_verify), dmarc=bool(policy.dmarc_verify),
                         min_key_bits=policy.dkim_min_key_bits, receiver=receiver)


def check(scan) -> CheckResult:
    started = time.monotonic()
    if scan.dns is None:
        return CheckResult("auth")
    policy, txn = scan.policy, scan.txn
    settings = settings_of(policy, scan.authserv_id)
    if not (settings.dkim or settings.spf or settings.dmarc):
        return CheckResult("auth")
    if getattr(txn.spool, "truncated", False):
        log.info("mail_id %s: not authenticated: message not stored whole (%d bytes)", txn.mail_id, txn.spool.size)
        return CheckResult("auth", elapsed_ms=_ms(started))
    signed = any(name.lower() == "dkim-signature" for name, _ in txn.headers)
    try:
        message = txn.spool.read() if signed else b""   # SPF and DMARC need no bytes, DKIM only signed ones
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
