"""Fold the per-recipient decisions into the one answer a milter transaction can give,
and apply that answer through the MTA context: the only code that edits the message.

The collapse, as a table (first row that matches wins):

| recipients                                  | answer                                        |
|---------------------------------------------|-----------------------------------------------|
| any blocked with destiny tempfail           | TEMPFAIL for all (nothing is delivered twice) |
| all blocked, any reject or bounce           | REJECT with the reply of the highest category |
| all blocked, all discard                    | DISCARD                                       |
| some blocked, the rest pass                 | delrcpt the blocked; reject/bounce ones get a |
|                                             | pending sender notice (a DSN), discard ones   |
|                                             | nothing; the rest pass with our headers       |
| none blocked                                | pass, with our headers                        |

After DATA, SMTP has one reply for the whole message, so a reject or bounce for only some
recipients cannot be said at SMTP time; it becomes a non-delivery notice to the sender.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from . import sanitize
from .decide import RcptDecision


class Action(enum.Enum):
    CONTINUE = "continue"   # pass; header and recipient edits apply
    REJECT = "reject"
    DISCARD = "discard"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class Reply:
    code: str      # "554"
    xcode: str     # "5.7.0"
    text: str      # already sanitised for setreply

    def __str__(self):
        return f"{self.code} {self.xcode} {self.text.replace('%%', '%')}"


@dataclass(frozen=True)
class HeaderEdit:
    name: str
    value: str
    op: str = "insert"   # "insert" at the top, "add" at the end, "change" (value "" deletes)
    index: int = 1       # for change: which occurrence, 1-based
    from_message: bool = False  # the value carries the message's own text (kept as it is, UTF-8 too)


@dataclass(frozen=True)
class Outcome:
    action: Action
    reply: Reply | None = None
    headers: tuple[HeaderEdit, ...] = ()
    del_rcpts: tuple[str, ...] = ()
    add_rcpts: tuple[str, ...] = ()
    quarantine_reason: str | None = None
    notify_sender: tuple[str, ...] = ()   # recipients whose bounce is owed as a DSN
    lookup_error: str | None = None       # why a lookup failed, when that decided the outcome
    quarantined: str = ""                 # where blocked recipients' copies were kept ("local:., sql")
    quarantine_failed: str | None = None  # why keeping them failed, when that decided the outcome
    decisions: tuple[RcptDecision, ...] = field(default=(), compare=False)


def parse_reply(template: str, values: dict, *, default_code: str = "554", default_xcode: str = "5.7.0") -> Reply:
    """'CODE X.Y.Z text' with {placeholders} filled in from `values` (unknown ones stay)."""
    try:
        text = template.format_map(_Keep(values))
    except (ValueError, IndexError):
        text = template
    parts = text.split(" ", 2)
    code, xcode, rest = default_code, default_xcode, text
    if len(parts) >= 1 and len(parts[0]) == 3 and parts[0].isdigit() and parts[0][0] in "45":
        code = parts[0]
        rest = " ".join(parts[1:])
        bits = rest.split(" ", 1)
        if bits and _is_xcode(bits[0]) and bits[0][0] == code[0]:
            xcode = bits[0]
            rest = bits[1] if len(bits) > 1 else ""
        else:
            xcode = code[0] + default_xcode[1:]
    return Reply(code, xcode, sanitize.reply_text(rest))


def _is_xcode(word: str) -> bool:
    bits = word.split(".")
    return len(bits) == 3 and all(b.isdigit() for b in bits)


class _Keep(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def reply_for(policy, decision: RcptDecision, mail_id: str) -> Reply:
    finding = decision.blocking
    ccat = finding.ccat if finding else decision.main
    values = {"mail_id": mail_id, "detail": finding.detail if finding else "", **dict(finding.values if finding else ())}
    template = policy.smtp_reason_by_ccat.get(ccat.name) or "554 5.7.0 Reject, id={mail_id}"
    return parse_reply(template, values)


def collapse(policy, decisions: tuple[RcptDecision, ...], mail_id: str,
             pass_headers: tuple[HeaderEdit, ...] = ()) -> Outcome:
    blocked = [d for d in decisions if d.blocked]
    if any(d.destiny == "tempfail" for d in blocked):
        worst = max((d for d in blocked if d.destiny == "tempfail"), key=lambda d: d.blocking.ccat)
        reply = reply_for(policy, worst, mail_id)
        if reply.code[0] != "4":
            reply = Reply("451", "4.7.1", f"Try again later, id={mail_id} - {reply.text}")
        return Outcome(Action.TEMPFAIL, reply, decisions=decisions)
    if blocked and len(blocked) == len(decisions):
        rejecting = [d for d in blocked if d.destiny in ("reject", "bounce")]
        if rejecting:
            worst = max(rejecting, key=lambda d: (d.blocking.ccat, d.blocking.minor))
            return Outcome(Action.REJECT, reply_for(policy, worst, mail_id), decisions=decisions)
        return Outcome(Action.DISCARD, decisions=decisions)
    return Outcome(
        Action.CONTINUE,
        headers=pass_headers,
        del_rcpts=tuple(d.rcpt for d in blocked),
        notify_sender=tuple(d.rcpt for d in blocked if d.destiny in ("reject", "bounce")),
        decisions=decisions,
    )


def internal_error(mail_id: str | None, accept: bool = False) -> Outcome:
    if accept:
        return Outcome(Action.CONTINUE)
    ident = f", id={mail_id}" if mail_id else ""
    return Outcome(Action.TEMPFAIL, Reply("451", "4.3.0", f"Temporary internal error{ident}"))


class MilterContext(Protocol):
    """What apply() needs from the adapter (pymilter's Milter.Base methods)."""

    def addheader(self, name, value, idx=-1): ...
    def chgheader(self, name, idx, value): ...
    def delrcpt(self, rcpt): ...
    def addrcpt(self, rcpt, params=None): ...
    def setreply(self, code, xcode, text): ...
    def quarantine(self, reason): ...


def apply(outcome: Outcome, ctx: MilterContext, *, leading_space: bool = False) -> Action:
    """Carry out `outcome` through the milter context; returns the action to answer with."""
    if outcome.reply is not None and outcome.action in (Action.REJECT, Action.TEMPFAIL):
        ctx.setreply(outcome.reply.code, outcome.reply.xcode, outcome.reply.text)
    if outcome.action is not Action.CONTINUE:
        return outcome.action
    lead = " " if leading_space else ""
    for edit in outcome.headers:
        value = sanitize.header_text(edit.value, ascii_only=not edit.from_message)
        if edit.op == "insert":
            ctx.addheader(edit.name, lead + value, 0)
        elif edit.op == "add":
            ctx.addheader(edit.name, lead + value)
        elif edit.op == "change":
            ctx.chgheader(edit.name, edit.index, lead + value if value else "")
        else:
            raise ValueError(f"unknown header edit {edit.op!r}")
    for rcpt in outcome.add_rcpts:
        ctx.addrcpt(f"<{rcpt}>")
    for rcpt in outcome.del_rcpts:
        ctx.delrcpt(f"<{rcpt}>")
    if outcome.quarantine_reason:
        ctx.quarantine(sanitize.header_text(outcome.quarantine_reason, 200))
    return outcome.action

