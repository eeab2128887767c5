"""Who is told about a message, after its copies are kept and before the milter answers:
the notices are built (notify.py) and queued to disk; the outbox's own thread sends them
to `resubmit.socket`, so the answer waits for a file write, never for the MTA.

- The sender: a DSN (RFC 3464 multipart/report) for recipients refused while others got
  the message (a bounce or reject destiny that SMTP could not say: outcome.notify_sender)
  — unless the sender is null or forged by the virus (`viruses_that_fake_sender`), the
  mail is bulk or automatic, every refused recipient asked NOTIFY=NEVER, or it is spam at
  or above `spam_dsn_cutoff_level` (already left out of notify_sender by the pipeline).
  A message refused for everyone gets no DSN: the SMTP reply tells the sending MTA.
- Admins: `virus_admin`, `banned_admin`, `spam_admin`, `bad_header_admin` (per recipient,
  by the recipient's main category): one notice per admin and category, naming the
  recipients it concerns.
- Recipients: `warn_virus_recip`, `warn_banned_recip`, `warn_bad_header_recip` for those
  the message was blocked for.

Without `resubmit.socket` nothing is queued (logged once): there is no MTA to send to.
A notice that cannot be queued is logged; the message itself is already safe.
"""

from __future__ import annotations

import os
import threading
import time

from . import notify, resubmit
from .categories import Ccat
from .decide import ADMIN_SETTING, WARN_RCPT_SETTING
from .log import log
from .outcome import reply_for

_OUTBOXES: dict[tuple, notify.Outbox] = {}
_LOCK = threading.Lock()
_WARNED: set[str] = set()


def outbox(config) -> notify.Outbox | None:
    """The running outbox for this configuration (started on first use), or None when
    there is no listener to send to."""
    socket = config["resubmit"]["socket"]
    if not socket:
        return None
    settings = config["notify"]
    directory = settings["queue_dir"] or os.path.join(config["state_dir"], "notify")
    key = (directory, socket, config.myhostname, settings["retry_s"], settings["max_age_s"])
    with _LOCK:
        box = _OUTBOXES.get(key)
        if box is None:
            resubmit_settings = dict(config["resubmit"])

            def send(notice: notify.Notice) -> str:
                rcpts = [_Rcpt(a) for a in notice.rcpts]
                return resubmit.submit(resubmit_settings, config.myhostname, notice.mail_from, (), rcpts, notice.data)

            box = notify.Outbox(directory, send, retry_s=settings["retry_s"], max_age_s=settings["max_age_s"], log=log)
            box.start()
            _OUTBOXES[key] = box
        return box


def stop_all(timeout: float = 5.0) -> None:
    with _LOCK:
        boxes = list(_OUTBOXES.values())
        _OUTBOXES.clear()
    for box in boxes:
        box.stop(timeout)


class _Rcpt:
    def __init__(self, addr: str):
        self.addr, self.params = addr, ()


_TEMPLATES: dict[str | None, notify.Templates] = {}


def templates(config) -> notify.Templates:
    directory = config["notify"]["templates_dir"]
    with _LOCK:
        if directory not in _TEMPLATES:
            _TEMPLATES[directory] = notify.Templates(directory)
        return _TEMPLATES[directory]


def _expand(text: str, config) -> str:
    return text.replace("{myhostname}", config.myhostname).replace("{mydomain}", config.mydomain)


def facts_for(config, policy, txn, decision, findings, rcpts, spam_view=None, quarantined: str = "") -> notify.Facts:
    finding = decision.blocking or next((f for f in findings if f.ccat == decision.main
                                         and f.applies_to(decision.rcpt)), None)
    ccat = finding.ccat if finding else decision.main
    names = tuple(n for f in findings if f.ccat is Ccat.VIRUS for n in dict(f.values).get("virus_names", ()))
    judgement = spam_view.judgement(decision.rcpt) if spam_view is not None else None
    return notify.Facts(
        mail_id=txn.mail_id, category=ccat.name, reason=f"{ccat.name}: {finding.detail}" if finding else ccat.name,
        sender=txn.mail_from, recipients=tuple(rcpts), subject=txn.header("Subject") or "",
        from_header=txn.header("From") or "", message_id=txn.header("Message-ID") or "", virus_names=names,
        spam_score=judgement.level if judgement is not None else None, bank=policy.bank_path_str,
        queue_id=txn.queue_id or "", client_ip=txn.conn.client_ip or "", date=time.time(),
        myhostname=config.myhostname,
        quarantine=f"{quarantined} (to release it: pymavis release {txn.mail_id})" if quarantined else "not kept")


