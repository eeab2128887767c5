"""The main log line per message, in amavisd-new's spirit:

  (4711-03) Passed CLEAN {RelayedInbound}, [192.0.2.1]:41234 <a@example.org> -> <b@example.com>,
  Queue-ID: 4Xyz, Message-ID: <m@x>, mail_id: Ab3..., bank: MYNETS, size: 1234, 12 ms

Recipients with different fates get one line per group, like amavis. Untrusted text is
sanitised before it reaches the log.
"""

from __future__ import annotations

from .categories import Ccat
from .outcome import Action, Outcome
from .sanitize import header_text

_VERB = {"pass": "Passed", "discard": "Blocked", "bounce": "Blocked", "reject": "Blocked", "tempfail": "Blocked",
         "hold": "Blocked"}
_HOW = {"pass": "Relayed", "discard": "Discarded", "bounce": "Bounced", "reject": "Rejected", "tempfail": "TempFailed",
        "hold": "Held"}


# amavis's names in the main log line: "Blocked INFECTED", "Passed BAD-HEADER-7",
# "Passed UNCHECKED-ENCRYPTED"; AMBIGUOUS is ours (checks/content.py)
_MINOR_NAMES = {(Ccat.UNCHECKED, 1): "UNCHECKED-ENCRYPTED", (Ccat.UNCHECKED, 2): "UNCHECKED-OVERLIMIT",
                (Ccat.UNCHECKED, 3): "UNCHECKED-AMBIGUOUS"}
_LOG_NAMES = {Ccat.VIRUS: "INFECTED", Ccat.MTA: "MTA-BLOCKED"}


def ccat_name(ccat: Ccat, minor: int = 0) -> str:
    if ccat is Ccat.BADH:
        return f"BAD-HEADER-{minor}"
    return _MINOR_NAMES.get((ccat, minor)) or _LOG_NAMES.get(ccat, ccat.name)


def finding_lines(txn, findings) -> list[str]:
    """One line per finding, with its numbers: what the main line's category rests on."""
    lines = []
    for f in findings:
        rcpts = "" if f.rcpts is None else " for " + ",".join(f"<{header_text(r, 300)}>" for r in sorted(f.rcpts))
        lines.append(f"mail_id {txn.mail_id}: {ccat_name(f.ccat, f.minor)} ({f.check}){rcpts}: {header_text(f.detail, 2000)}")
    return lines


def direction(policy, rcpt_is_local: bool) -> str:
    if not policy.originating:
        return "Inbound"
    return "Internal" if rcpt_is_local else "Outbound"


def main_lines(txn, policy, outcome: Outcome, elapsed_ms: float) -> list[str]:
    groups: dict[tuple, list[str]] = {}
    for d in outcome.decisions:
        destiny = d.destiny
        if outcome.action is Action.REJECT and destiny != "pass":
            destiny = "reject"
        elif outcome.action is Action.TEMPFAIL:
            destiny = "tempfail"
        elif outcome.quarantine_reason and destiny != "pass":
            destiny = "hold"   # accepted into the MTA's hold queue (keep.py)
        ccat = ccat_name(d.blocking.ccat, d.blocking.minor) if d.blocking else ccat_name(d.main, d.main_minor)
        tagged = "Tagged" if destiny == "pass" and d.main > Ccat.CLEAN else ""
        key = (_VERB[destiny], ccat, _HOW[destiny] + tagged + direction(policy, policy.is_local(d.rcpt)))
        groups.setdefault(key, []).append(d.rcpt)
    if not groups:  # a transaction without decisions (internal error before deciding)
        groups[("Blocked" if outcome.action is not Action.CONTINUE else "Passed", ccat_name(Ccat.MTA),
                _HOW["tempfail"] + "Inbound")] = [r.addr for r in txn.rcpts]
    client = f"[{txn.conn.client_ip}]:{txn.conn.client_port}" if txn.conn.client_ip else "[local]"
    message_id = header_text(txn.header("Message-ID") or "-", 200)
    reply = f", reply: {outcome.reply}" if outcome.reply else ""
    quarantined = f", quarantine: {outcome.quarantined}" if outcome.quarantined else ""
    lines = []
    for (verb, ccat, how), rcpts in groups.items():
        rcpt_list = ",".join(f"<{header_text(r, 300)}>" for r in rcpts)
        lines.append(
            f"{verb} {ccat} {{{how}}}, {client} <{header_text(txn.mail_from, 300)}> -> {rcpt_list}, "
            f"Queue-ID: {txn.queue_id or '-'}, Message-ID: {message_id}, mail_id: {txn.mail_id}, "
            f"bank: {policy.bank_path_str}, size: {txn.size}{reply if verb == 'Blocked' else ''}"
            f"{quarantined if verb == 'Blocked' else ''}, "
            f"{elapsed_ms:.0f} ms"
        )
    return lines
