"""Per-recipient decisions: a pure function from findings and settings to what happens.

For each recipient, the categories found are taken from the highest down (VIRUS first).
A category blocks unless the recipient is a lover of it, bypasses the check behind it
(a recipient who bypasses a check that ran for others is treated as a lover, as amavis
does), or its destiny is `pass`. The main category (the highest found) is reported even
when a lower one, or none, blocked. A few findings carry their own destiny, whatever their
category's says (FINDING_DESTINY): lovers and bypasses still apply to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .categories import Ccat, Finding

DESTINY_SETTING = {
    Ccat.VIRUS: "final_virus_destiny",
    Ccat.BANNED: "final_banned_destiny",
    Ccat.UNCHECKED: "final_unchecked_destiny",
    Ccat.SPAM: "final_spam_destiny",
    Ccat.BADH: "final_bad_header_destiny",
    Ccat.OVERSIZED: "final_oversized_destiny",
}
# Categories whose destiny is fixed: SPAMMY only tags, MTA means our MTA answered 4xx.
FIXED_DESTINY = {Ccat.CLEAN: "pass", Ccat.SPAMMY: "pass", Ccat.MTA: "tempfail"}
LOVERS_SETTING = {
    Ccat.VIRUS: "virus_lovers",
    Ccat.BANNED: "banned_files_lovers",
    Ccat.UNCHECKED: "unchecked_lovers",
    Ccat.SPAM: "spam_lovers",
    Ccat.SPAMMY: "spam_lovers",
    Ccat.BADH: "bad_header_lovers",
}
BYPASS_SETTING = {
    Ccat.VIRUS: "bypass_virus_checks",
    Ccat.BANNED: "bypass_banned_checks",
    Ccat.SPAM: "bypass_spam_checks",
    Ccat.SPAMMY: "bypass_spam_checks",
    Ccat.BADH: "bypass_header_checks",
}
# (check, category, minor) -> destiny. A DMARC failure the bank quarantines (checks/auth.py)
# is SPAM minor 2 and blocked even when final_spam_destiny is pass: discarded once kept, never
# bounced (its sender is forged).
FINDING_DESTINY = {("dmarc", Ccat.SPAM, 2): "discard"}
SPAM_RCPT_SETTINGS = ("spam_tag_level", "spam_tag2_level", "spam_tag3_level", "spam_kill_level",
                      "spam_dsn_cutoff_level", "spam_quarantine_cutoff_level",
                      "spam_subject_tag", "spam_subject_tag2", "spam_subject_tag3", "addr_extension_spam")
# Where a blocked recipient's copy is kept, and who is told (quarantine.py, notify.py): they
# never change the milter answer, so they stay out of the RCPT-time fingerprint.
QUARANTINE_TO_SETTING = {
    Ccat.VIRUS: "virus_quarantine_to",
    Ccat.BANNED: "banned_quarantine_to",
    Ccat.UNCHECKED: "unchecked_quarantine_to",
    Ccat.SPAM: "spam_quarantine_to",
    Ccat.BADH: "bad_header_quarantine_to",
    Ccat.OVERSIZED: "oversized_quarantine_to",
}
ADMIN_SETTING = {Ccat.VIRUS: "virus_admin", Ccat.BANNED: "banned_admin", Ccat.SPAM: "spam_admin",
                 Ccat.BADH: "bad_header_admin"}
WARN_RCPT_SETTING = {Ccat.VIRUS: "warn_virus_recip", Ccat.BANNED: "warn_banned_recip",
                     Ccat.BADH: "warn_bad_header_recip"}
AFTERWARDS_SETTINGS = tuple(sorted(set(QUARANTINE_TO_SETTING.values()) | set(ADMIN_SETTING.values())
                                   | set(WARN_RCPT_SETTING.values())))
PER_RCPT_SETTINGS = tuple(sorted(set(LOVERS_SETTING.values()) | set(BYPASS_SETTING.values())
                                 | {"message_size_limit", "banned_filename_maps"} | set(SPAM_RCPT_SETTINGS)
                                 | set(AFTERWARDS_SETTINGS)))


@dataclass(frozen=True)
class RcptSettings:
    """The per-recipient lookups resolved for one recipient."""

    rcpt: str
    is_local: bool
    values: tuple  # sorted (name, value) pairs of PER_RCPT_SETTINGS

    def __post_init__(self):
        object.__setattr__(self, "_map", dict(self.values))

    def get(self, name):
        return self._map[name]


def resolve_rcpt(policy, rcpt: str) -> RcptSettings:
    """Look up every per-recipient setting for `rcpt`. Raises lookups.LookupFailed."""
    is_local = policy.is_local(rcpt)
    return RcptSettings(rcpt, is_local,
                        tuple((name, policy.rcpt_value(name, rcpt, is_local=is_local)) for name in PER_RCPT_SETTINGS))


def fingerprint(policy, rcpt: str) -> tuple:
    """What can make this recipient's edits or destiny differ from another's (every
    per-recipient setting but the size limit, and whether the address is local): two
    recipients with equal fingerprints always share one milter answer (where copies are kept and
    who is told do not count). For the RCPT-time
    split (split_recipients_at_rcpt). Raises lookups.LookupFailed."""
    settings = resolve_rcpt(policy, rcpt)
    return (settings.is_local, *(v for n, v in settings.values
                                 if n != "message_size_limit" and n not in AFTERWARDS_SETTINGS))


@dataclass(frozen=True)
class RcptDecision:
    rcpt: str
    main: Ccat                 # the highest category found
    main_minor: int
    blocking: Finding | None   # the finding that blocked this recipient, if any
    destiny: str               # pass, discard, bounce, reject, tempfail

    @property
    def blocked(self) -> bool:
        return self.destiny != "pass"


def destiny_for(policy, ccat: Ccat) -> str:
    return FIXED_DESTINY.get(ccat) or getattr(policy, DESTINY_SETTING[ccat])


def decide(policy, settings: RcptSettings, findings: tuple[Finding, ...]) -> RcptDecision:
    mine = sorted((f for f in findings if f.applies_to(settings.rcpt)),
                  key=lambda f: (f.ccat, f.minor), reverse=True)
    if not mine:
        return RcptDecision(settings.rcpt, Ccat.CLEAN, 0, None, "pass")
    values = dict(settings.values)
    for finding in mine:
        lover = values.get(LOVERS_SETTING.get(finding.ccat), False)
        bypass = values.get(BYPASS_SETTING.get(finding.ccat), False)
        destiny = FINDING_DESTINY.get((finding.check, finding.ccat, finding.minor)) \
            or destiny_for(policy, finding.ccat)
        if destiny != "pass" and not lover and not bypass:
            return RcptDecision(settings.rcpt, mine[0].ccat, mine[0].minor, finding, destiny)
    return RcptDecision(settings.rcpt, mine[0].ccat, mine[0].minor, None, "pass")
