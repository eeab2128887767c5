"""Blocked mail is kept before the sender is told no: which copies to store, and storing them.

Which copies (`plan`, pure): each blocked recipient (destiny discard, bounce or reject)
is kept by the method its bank gives the blocking category (`quarantine_method`: local,
sql, hold or none) at the location its `*_quarantine_to` lookup gives (null: not kept;
spam at or above the recipient's `spam_quarantine_cutoff_level`: not kept). Recipients
with the same method and location share one copy: a message quarantined for several
recipients is stored once per location. For `local` the location is a folder under
`quarantine.dir` ('.' is the top); `sql` and `hold` have one place each.

`hold` (the MTA's hold queue, through smfi_quarantine) can only take the whole message:
it applies when every recipient is blocked and every copy is `hold`. The milter then
accepts the message into the hold queue instead of refusing it, and `pymavis release`
releases it there (`postsuper -H`). When only some recipients would be held, their copy
is kept locally instead (logged), since a held message would reach the others too.

Storing (`Keeper.keep`): the local copies are written first (quarantine.FileStore: temp,
fsync, rename), then one index entry in the database (sqlstore: amavis's msgs, msgrcpt,
maddr, plus where each recipient's copy is; the `sql` copy's chunks in the same
transaction). Any failure raises KeepFailed: the pipeline answers TEMPFAIL and the MTA
keeps the message (a file already written without its index entry is an orphan,
reported by `pymavis quarantine orphans`, never lost mail).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import quarantine, sqlstore
from .categories import Ccat
from .decide import QUARANTINE_TO_SETTING
from .log import log

CATEGORY_NAME = {c: c.name for c in Ccat}


class KeepFailed(Exception):
    pass


class Counts:
    """Messages kept and keeps that failed, since start (thread-safe; issue 7's metrics read it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.kept = self.failed = 0

    def add(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.kept += 1
            else:
                self.failed += 1


COUNTS = Counts()


@dataclass(frozen=True)
class Copy:
    method: str                 # local, sql, hold
    location: str               # local: folder under quarantine.dir; sql/hold: ""
    rcpts: tuple[str, ...]


def plan(policy, decisions, rcpt_settings, spam_view=None) -> tuple[tuple[Copy, ...], bool]:
    """(the copies to store, whether the message goes to the MTA's hold queue)."""
    settings = {s.rcpt: s for s in rcpt_settings}
    groups: dict[tuple[str, str], list[str]] = {}
    for d in decisions:
        if not d.blocked or d.destiny == "tempfail" or d.blocking is None:
            continue
        ccat = d.blocking.ccat
        method = policy.quarantine_method.get(ccat.name, "none")
        location = settings[d.rcpt].get(QUARANTINE_TO_SETTING[ccat]) if ccat in QUARANTINE_TO_SETTING else None
        if method == "none" or location is None:
            continue
        judgement = spam_view.judgement(d.rcpt) if spam_view is not None and ccat is Ccat.SPAM else None
        if judgement is not None and judgement.over(judgement.levels.quarantine_cutoff):
            continue
        groups.setdefault((method, location if method == "local" else ""), []).append(d.rcpt)
    hold = bool(groups) and all(m == "hold" for m, _ in groups) and all(d.blocked for d in decisions) \
        and sum(len(r) for r in groups.values()) == len(decisions)
    if not hold and any(m == "hold" for m, _ in groups):
        moved = groups.pop(("hold", ""))
        log.warning("quarantine_method hold keeps whole messages only; %s kept locally instead",
                    ", ".join(f"<{r}>" for r in moved))
        groups.setdefault(("local", "."), []).extend(moved)
    return tuple(Copy(m, loc, tuple(r)) for (m, loc), r in groups.items()), hold


QUAR_TYPE = {"local": "F", "sql": "Q", "hold": "H"}


class Keeper:
    """The quarantine of one configuration: its folders and its database."""

    def __init__(self, settings: dict, state_dir: str, myhostname: str):
        self.dir = Path(settings["dir"] or os.path.join(state_dir, "quarantine"))
        self.subdir_levels, self.gzip = settings["subdir_levels"], settings["gzip"]
        self.url = settings["database"] or database_url(state_dir)
        self.partition_tag = settings["partition_tag"]
        self.host = myhostname
        self._db = None
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlstore.Database:
        with self._lock:
            if self._db is None:
                db = sqlstore.Database(self.url, self.partition_tag)
                db.create()
                self._db = db
            return self._db

    def store(self, location: str) -> quarantine.FileStore:
        return quarantine.FileStore(self.dir / location, self.subdir_levels, self.gzip)

    def keep(self, txn, policy, outcome, copies: tuple[Copy, ...], reasons: dict, spam_view=None,
             held: bool = False) -> sqlstore.QEntry:
        """Store `copies` and the index entry for `outcome` (the answer about to be given);
        the entry written. Raises KeepFailed. `reasons`: recipient -> (category name, reason)."""
        where: dict[str, tuple[str, str]] = {}
        sql_source = None
        try:
            for copy in copies:
                if copy.method == "local":
                    category, reason = reasons[copy.rcpts[0]]
                    rec = quarantine.Record(txn.mail_id, txn.secret_id, category.lower(), reason, txn.mail_from,
                                            copy.rcpts, txn.size, time.time(), txn.queue_id or "")
                    rec = self.store(copy.location).put(rec, txn.spool.reader())
                    loc = os.path.normpath(os.path.join(copy.location, rec.location))
                    where.update({r: ("F", loc) for r in copy.rcpts})
                elif copy.method == "sql":
                    sql_source = txn.spool.read()
                    where.update({r: ("Q", "") for r in copy.rcpts})
                else:
                    where.update({r: ("H", txn.queue_id or "") for r in copy.rcpts})
            entry = index_entry(txn, policy, outcome, where, reasons, spam_view, self.host, held=held)
            self.db.put(entry, sql_source)
        except (quarantine.QuarantineError, sqlstore.StoreError, OSError) as exc:
            COUNTS.add(False)
            raise KeepFailed(str(exc) if not isinstance(exc, OSError) else f"quarantine: {exc}") from None
        COUNTS.add(True)
        return entry


    def discard(self, entry: sqlstore.QEntry) -> None:
        """Remove a message's index entry, then its files (local copies): a failure in
        between leaves an orphan file (`quarantine orphans`), never an entry whose copy is
        gone. Held mail stays with the MTA. Raises sqlstore.StoreError, OSError."""
        self.db.delete(entry.mail_id)
        for r in entry.rcpts:
            if r.quar_type == "F":
                path = self.dir / r.quar_loc
                path.unlink(missing_ok=True)
                path.with_name(f"{entry.mail_id}.json").unlink(missing_ok=True)


def database_url(state_dir: str) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(state_dir, 'pymavis.db'))}"


