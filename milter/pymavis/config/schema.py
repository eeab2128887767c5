"""The settings pymavis understands, their types, defaults and meaning.

Two groups:
- POLICY_SETTINGS may appear in the default bank (`policy:` in the main file) and in every
  policy bank; a bank overlays some of them. Names follow amavisd-new where amavis has the
  setting (`final_virus_destiny`, `virus_lovers`, `message_size_limit`, ...); amavis's
  `*_maps` lists are plain names here, because every per-recipient setting is a lookup.
- GLOBAL_SETTINGS only in the main file: the milter socket, logging, bank selection.

Destinies follow amavis's defaults: virus and banned discard, spam, bad-header and
unchecked pass, oversized bounce.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymavis.spec import suggest

from .types import Bool, BoolLookup, Enum, Float, Int, IpLookup, SettingError, SizeLookup, Str, StrMap, Type

DESTINIES = ("pass", "discard", "bounce", "reject", "tempfail")
CATEGORIES = ("CLEAN", "MTA", "OVERSIZED", "BADH", "SPAMMY", "SPAM", "UNCHECKED", "BANNED", "VIRUS")


@dataclass(frozen=True)
class Setting:
    name: str
    type: Type
    default: object
    doc: str


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


_LOVERS = ("virus_lovers", "spam_lovers", "banned_files_lovers", "bad_header_lovers", "unchecked_lovers")
_BYPASS = ("bypass_virus_checks", "bypass_spam_checks", "bypass_banned_checks", "bypass_header_checks")

DEFAULT_SMTP_REASONS = {
    "VIRUS": "554 5.7.0 Reject, id={mail_id} - INFECTED: {detail}",
    "BANNED": "554 5.7.0 Reject, id={mail_id} - BANNED: {detail}",
    "UNCHECKED": "554 5.7.0 Reject, id={mail_id} - UNCHECKED: {detail}",
    "SPAM": "554 5.7.0 Reject, id={mail_id} - spam",
    "SPAMMY": "554 5.7.0 Reject, id={mail_id} - spammy",
    "BADH": "554 5.7.0 Reject, id={mail_id} - BAD HEADER: {detail}",
    "OVERSIZED": "552 5.3.4 Message size ({size} bytes) exceeds recipient's size limit ({limit}), id={mail_id}",
    "MTA": "451 4.3.0 Temporary failure, id={mail_id}",
    "CLEAN": "554 5.7.0 Reject, id={mail_id} - CLEAN",
}

POLICY_SETTINGS = _settings(
    Setting("originating", Bool(), False,
            "mail comes from our own users (set by the MYNETS and ORIGINATING banks)"),
    Setting("mynetworks", IpLookup, ["127.0.0.0/8", "::1"],
            "client networks whose mail is originating; loads the MYNETS bank"),
    Setting("local_domains", BoolLookup, [],
            "recipient (and sender) domains that are ours: inbound vs outbound, user@ keys"),
    Setting("recipient_delimiter", Str(nullable=True), "+",
            "address extension delimiter for lookups (user+ext@); null disables"),
    Setting("message_size_limit", SizeLookup, 0,
            "per-recipient size limit in bytes, 0 = none; larger mail is OVERSIZED"),
    *(Setting(name, BoolLookup, False, f"per-recipient: {name.replace('_', ' ')}") for name in _BYPASS),
    *(Setting(name, BoolLookup, False, f"per-recipient: {name.replace('_', ' ')} receive it anyway")
      for name in _LOVERS),
    Setting("final_virus_destiny", Enum(DESTINIES), "discard", "what happens to VIRUS mail"),
    Setting("final_banned_destiny", Enum(DESTINIES), "discard", "what happens to BANNED mail"),
    Setting("final_unchecked_destiny", Enum(DESTINIES), "pass", "what happens to UNCHECKED mail"),
    Setting("final_spam_destiny", Enum(DESTINIES), "pass", "what happens to SPAM"),
    Setting("final_bad_header_destiny", Enum(DESTINIES), "pass", "what happens to BADH mail"),
    Setting("final_oversized_destiny", Enum(DESTINIES), "bounce", "what happens to OVERSIZED mail"),
    Setting("smtp_reason_by_ccat", StrMap(Str(), keys=CATEGORIES), DEFAULT_SMTP_REASONS,
            "SMTP reply by content category: 'CODE X.Y.Z text' with {mail_id} {detail} {size} {limit}"),
    Setting("x_header_tag", Str(nonempty=True), "X-Virus-Scanned", "name of the header added to passed mail"),
    Setting("x_header_line", Str(nullable=True), "pymavis at {mydomain}",
            "its value ({mydomain}, {myhostname} expand); null: no header"),
    Setting("on_internal_error", Enum(("tempfail", "accept")), "tempfail",
            "answer when pymavis itself fails: tempfail keeps the mail in the MTA's queue"),
)

_MILTER_SETTINGS = {
    "socket": Str(nonempty=True),
    "timeout": Int(minimum=1),
    "backlog": Int(minimum=1),
    "workers": Int(minimum=1, maximum=256),
    "spool_memory_bytes": Int(minimum=0),
    "scan_deadline_s": Float(minimum=1),
    "shutdown_grace_s": Float(minimum=0),
}
MILTER_DEFAULTS = {
    "socket": "inet:127.0.0.1:8899",
    "timeout": 600,          # libmilter's I/O timeout toward the MTA
    "backlog": 64,
    "workers": 8,            # threads doing the work of end-of-message
    "spool_memory_bytes": 102400,  # larger messages spill to a temp file
    "scan_deadline_s": 240,  # below Postfix's milter_content_timeout (300 s)
    "shutdown_grace_s": 30,  # how long SIGTERM waits for messages in flight
}
_LOG_SETTINGS = {
    "level": Enum(("debug", "info", "notice", "warning", "error")),
    "target": Enum(("stderr", "syslog")),
    "syslog_facility": Str(),
    "syslog_socket": Str(),
}
LOG_DEFAULTS = {"level": "info", "target": "stderr", "syslog_facility": "mail", "syslog_socket": "/dev/log"}


@dataclass(frozen=True)
class Section(Type):
    """A fixed set of sub-keys with defaults (used for `milter:` and `log:`)."""

    fields: dict
    defaults: dict

    def convert(self, value, ctx):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise SettingError("expected a mapping")
        out = dict(self.defaults)
        for key, item in value.items():
            if key not in self.fields:
                raise SettingError(f"unknown key {key!r}{suggest(key, self.fields)}", (key,))
            try:
                out[key] = self.fields[key].convert(item, ctx)
            except SettingError as exc:
                raise SettingError(str(exc), (key,) + exc.path) from None
        return out

    def describe(self):
        return "a mapping"


class _IpBankList(Type):
    """Documents the shape; load.py converts the entries itself (each `ip` is a lookup)."""

    def convert(self, value, ctx):
        raise NotImplementedError("client_ipaddr_policy is converted in load.py")

    def describe(self):
        return "a list of {ip: LOOKUP, bank: NAME}"


GLOBAL_SETTINGS = _settings(
    Setting("myhostname", Str(nullable=True), None, "this host's name (default: the FQDN)"),
    Setting("mydomain", Str(nullable=True), None, "our domain (default: myhostname minus its first label)"),
    Setting("state_dir", Str(nonempty=True), "/var/lib/pymavis", "spool files, databases, local quarantine"),
    Setting("policy_banks_dir", Str(nullable=True), "banks",
            "directory of *.yaml files defining policy banks (relative to this file); "
            "the default may be absent, a directory named here must exist"),
    Setting("milter", Section(_MILTER_SETTINGS, MILTER_DEFAULTS), MILTER_DEFAULTS, "the milter service"),
    Setting("log", Section(_LOG_SETTINGS, LOG_DEFAULTS), LOG_DEFAULTS, "logging"),
    Setting("daemon_name_policy", StrMap(Str(nonempty=True)), {},
            "bank by the MTA listener's {daemon_name} (Postfix milter_macro_daemon_name)"),
    Setting("interface_policy", StrMap(Str(nonempty=True), key_type=int), {},
            "bank by the MTA listener's {daemon_port}"),
    Setting("client_ipaddr_policy", _IpBankList(), (),
            "ordered list of {ip: lookup, bank: NAME}; the first match loads its bank"),
    Setting("mynets_bank", Str(nullable=True), "MYNETS", "bank loaded when the client is in mynetworks"),
    Setting("auth_bank", Str(nullable=True), "AUTH", "bank loaded when the client authenticated (SMTP AUTH)"),
    Setting("myusers_bank", Str(nullable=True), "MYUSERS",
            "bank loaded when originating mail has a sender in local_domains"),
)

# Banks a selector may load without a file defining them, and what they imply.
BUILTIN_BANKS = {"MYNETS": {"originating": True}, "AUTH": {"originating": True}, "MYUSERS": {}}
