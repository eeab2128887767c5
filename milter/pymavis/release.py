"""`pymavis release`: deliver a quarantined message through the MTA, exactly once.

The original bytes (from the local file, or the database's chunks), with one header
prepended (`X-Quarantine-ID: <mail_id>`, as amavisd-release does), are submitted over
SMTP to `resubmit.socket`: the MTA's loopback listener that does not run the milter again
(contrib/postfix's 127.0.0.1:10025), so released mail is not quarantined a second time.
The envelope is the original one: the envelope sender (or <> with
`quarantine.release_from_null_sender`), and the recipients the message was kept for (or
the ones given with --to). A message held in the MTA's hold queue is released there
instead: `postsuper -H QUEUEID`.

Exactly once: the release is recorded (msgrcpt.rs = 'R', who, when, the MTA's reply) only
after the MTA's 250; recipients already released are not sent again unless `force`.
Nothing recorded means nothing sent, or the MTA did not confirm (then it is safe to retry:
the worst case of a lost 250 is one duplicate, never a loss).

Who may: the Unix users in `quarantine.admins` (root by default) with the mail_id alone,
anyone else only with the message's secret_id.
"""

from __future__ import annotations

import getpass
import hmac
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import keep, quarantine, resubmit, sqlstore
from .log import log


class ReleaseError(Exception):
    """The release did not happen; the message says why."""


@dataclass(frozen=True)
class Released:
    mail_id: str
    rcpts: tuple[str, ...]
    reply: str


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def authorize(config, entry: sqlstore.QEntry, secret: str | None, user: str) -> None:
    if secret is not None:
        if not hmac.compare_digest(secret.encode(), entry.secret_id.encode()):
            raise ReleaseError(f"wrong secret_id for mail_id {entry.mail_id}")
        return
    if user not in config["quarantine"]["admins"]:
        raise ReleaseError(f"user {user} is not in quarantine.admins: give --secret SECRET_ID")


def message_bytes(keeper: keep.Keeper, entry: sqlstore.QEntry, rcpt: sqlstore.QRcpt) -> bytes:
    if rcpt.quar_type == "Q":
        with keeper.db.open(entry.mail_id) as fh:
            return fh.read()
    if rcpt.quar_type == "F":
        path = (keeper.dir / rcpt.quar_loc).resolve()
        if keeper.dir.resolve() not in path.parents:
            raise ReleaseError(f"mail_id {entry.mail_id}: location {rcpt.quar_loc!r} is outside {keeper.dir}")
        with quarantine.open_file(Path(path)) as fh:
            return fh.read()
    raise ReleaseError(f"mail_id {entry.mail_id}: no copy of type {rcpt.quar_type!r}")


def release(config, mail_id: str, *, secret: str | None = None, to: list[str] | None = None,
            force: bool = False, user: str | None = None) -> Released:
    user = user or current_user()
    keeper = keep.keeper(config)
    try:
        entry = keeper.db.entry(mail_id)
    except sqlstore.StoreError as exc:
        raise ReleaseError(str(exc)) from None
    authorize(config, entry, secret, user)
    kept = [r for r in entry.rcpts if r.quar_type]
    if not kept:
        raise ReleaseError(f"mail_id {mail_id} was not kept for any recipient")
    pending = kept if force else [r for r in kept if r.rs != "R"]
    if not pending:
        done = kept[0]
        raise ReleaseError(f"mail_id {mail_id} was already released (by {done.released_by or '?'} at "
                           f"{_when(done.released_time)}: {done.release_resp or '-'}); --force releases it again")
    if pending[0].quar_type == "H":
        if to:
            raise ReleaseError(f"mail_id {mail_id} is in the MTA's hold queue: it can only go to its own recipients")
        reply = _postsuper_release(config, entry)
    else:
        data = b"X-Quarantine-ID: <" + mail_id.encode() + b">\r\n" + message_bytes(keeper, entry, pending[0])
        sender = "" if config["quarantine"]["release_from_null_sender"] else entry.sender
        targets = [_Rcpt(a) for a in to] if to else [_Rcpt(r.addr) for r in pending]
        try:
            reply = resubmit.submit(config["resubmit"], config.myhostname, sender, (), targets, data)
        except resubmit.ResubmitFailed as exc:
            raise ReleaseError(f"mail_id {mail_id} not released: {exc}") from None
    addrs = tuple(a for a in to) if to else tuple(r.addr for r in pending)
    how = f"{user}" + (f" to {', '.join(addrs)}" if to else "")
    try:
        keeper.db.mark_released(mail_id, [r.addr for r in pending], how, reply[:255])
    except sqlstore.StoreError as exc:
        # delivered but not recorded: say so loudly; a second release would deliver again
        log.error("mail_id %s: released (%s) but the release could not be recorded: %s", mail_id, reply, exc)
        raise ReleaseError(f"mail_id {mail_id} WAS released ({reply}) but not recorded: {exc}") from None
    log.info("mail_id %s: released by %s to %s: %s", mail_id, user, ", ".join(f"<{a}>" for a in addrs), reply)
    return Released(mail_id, addrs, reply)


@dataclass(frozen=True)
class _Rcpt:
    addr: str
    params: tuple = ()


def _postsuper_release(config, entry) -> str:
    settings = config["quarantine"]
    if not entry.queue_id:
        raise ReleaseError(f"mail_id {entry.mail_id} is held but its queue id is unknown")
    cmd = [settings["postsuper"]]
    if settings["postfix_config_dir"]:
        cmd += ["-c", settings["postfix_config_dir"]]
    cmd += ["-H", entry.queue_id]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"{' '.join(cmd)}: {exc}") from None
    said = (proc.stderr or proc.stdout).strip()
    if proc.returncode != 0 or f"{entry.queue_id}: released from hold" not in said:
        raise ReleaseError(f"{' '.join(cmd)} did not release {entry.queue_id}: {said or proc.returncode}")
    return said.splitlines()[-1]


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"
