"""The header and recipient edits of passed mail, per recipient, and their grouping.

Each passed recipient gets, in this order (values are sanitised by outcome.apply):
- the removal of incoming X-Spam-* fields we write (`remove_existing_spam_headers`; the
  same for every recipient, so it never splits a group);
- the removal of incoming Authentication-Results fields that claim our authserv-id
  (RFC 8601 5), when the authentication check ran (checks/auth.py; the same for all);
- `x_header_tag` (X-Virus-Scanned) when a virus scanner answered;
- one `alert_header_tag` per finding that concerns this recipient;
- X-Spam-Flag, X-Spam-Score, X-Spam-Level, X-Spam-Status when the recipient's spam level
  reaches its `spam_tag_level` (checks/spam.py);
- a Subject prefix: the one of its main category in `subject_tag_by_ccat` (VIRUS:
  ***INFECTED***), else its spam subject tag (spam_subject_tag/tag2/tag3);
- last, our Authentication-Results field (`auth_field`), inserted at the top, so that it
  ends up above the fields inserted before it (the same for every recipient).
An address extension (`addr_extension_spam`, user+spam@ for a local recipient) is a
recipient edit: delrcpt of the address, addrcpt of the extended one.

Milter gives one set of header edits per transaction. `groups` puts recipients with equal
edits together, the largest group first (ties: the order of RCPT). pipeline.py keeps the
first group in the transaction and re-submits the others (resubmit.py), or, without a
re-submission listener, applies the first group's edits to everyone and logs RECIPIENTS
REQUIRE DIFFERENT HEADERS, as amavisd-new does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .categories import Ccat, Finding
from .auth.header import claims as claims_authserv_id
from .checks.spam import OUR_HEADERS, header_values
from .outcome import HeaderEdit


@dataclass(frozen=True)
class Group:
    rcpts: tuple[str, ...]
    headers: tuple[HeaderEdit, ...]


_ALERT_PREFIX = {Ccat.VIRUS: "INFECTED, message contains virus: ", Ccat.BANNED: "BANNED, message contains ",
                 Ccat.UNCHECKED: "UNCHECKED, ", Ccat.OVERSIZED: "OVERSIZED, "}


def alert_text(finding: Finding) -> str:
    """amavis's X-Amavis-Alert wording ('BAD HEADER SECTION, ...' is already in the detail)."""
    return _ALERT_PREFIX.get(finding.ccat, "") + finding.detail


def removals(txn, spam_view) -> tuple[HeaderEdit, ...]:
    """Delete incoming X-Spam-* fields of ours, last occurrence first (so indexes hold
    whether the MTA counts deleted fields or not)."""
    if spam_view is None or not spam_view.remove_existing:
        return ()
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for name, _ in txn.headers:
        key = name.lower()
        if key in OUR_HEADERS:
            counts[key] = counts.get(key, 0) + 1
            names.setdefault(key, name)
    return tuple(HeaderEdit(names[key], "", "change", index)
                 for key in sorted(counts) for index in range(counts[key], 0, -1))


AUTH_RESULTS = "Authentication-Results"


def auth_removals(txn, auth_view) -> tuple[HeaderEdit, ...]:
    """Delete the arriving Authentication-Results fields that claim our authserv-id (others
    are kept), last occurrence first (so indexes hold whether the MTA counts deleted fields
    or not)."""
    if auth_view is None or auth_view.field is None:
        return ()
    fields = [(name, value) for name, value in txn.headers if name.lower() == AUTH_RESULTS.lower()]
    return tuple(HeaderEdit(fields[0][0], "", "change", index)
                 for index in range(len(fields), 0, -1) if claims_authserv_id(fields[index - 1][1], auth_view.authserv_id))


def auth_field(auth_view) -> tuple[HeaderEdit, ...]:
    """Our Authentication-Results field, inserted at the top."""
    if auth_view is None or auth_view.field is None:
        return ()
    return (HeaderEdit(AUTH_RESULTS, auth_view.field, "insert"),)


def for_rcpt(config, policy, decision, findings, scanned: bool, subject: str | None,
             spam_view) -> tuple[HeaderEdit, ...]:
    """The header edits one passed recipient gets (after `removals`)."""
    edits = []
    if scanned and policy.x_header_line:
        value = policy.x_header_line.replace("{mydomain}", config.mydomain).replace("{myhostname}", config.myhostname)
        edits.append(HeaderEdit(policy.x_header_tag, value, "insert"))
    if policy.alert_header_tag:
        edits.extend(HeaderEdit(policy.alert_header_tag, alert_text(f), "insert")
                     for f in findings if f.applies_to(decision.rcpt) and f.check != "spam")
    judgement = spam_view.judgement(decision.rcpt) if spam_view is not None else None
    if judgement is not None and judgement.tag_headers:
        # inserted at the top one after the other: the last inserted ends up first
        values = header_values(judgement, spam_view.verdict.tests if spam_view.verdict else ())
        edits.extend(HeaderEdit(name, value, "insert") for name, value in reversed(values))
    tag = policy.subject_tag_by_ccat.get(decision.main.name) if decision.main > Ccat.CLEAN else None
    if not tag and judgement is not None:
        tag = judgement.subject_tag
    if tag:
        edits.append(HeaderEdit("Subject", tag + subject, "change", from_message=True) if subject is not None
                     else HeaderEdit("Subject", tag.rstrip(), "add"))
    return tuple(edits)


def extended(policy, rcpt: str, extension: str | None) -> str | None:
    """user@dom -> user+EXT@dom for a local recipient (an existing extension is replaced,
    amavis's $replace_existing_extension); None when nothing changes."""
    delim = policy.recipient_delimiter
    if not extension or not delim or "@" not in rcpt or not policy.is_local(rcpt):
        return None
    local, _, domain = rcpt.rpartition("@")
    if local.lower() in ("postmaster", "mailer-daemon", "double-bounce") or local.startswith('"'):
        return None
    base = local.split(delim, 1)[0]
    new = f"{base}{delim}{extension}@{domain}"
    return new if new != rcpt else None


def groups(per_rcpt: dict[str, tuple[HeaderEdit, ...]]) -> list[Group]:
    """Recipients with equal edits together; the largest group first, then RCPT order."""
    by_edits: dict[tuple, list[str]] = {}
    for rcpt, headers in per_rcpt.items():
        by_edits.setdefault(headers, []).append(rcpt)
    ordered = sorted(by_edits.items(), key=lambda item: -len(item[1]))   # stable: RCPT order on ties
    return [Group(tuple(rcpts), headers) for headers, rcpts in ordered]