def notices_for(config, policy, txn, outcome, findings, rcpt_settings, spam_view=None) -> list[notify.Notice]:
    settings = {s.rcpt: s for s in rcpt_settings}
    by_rcpt = {d.rcpt: d for d in outcome.decisions}
    n = config["notify"]
    tpl = templates(config)
    hdrfrom_sender, hdrfrom_admin = _expand(n["hdrfrom_notify_sender"], config), _expand(n["hdrfrom_notify_admin"],
                                                                                         config)
    out = []
    refused = [by_rcpt[r] for r in outcome.notify_sender if r in by_rcpt]
    if refused:
        facts = facts_for(config, policy, txn, refused[0], findings, [d.rcpt for d in refused], spam_view,
                          outcome.quarantined)
        params = {r.addr: r.params for r in txn.rcpts}
        never = all(any(str(p).upper() == "NOTIFY=NEVER" for p in params.get(d.rcpt, ())) for d in refused)
        why = notify.dsn_suppressed(facts, txn.headers, fake_sender_patterns=policy.viruses_that_fake_sender,
                                    notify_never=never, spam_over_cutoff=False)
        if why:
            log.info("mail_id %s: no DSN to <%s>: %s", txn.mail_id, txn.mail_from, why)
        else:
            failed = []
            for d in refused:
                reply = reply_for(policy, d, txn.mail_id)
                failed.append((d.rcpt, reply.xcode, f"{reply.code} {reply.xcode} {reply.text}"))
            out.append(notify.sender_dsn(facts, txn.spool.read_head(), failed, templates=tpl, hdrfrom=hdrfrom_sender,
                                         reporting_mta=config.myhostname, arrival_date=time.time()))
    admins: dict[tuple[str, Ccat], list] = {}
    for d in outcome.decisions:
        ccat = d.blocking.ccat if d.blocking else d.main
        setting = ADMIN_SETTING.get(ccat)
        admin = settings[d.rcpt].get(setting) if setting else None
        if admin and not (ccat is Ccat.SPAM and not d.blocked):
            admins.setdefault((admin, ccat), []).append(d)
    for (admin, _), ds in admins.items():
        facts = facts_for(config, policy, txn, ds[0], findings, [d.rcpt for d in ds], spam_view, outcome.quarantined)
        out.append(notify.admin_notice(facts, (admin,), templates=tpl, hdrfrom=hdrfrom_admin,
                                       mail_from=_expand(n["mailfrom_notify_admin"], config)))
    for d in outcome.decisions:
        setting = WARN_RCPT_SETTING.get(d.blocking.ccat) if d.blocked and d.blocking else None
        if setting and settings[d.rcpt].get(setting):
            facts = facts_for(config, policy, txn, d, findings, [d.rcpt], spam_view, outcome.quarantined)
            out.append(notify.recipient_warning(facts, d.rcpt, templates=tpl, hdrfrom=hdrfrom_admin,
                                                mail_from=_expand(n["mailfrom_notify_admin"], config)))
    return out


def send_notices(config, policy, txn, outcome, findings, rcpt_settings, spam_view=None) -> int:
    """Queue this message's notices; how many were queued."""
    box = None
    notices = notices_for(config, policy, txn, outcome, findings, rcpt_settings, spam_view)
    if notices:
        box = outbox(config)
        if box is None:
            if "no-socket" not in _WARNED:
                _WARNED.add("no-socket")
                log.warning("notifications are not sent: resubmit.socket is not set (no MTA listener)")
            return 0
    queued = 0
    for notice in notices:
        try:
            name = box.put(notice)
        except notify.OutboxError as exc:
            log.error("mail_id %s: %s notice to %s not queued: %s", txn.mail_id, notice.kind,
                      ", ".join(f"<{r}>" for r in notice.rcpts), exc)
            continue
        queued += 1
        log.info("mail_id %s: %s notice to %s queued as %s", txn.mail_id, notice.kind,
                 ", ".join(f"<{r}>" for r in notice.rcpts), name)
    return queued