_KEEPERS: dict[tuple, Keeper] = {}
_KEEPERS_LOCK = threading.Lock()


def keeper(config) -> Keeper:
    """One Keeper per quarantine configuration, shared by the worker threads (and kept
    across reloads that do not change it)."""
    settings = config["quarantine"]
    key = (tuple(sorted((k, str(v)) for k, v in settings.items())), config["state_dir"], config.myhostname)
    with _KEEPERS_LOCK:
        if key not in _KEEPERS:
            _KEEPERS[key] = Keeper(settings, config["state_dir"], config.myhostname)
        return _KEEPERS[key]


def index_entry(txn, policy, outcome, where: dict, reasons: dict, spam_view, host: str, *,
                held: bool = False) -> sqlstore.QEntry:
    """The database's view of a message (kept, or logged by sqllog.py): every recipient, what
    happened to it and what the MTA was told (msgrcpt.ds, smtp_resp), where its copy is."""
    decisions = outcome.decisions
    replies = smtp_responses(policy, outcome, txn.mail_id, held=held)
    rcpts = []
    for d in decisions:
        quar_type, quar_loc = where.get(d.rcpt, ("", ""))
        category, reason = reasons.get(d.rcpt, ("", "")) if quar_type else ("", "")
        judgement = spam_view.judgement(d.rcpt) if spam_view is not None else None
        rcpts.append(sqlstore.QRcpt(
            d.rcpt, policy.is_local(d.rcpt), sqlstore.CONTENT_LETTER[d.main.name],
            sqlstore.DS_LETTER[effective_destiny(outcome, d)],
            quar_type=quar_type, quar_loc=quar_loc, category=category, reason=reason[:255],
            bspam_level=judgement.level if judgement is not None else None,
            smtp_resp=replies.get(d.rcpt, "")))
    main = max(decisions, key=lambda d: d.main).main if decisions else Ccat.CLEAN
    verdict = spam_view.verdict if spam_view is not None else None
    return sqlstore.QEntry(
        mail_id=txn.mail_id, secret_id=txn.secret_id, log_id=txn.mail_id, time=time.time(),
        sender=txn.mail_from, size=txn.size, content=sqlstore.CONTENT_LETTER[main.name], rcpts=tuple(rcpts),
        policy=policy.bank_path_str, client_addr=txn.conn.client_ip or "", originating=bool(policy.originating),
        queue_id=txn.queue_id or "", spam_level=getattr(verdict, "score", None),
        message_id=(txn.header("Message-ID") or "")[:255], from_addr=(txn.header("From") or "")[:255],
        subject=(txn.header("Subject") or "")[:255], host=host)


def reasons_for(decisions) -> dict:
    """recipient -> (category name, reason) of what blocked it."""
    return {d.rcpt: (d.blocking.ccat.name, f"{d.blocking.ccat.name}: {d.blocking.detail}".rstrip(": "))
            for d in decisions if d.blocked and d.blocking is not None}


def effective_destiny(outcome, decision) -> str:
    """What happened to this recipient once the decisions were collapsed into one answer: a
    bounce for everyone is a REJECT at SMTP, a tempfail for one is a tempfail for all."""
    from .outcome import Action
    if outcome.action is Action.TEMPFAIL:
        return "tempfail"
    if outcome.action is Action.REJECT and decision.blocked:
        return "reject"
    return decision.destiny


def smtp_responses(policy, outcome, mail_id: str, *, held: bool = False) -> dict:
    """recipient -> what the MTA was told for it, as amavis logs msgrcpt.smtp_resp."""
    from .outcome import Action, reply_for
    out = {}
    for d in outcome.decisions:
        if outcome.action in (Action.REJECT, Action.TEMPFAIL) and outcome.reply is not None:
            out[d.rcpt] = str(outcome.reply)
        elif held:
            out[d.rcpt] = f"250 2.0.0 Ok, id={mail_id}, held in the MTA's hold queue"
        elif d.blocked and d.destiny == "discard":
            out[d.rcpt] = f"250 2.7.0 Ok, discarded, id={mail_id}"
        elif d.blocked:
            out[d.rcpt] = f"{reply_for(policy, d, mail_id)} (sender notified)"
        else:
            out[d.rcpt] = f"250 2.0.0 Ok, id={mail_id}"
    return out
