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

import dataclasses
import logging.handlers
import os
import re
from dataclasses import dataclass

from pymavis import banned, lookups
from pymavis.auth import RESULT_KEYS
from pymavis.checks.headers import MINOR_OF_TEST
from pymavis.decode import DEFAULT_TYPE_MAP, Limits
from pymavis.spec import suggest

from .types import (Bool, BoolLookup, Enum, Float, FloatLookup, Int, IpLookup, LocationLookup, Lookup, RuleSetsLookup,
                    SettingError, SizeLookup, Str, StrList, StrLookup, StrMap, Type, _type_name)

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


class RegexList(Type):
    """A list of regular expressions (case-insensitive, searched)."""

    def convert(self, value, ctx):
        if not isinstance(value, list):
            raise SettingError(f"expected a list of regular expressions, got {_type_name(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise SettingError(f"expected a regular expression, got {item!r}", (i,))
            try:
                out.append(re.compile(item, re.IGNORECASE))
            except re.error as exc:
                raise SettingError(f"bad regular expression {item!r}: {exc}", (i,)) from None
        return tuple(out)

    def describe(self):
        return "a list of regular expressions"


def bank_names_from_text(value) -> tuple[str, ...]:
    """Policy bank names: 'WHITELIST', amavis's comma-separated 'A,B', or a list of names."""
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value]
    else:
        raise ValueError(f"expected policy bank names ('WHITELIST', 'A,B' or a list), got {value!r}")
    if not names or not all(names):
        raise ValueError(f"expected policy bank names ('WHITELIST', 'A,B' or a list), got {value!r}")
    return tuple(dict.fromkeys(names))


class BankNames(Type):
    """One or more policy bank names (bank_names_from_text); that each is defined is checked
    by the loader once every bank is read."""

    def convert(self, value, ctx):
        try:
            return bank_names_from_text(value)
        except ValueError as exc:
            raise SettingError(str(exc)) from None

    def describe(self):
        return "policy bank names"


def bank_names_in(chain: lookups.LookupChain) -> list[tuple[str, str]]:
    """(the entry, bank name) for every value of a lookup whose values name banks, so the
    loader can refuse an undefined one. A regex value with $1 is only known when it is used
    (policy.py logs and ignores an undefined name then)."""
    out = []

    def values(table):
        if isinstance(table, lookups.FileTable):
            return values(table.table)
        if isinstance(table, lookups.ConstantTable):
            return [(table.describe, table.value)]
        if isinstance(table, lookups.MapTable):
            return [(key, value) for key, value in table.entries.items()]
        if isinstance(table, lookups.RegexTable):
            return [(rx.pattern, value) for rx, value in table.entries]
        return []   # acl: true/false only, refused by bank_names_from_text

    for table in chain.tables:
        for entry, names in values(table):
            for name in names or ():
                if "$" not in name:
                    out.append((entry, name))
    return out


_LOVERS = ("virus_lovers", "spam_lovers", "banned_files_lovers", "bad_header_lovers", "unchecked_lovers")
_BYPASS = ("bypass_virus_checks", "bypass_spam_checks", "bypass_banned_checks", "bypass_header_checks")

QUARANTINE_METHODS = ("local", "sql", "hold", "none")
DEFAULT_QUARANTINE_METHOD = {"VIRUS": "local", "BANNED": "local", "SPAM": "local", "BADH": "local",
                             "UNCHECKED": "local", "OVERSIZED": "none"}

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

DMARC_ACTIONS = ("none", "reject", "quarantine", "score")


class ArcSeal(Bool):
    """`arc_seal`: true only with a sealing key (`arc_sealing`, read before the banks)."""

    def convert(self, value, ctx):
        value = super().convert(value, ctx)
        if value and not ctx.arc_sealing:
            raise SettingError("arc_seal needs a key: arc_sealing in the main file is not set (or not valid)")
        return value


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
    Setting("banned_filename_maps", RuleSetsLookup(), "DEFAULT",
            "per-recipient: which banned rule sets apply, in order ('NO-EXE,DEFAULT')"),
    Setting("allowed_header_tests", StrMap(Bool(), keys=tuple(MINOR_OF_TEST)), {t: True for t in MINOR_OF_TEST},
            "bad-header tests that run (mime 8bit control empty long syntax missing multiple); false turns one off"),
    Setting("bad_header_utf8_allowed", Bool(), True,
            "8-bit header text that is valid UTF-8 (RFC 6532) is not a bad header"),
    Setting("alert_header_tag", Str(nullable=True), "X-Pymavis-Alert",
            "header listing the findings on mail passed despite them (amavis's X-Amavis-Alert); null: none"),
    Setting("virus_scanners_failure_is_fatal", Bool(), True,
            "when every virus scanner failed: true answers TEMPFAIL (the MTA retries), false makes it UNCHECKED"),
    Setting("virus_admin", Lookup("address", str), None,
            "per-recipient: who is told about a virus for this recipient (used by notifications)"),
    Setting("spam_admin", Lookup("address", str), None,
            "per-recipient: who is told about spam blocked for this recipient (notifications)"),
    Setting("banned_admin", Lookup("address", str), None,
            "per-recipient: who is told about a banned file for this recipient (notifications)"),
    Setting("bad_header_admin", Lookup("address", str), None,
            "per-recipient: who is told about a bad header for this recipient (notifications)"),
    *(Setting(f"warn_{what}_recip", BoolLookup, False,
              f"per-recipient: tell a recipient that {text} mail for them was blocked (notifications)")
      for what, text in (("virus", "infected"), ("banned", "banned"), ("bad_header", "bad-header"))),
    Setting("quarantine_method", StrMap(Enum(QUARANTINE_METHODS), keys=CATEGORIES), DEFAULT_QUARANTINE_METHOD,
            "where blocked mail of each category is kept: local (files), sql (the database), "
            "hold (the MTA's hold queue), none"),
    *(Setting(f"{what}_quarantine_to", LocationLookup, ".",
              f"per-recipient: the location {text} mail blocked for this recipient is kept in "
              "(a folder under quarantine.dir for local; '.' the top); null: not kept")
      for what, text in (("virus", "infected"), ("banned", "banned"), ("spam", "spam"),
                         ("bad_header", "bad-header"), ("unchecked", "unchecked"), ("oversized", "oversized"))),
    Setting("viruses_that_fake_sender", RegexList(), ["."],
            "virus names (regexes) known to forge the sender: no notice to the sender (notifications)"),
    Setting("subject_tag_by_ccat", StrMap(Str(), keys=CATEGORIES), {"VIRUS": "***INFECTED*** "},
            "Subject prefix on mail passed to recipients whose main category is listed"),
    Setting("x_header_tag", Str(nonempty=True), "X-Virus-Scanned",
            "header added to passed mail when a virus scanner answered"),
    Setting("x_header_line", Str(nullable=True), "pymavis at {mydomain}",
            "its value ({mydomain}, {myhostname} expand); null: no header"),
    # spam (checks/spam.py): levels and tags per recipient, amavisd.conf's sample values
    Setting("spam_tag_level", FloatLookup, 2.0,
            "per-recipient: X-Spam-* headers at or above this level (null: always)"),
    Setting("spam_tag2_level", FloatLookup, 6.2,
            "per-recipient: SPAMMY at or above: X-Spam-Flag YES, spam_subject_tag2, addr_extension_spam"),
    Setting("spam_tag3_level", FloatLookup, None,
            "per-recipient: SPAMMY minor 1 at or above: spam_subject_tag3 instead of tag2 (null: none)"),
    Setting("spam_kill_level", FloatLookup, 6.9,
            "per-recipient: SPAM at or above: final_spam_destiny applies (null: never SPAM by score)"),
    Setting("spam_dsn_cutoff_level", FloatLookup, 10.0,
            "per-recipient: no sender notice for spam at or above this level (null: no cutoff)"),
    Setting("spam_quarantine_cutoff_level", FloatLookup, None,
            "per-recipient: spam at or above this level is not quarantined (null: no cutoff)"),
    Setting("spam_subject_tag", StrLookup, None,
            "per-recipient: Subject prefix at or above spam_tag_level (null: none)"),
    Setting("spam_subject_tag2", StrLookup, "***SPAM*** ",
            "per-recipient: Subject prefix at or above spam_tag2_level (null: none)"),
    Setting("spam_subject_tag3", StrLookup, None,
            "per-recipient: Subject prefix at or above spam_tag3_level (null: none)"),
    Setting("addr_extension_spam", StrLookup, None,
            "per-recipient: address extension for spammy mail to local recipients (user+spam@; null: none)"),
    Setting("whitelist_sender", BoolLookup, [],
            "by envelope sender: never SPAMMY or SPAM; spamd is not asked when it decides for everyone"),
    Setting("blacklist_sender", BoolLookup, [],
            "by envelope sender: always SPAM; spamd is not asked"),
    Setting("score_sender", FloatLookup, None,
            "by envelope sender: points added to spamd's score (negative lowers it)"),
    Setting("sa_mail_body_size_limit", Int(minimum=0), 409600,
            "bytes of the message spamd sees at most (0: all); see sa_mail_body_size_action"),
    Setting("sa_mail_body_size_action", Enum(("truncate", "skip")), "truncate",
            "a larger message: truncate it near the limit for spamd (amavis), or skip the spam check"),
    Setting("spam_scanner_failure", Enum(("pass", "tempfail")), "pass",
            "when no spamd answered: pass (not marked spam, logged) or tempfail (the MTA retries)"),
    Setting("remove_existing_spam_headers", Bool(), True,
            "incoming X-Spam-* fields we write are removed from the mail and from what spamd sees"),
    Setting("split_recipients_at_rcpt", Bool(), False,
            "at RCPT, answer 452 4.5.3 to a recipient whose policy differs from the first one's "
            "(inbound MX banks only; see docs/spam.md)"),
    Setting("sql_log_failure_is_fatal", Bool(), False,
            "with sql_log on: write the message's rows before answering, and TEMPFAIL when the database "
            "fails (default: queue them, keep a backlog while it is away)"),
    Setting("debug_sender", BoolLookup, [],
            "by envelope sender: log this message at debug, whatever log.level says (amavis's debug_sender_maps)"),
    Setting("debug_recipient", BoolLookup, [],
            "by recipient: log the message at debug when any recipient matches (amavis's debug_recipient_maps)"),
    Setting("on_internal_error", Enum(("tempfail", "accept")), "tempfail",
            "answer when pymavis itself fails: tempfail keeps the mail in the MTA's queue"),
    # authentication of arriving mail (pymavis/auth, checks/auth.py, docs/authentication.md)
    Setting("dkim_verify", Bool(), False,
            "verify every DKIM signature (at most 5) and report it in Authentication-Results"),
    Setting("spf_verify", Bool(), False,
            "check SPF for the envelope sender (HELO for <>) and report it; never for originating mail"),
    Setting("dmarc_verify", Bool(), False,
            "evaluate the From domain's DMARC policy and report it (runs DKIM and SPF too); "
            "never for originating mail"),
    Setting("dkim_min_key_bits", Int(minimum=0), 1024,
            "a signature verified with a smaller RSA key is reported dkim=policy, not pass"),
    Setting("dmarc_reject_action", Enum(DMARC_ACTIONS), "none",
            "a DMARC fail with p=reject: none (only reported), reject (554 5.7.1), quarantine "
            "(blocked as SPAM minor 2 and kept), score (dmarc_fail_score points on the spam level)"),
    Setting("dmarc_quarantine_action", Enum(DMARC_ACTIONS), "none",
            "the same for p=quarantine (and for p=reject that pct= sampled out)"),
    Setting("dmarc_fail_score", Float(), 3.0,
            "points the score action adds to every recipient's spam level (like score_sender)"),
    Setting("dkim_sign", Bool(), False,
            "sign passed originating mail with the dkim_signing_keys key of its From domain "
            "(not mail leaving as virus, banned, spam or spammy)"),
    Setting("arc_verify", Bool(), False,
            "verify the ARC chain (RFC 8617, at most 50 sets) and report it as arc= in "
            "Authentication-Results; never for originating mail"),
    Setting("arc_seal", ArcSeal(), False,
            "add an ARC set (the arc_sealing key) to passed mail that arrived here, after our header edits "
            "(verifies the chain too; not mail leaving as virus, banned, spam or spammy)"),
)

_MILTER_SETTINGS = {
    "socket": Str(nonempty=True),
    "timeout": Int(minimum=1),
    "backlog": Int(minimum=1),
    "workers": Int(minimum=1, maximum=256),
    "decode_workers": Int(minimum=1, maximum=256),
    "decode_memory_bytes": Int(minimum=1),
    "spool_memory_bytes": Int(minimum=0),
    "scan_deadline_s": Float(minimum=1),
    "shutdown_grace_s": Float(minimum=0),
    "switch_interval_ms": Float(minimum=0.1, maximum=1000),
}
MILTER_DEFAULTS = {
    "socket": "inet:127.0.0.1:8899",
    "timeout": 600,          # libmilter's I/O timeout toward the MTA
    "backlog": 64,
    "workers": 8,            # threads doing the work of end-of-message
    "decode_workers": 2,     # of those, how many may decode at once (memory: ~6x the message each)
    "decode_memory_bytes": 8 * 1024 * 1024,  # message bytes decoding at once; a larger one decodes alone
    "spool_memory_bytes": 102400,  # larger messages spill to a temp file
    "scan_deadline_s": 240,  # below Postfix's milter_content_timeout (300 s)
    "shutdown_grace_s": 30,  # how long SIGTERM waits for messages in flight
    "switch_interval_ms": 20,  # sys.setswitchinterval: how long a thread keeps the GIL when others wait
}
class LogLevel(Enum):
    """A level name, or amavisd-new's $log_level 0-5 (log.AMAVIS_LEVELS) -> the level name."""

    def convert(self, value, ctx):
        from pymavis.log import AMAVIS_LEVELS
        if isinstance(value, int) and not isinstance(value, bool):
            if value not in AMAVIS_LEVELS:
                raise SettingError(f"expected amavis's log_level 0-5 or one of {', '.join(self.choices)}, "
                                   f"got {value}")
            return AMAVIS_LEVELS[value]
        if not isinstance(value, str):
            raise SettingError(f"expected one of {', '.join(self.choices)} or 0-5, got {_type_name(value)}")
        return super().convert(value, ctx)

    def describe(self):
        return super().describe() + ", or 0-5 (amavis's log_level)"


_LOG_LEVELS = LogLevel(("debug", "info", "notice", "warning", "error"))
# what SysLogHandler knows (mail, daemon, user, local0-7, ...); an unknown name would fail at every line
_SYSLOG_FACILITIES = tuple(sorted(logging.handlers.SysLogHandler.facility_names))
_LOG_SETTINGS = {
    "level": _LOG_LEVELS,
    "target": Enum(("stderr", "syslog")),
    "syslog_facility": Enum(_SYSLOG_FACILITIES),
    "syslog_socket": Str(),
    "timing_level": _LOG_LEVELS,   # the TIMING line of each message (observe.py)
}
LOG_DEFAULTS = {"level": "info", "target": "stderr", "syslog_facility": "mail", "syslog_socket": "/dev/log",
                "timing_level": "debug"}


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


@dataclass(frozen=True)
class LimitsSection(Section):
    """The `decode:` limits, converted to a decode.Limits."""

    def convert(self, value, ctx):
        return Limits(**super().convert(value, ctx))


_LIMIT_TYPES = {int: Int(minimum=1), float: Float(minimum=0.1)}
_DECODE_SETTINGS = {f.name: _LIMIT_TYPES[type(f.default)] for f in dataclasses.fields(Limits)}
DECODE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Limits)}


class BannedRules(Type):
    """Rule sets by name ({SET: [rule, ...]}, banned.py); a set named like a shipped one
    (DEFAULT, NO-EXE, ALLOW_EXE, NO-DISK-IMAGES) replaces it."""

    def convert(self, value, ctx):
        try:
            return {**banned.DEFAULT_RULE_SETS, **banned.build_rule_sets(value or {})}
        except banned.RuleSpecError as exc:
            raise SettingError(str(exc), exc.path) from None

    def describe(self):
        return "a mapping of rule set names to lists of rules"


class FileTypeMap(Type):
    """[[REGEX, SHORT], ...] tried on libmagic's description before the shipped table."""

    def convert(self, value, ctx):
        if value is None:
            value = []
        if not isinstance(value, list):
            raise SettingError(f"expected a list of [regex, short type] pairs, got {_type_name(value)}")
        pairs = []
        for i, item in enumerate(value):
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) and x for x in item)):
                raise SettingError(f"expected [regex, short type], got {item!r}", (i,))
            try:
                pairs.append((re.compile(item[0]), item[1]))
            except re.error as exc:
                raise SettingError(f"bad regular expression {item[0]!r}: {exc}", (i, 0)) from None
        return (*pairs, *DEFAULT_TYPE_MAP)

    def describe(self):
        return "a list of [regex, short type] pairs"


_SCANNER_KEYS = {"name": Str(nonempty=True), "socket": Str(nonempty=True),
                 "method": Enum(("fildes", "instream", "parts")), "connect_timeout_s": Float(minimum=0.1),
                 "timeout_s": Float(minimum=0.1), "max_size": Int(minimum=0)}
SCANNER_DEFAULTS = {"method": None, "connect_timeout_s": 5.0, "timeout_s": 60.0, "max_size": 0}


_SCANNER_SECTION = Section(_SCANNER_KEYS, SCANNER_DEFAULTS)


def _scanner_entries(value, section: Section, ctx, what: str):
    """(index, converted fields) of each {name, socket, ...} entry of a scanner list."""
    if value is None:
        return
    if not isinstance(value, list):
        raise SettingError(f"expected a list of {what}s, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise SettingError(f"expected a mapping {{name, socket, ...}}, got {item!r}", (i,))
        try:
            fields = section.convert(item, ctx)
        except SettingError as exc:
            raise SettingError(str(exc), (i,) + exc.path) from None
        for key in ("name", "socket"):
            if key not in item:
                raise SettingError(f"a {what} needs {key!r}", (i,))
        yield i, fields


class ScannerList(Type):
    """[{name, socket, method, connect_timeout_s, timeout_s, max_size}, ...] -> virus.Scanner.
    `method` defaults to fildes on a unix socket, instream over TCP; fildes over TCP is an
    error (clamd cannot receive a descriptor there); parts (the decoded parts, each
    streamed: checks/virus.py) works over both."""

    def convert(self, value, ctx):
        from pymavis import clamd
        from pymavis.checks.virus import Scanner
        scanners = []
        for i, fields in _scanner_entries(value, _SCANNER_SECTION, ctx, "scanner"):
            try:
                client = clamd.ClamdClient(fields["socket"], connect_timeout=fields["connect_timeout_s"],
                                           timeout=fields["timeout_s"])
            except ValueError as exc:
                raise SettingError(str(exc), (i, "socket")) from None
            method = fields["method"] or ("fildes" if client.can_pass_fd else "instream")
            if method == "fildes" and not client.can_pass_fd:
                raise SettingError("method fildes needs a unix: socket (use instream over TCP)", (i, "method"))
            scanners.append(Scanner(fields["name"], client, method, fields["max_size"]))
        return tuple(scanners)

    def describe(self):
        return "a list of scanners ({name, socket, method, connect_timeout_s, timeout_s, max_size})"


_SPAMD_KEYS = {"name": Str(nonempty=True), "socket": Str(nonempty=True), "user": Str(nullable=True),
               "compress": Bool(), "connect_timeout_s": Float(minimum=0.1), "timeout_s": Float(minimum=0.1)}
SPAMD_DEFAULTS = {"user": None, "compress": False, "connect_timeout_s": 3.0, "timeout_s": 30.0}
_SPAMD_SECTION = Section(_SPAMD_KEYS, SPAMD_DEFAULTS)


class SpamdList(Type):
    """[{name, socket, user, compress, connect_timeout_s, timeout_s}, ...] -> spam.SpamScanner."""

    def convert(self, value, ctx):
        from pymavis import spamd
        from pymavis.checks.spam import SpamScanner
        scanners = []
        for i, fields in _scanner_entries(value, _SPAMD_SECTION, ctx, "spam scanner"):
            try:
                client = spamd.SpamdClient(fields["socket"], user=fields["user"], compress=fields["compress"],
                                           connect_timeout=fields["connect_timeout_s"], timeout=fields["timeout_s"])
            except ValueError as exc:
                raise SettingError(str(exc), (i, "user" if "user" in str(exc) else "socket")) from None
            scanners.append(SpamScanner(fields["name"], client))
        return tuple(scanners)

    def describe(self):
        return "a list of spamd scanners ({name, socket, user, compress, connect_timeout_s, timeout_s})"


_SPAM_CACHE_SETTINGS = {"ttl_s": Float(minimum=0), "max_entries": Int(minimum=1)}
SPAM_CACHE_DEFAULTS = {"ttl_s": 600.0, "max_entries": 10000}
class InetSpec(Str):
    """A TCP socket spec (inet:HOST:PORT), or null."""

    def convert(self, value, ctx):
        from pymavis import netclient
        value = super().convert(value, ctx)
        if value is not None:
            try:
                spec = netclient.parse_socket_spec(value, "socket")
            except ValueError as exc:
                raise SettingError(str(exc)) from None
            if spec.is_unix:
                raise SettingError(f"{value!r}: the re-submission listener is reached over TCP (inet:HOST:PORT)")
        return value

    def describe(self):
        return "inet:HOST:PORT or null"


_RESUBMIT_SETTINGS = {"socket": InetSpec(nullable=True), "timeout_s": Float(minimum=0.1), "helo": Str(nullable=True)}
RESUBMIT_DEFAULTS = {"socket": None, "timeout_s": 30.0, "helo": None}


_QUARANTINE_SETTINGS = {"dir": Str(nullable=True), "subdir_levels": Int(minimum=0, maximum=3), "gzip": Bool(),
                        "database": Str(nullable=True), "partition_tag": Int(minimum=0),
                        "release_from_null_sender": Bool(), "admins": StrList(),
                        "postsuper": Str(nonempty=True), "postfix_config_dir": Str(nullable=True)}
QUARANTINE_DEFAULTS = {"dir": None, "subdir_levels": 1, "gzip": False, "database": None, "partition_tag": 0,
                       "release_from_null_sender": False, "admins": ["root"], "postsuper": "postsuper",
                       "postfix_config_dir": None}
_SQL_LOG_SETTINGS = {"enabled": Bool(), "database": Str(nullable=True), "queue_max": Int(minimum=1),
                     "retry_s": Float(minimum=0.1)}
SQL_LOG_DEFAULTS = {"enabled": False, "database": None, "queue_max": 10000, "retry_s": 10.0}


class TemplatesDir(Str):
    """A folder of notice templates (relative to the config file), checked when loaded:
    an unknown macro or file name is an error here, not at the first notice."""

    def convert(self, value, ctx):
        from pymavis import notify
        value = super().convert(value, ctx)
        if value is not None:
            value = os.path.join(ctx.base_dir, value)
            try:
                notify.Templates(value)
            except notify.TemplateError as exc:
                raise SettingError(str(exc)) from None
        return value


_NOTIFY_SETTINGS = {"queue_dir": Str(nullable=True), "templates_dir": TemplatesDir(nullable=True),
                    "hdrfrom_notify_sender": Str(nonempty=True), "hdrfrom_notify_admin": Str(nonempty=True),
                    "mailfrom_notify_admin": Str(), "retry_s": Float(minimum=0.1), "max_age_s": Float(minimum=1)}
NOTIFY_DEFAULTS = {"queue_dir": None, "templates_dir": None,
                   "hdrfrom_notify_sender": '"Content-filter at {myhostname}" <postmaster@{myhostname}>',
                   "hdrfrom_notify_admin": '"Content-filter at {myhostname}" <postmaster@{myhostname}>',
                   "mailfrom_notify_admin": "", "retry_s": 60.0, "max_age_s": 5 * 86400.0}


_REDACT_SETTINGS = {"addresses": Bool(), "subjects": Bool()}
REDACT_DEFAULTS = {"addresses": False, "subjects": False}
_EVENT_LOG_SETTINGS = {"target": Enum(("none", "file", "stdout", "syslog")), "path": Str(nullable=True),
                       "redact": Section(_REDACT_SETTINGS, REDACT_DEFAULTS)}
EVENT_LOG_DEFAULTS = {"target": "none", "path": None, "redact": REDACT_DEFAULTS}


class ListenAddress(Str):
    """HOST:PORT with HOST an IP address ([::1]:PORT for IPv6) or localhost -> (host, port)."""

    def convert(self, value, ctx):
        import ipaddress
        value = super().convert(value, ctx)
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingError(f"expected HOST:PORT (127.0.0.1:9911, [::1]:9911), got {value!r}")
        host = host.strip("[]")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise SettingError(f"{value!r}: the host must be an IP address (127.0.0.1, [::1])") from None
        return host, int(port)

    def describe(self):
        return "HOST:PORT or null"


class MetricsSection(Section):
    """`metrics:`; a non-loopback `listen` needs `allow_non_loopback: true`."""

    def convert(self, value, ctx):
        import ipaddress
        out = super().convert(value, ctx)
        if out["listen"] is not None and not out["allow_non_loopback"]:
            host = out["listen"][0]
            if not ipaddress.ip_address(host).is_loopback:
                raise SettingError(f"{host} is not a loopback address: metrics are not authenticated; set "
                                   "allow_non_loopback: true to serve them beyond this host", ("listen",))
        return out


_METRICS_SETTINGS = {"listen": ListenAddress(nullable=True), "allow_non_loopback": Bool()}
METRICS_DEFAULTS = {"listen": None, "allow_non_loopback": False}


class NameServers(Type):
    """Name servers by IP address (a string or a list): '192.0.2.53', '192.0.2.53:5353',
    '[2001:db8::53]:5353' -> ((address, port), ...); null: /etc/resolv.conf."""

    nullable = True

    def convert(self, value, ctx):
        from pymavis.auth.resolver import parse_server
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise SettingError(f"expected an IP address (optionally :PORT), got {_type_name(item)}",
                                   (i,) if isinstance(value, list) else ())
            try:
                out.append(parse_server(item))
            except ValueError as exc:
                raise SettingError(str(exc), (i,) if isinstance(value, list) else ()) from None
        return tuple(out)

    def describe(self):
        return "an IP address or a list of them, or null"


class AuthservId(Str):
    """Our authserv-id (RFC 8601 2.5): a token such as a host name; null: myhostname."""

    def convert(self, value, ctx):
        from pymavis.auth.header import is_token
        value = super().convert(value, ctx)
        if value is not None and not is_token(value):
            raise SettingError(f"{value!r} is not a valid authserv-id: use a host name, without spaces or ;()\"")
        return value


_SIGNING_KEY_FIELDS = {"selector": Str(nonempty=True), "key_file": Str(nonempty=True),
                       "algorithm": Enum(("rsa-sha256", "ed25519-sha256")), "headers": StrList(),
                       "oversign": StrList()}
_DOMAIN = re.compile(r"\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def _signing_key(item, fields_spec: dict, ctx, domain: str, **read_key_args):
    """One key entry (a mapping of `fields_spec`) -> dkimsign.SigningKey for `domain`, its key
    file (relative to this file) read and checked. Raises SettingError with the key's path."""
    from pymavis.auth import dkimsign
    from pymavis.auth.header import is_token
    section = Section(fields_spec, {"algorithm": "rsa-sha256", "headers": dkimsign.DEFAULT_HEADERS,
                                    "oversign": dkimsign.DEFAULT_OVERSIGN})
    fields = section.convert(item, ctx)
    for key in ("selector", "key_file"):
        if key not in (item or {}):
            raise SettingError(f"a signing key needs {key!r}")
    if not is_token(fields["selector"]) or "/" in fields["selector"]:
        raise SettingError(f"bad selector {fields['selector']!r}", ("selector",))
    path = os.path.join(ctx.base_dir, fields["key_file"])
    try:
        private = dkimsign.read_key(path, fields["algorithm"], **read_key_args)
    except OSError as exc:
        raise SettingError(f"cannot read {path}: {exc.strerror}", ("key_file",)) from None
    except dkimsign.BadKey as exc:
        raise SettingError(str(exc), ("key_file",)) from None
    return dkimsign.SigningKey(domain, fields["selector"], fields["algorithm"], private,
                               tuple(h.lower() for h in fields["headers"]),
                               tuple(h.lower() for h in fields["oversign"]))


class SigningKeys(Type):
    """{DOMAIN: {selector, key_file, algorithm, headers, oversign}} -> {domain: dkimsign.SigningKey};
    `.example.com` also covers subdomains. Key files (relative to this file) are read and
    checked here."""

    def convert(self, value, ctx):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SettingError(f"expected a mapping of domains to keys, got {_type_name(value)}")
        out = {}
        for raw_domain, item in value.items():
            domain = str(raw_domain).lower().rstrip(".")
            if not _DOMAIN.fullmatch(domain):
                raise SettingError(f"{domain!r} is not a domain name (example.com, or .example.com with subdomains)",
                                   (raw_domain,))
            try:
                out[domain] = _signing_key(item, _SIGNING_KEY_FIELDS, ctx, domain.lstrip("."))
            except SettingError as exc:
                raise SettingError(str(exc), (raw_domain,) + exc.path) from None
        return out

    def describe(self):
        return "a mapping of domains to signing keys"


# ARC sealing (auth/arcseal.py): rsa-sha256 only (RFC 8617), and none of arcseal.NOT_SIGNED.
_ARC_SEALING_FIELDS = {**_SIGNING_KEY_FIELDS, "domain": Str(nonempty=True), "algorithm": Enum(("rsa-sha256",))}
# An ARC-Message-Signature of a larger key does not fit the one-line value of at most
# header.MAX_CHARS (900) characters that outcome.apply writes (b= alone is 684 for 4096 bits).
ARC_MAX_KEY_BITS = 2048


class ArcSealing(Type):
    """{domain, selector, key_file, algorithm, headers, oversign} -> dkimsign.SigningKey, or
    null (no sealing). The key file is read and checked here."""

    nullable = True

    def convert(self, value, ctx):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise SettingError(f"expected a mapping {{domain, selector, key_file}}, got {_type_name(value)}")
        if "domain" not in value:
            raise SettingError("arc_sealing needs 'domain' (the d= of the seal)")
        domain = str(value["domain"]).lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain) or domain.startswith("."):
            raise SettingError(f"{domain!r} is not a domain name", ("domain",))
        from pymavis.auth import arcseal
        key = _signing_key(value, _ARC_SEALING_FIELDS, ctx, domain, max_rsa_bits=ARC_MAX_KEY_BITS)
        for what in ("headers", "oversign"):
            bad = [h for h in getattr(key, what) if h in arcseal.NOT_SIGNED]
            if bad:
                raise SettingError(f"{bad[0]!r} cannot be signed by an ARC-Message-Signature", (what,))
        return key

    def describe(self):
        return "a mapping {domain, selector, key_file, algorithm, headers, oversign}, or null"


_DNS_SETTINGS = {"resolver": NameServers(), "timeout_s": Float(minimum=0.1), "deadline_s": Float(minimum=0.1)}
DNS_DEFAULTS = {"resolver": None, "timeout_s": 5.0, "deadline_s": 20.0}


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
    Setting("decode", LimitsSection(_DECODE_SETTINGS, DECODE_DEFAULTS), DECODE_DEFAULTS,
            "limits of the walk over MIME parts and archives (see docs/decoding.md)"),
    Setting("file_type_map", FileTypeMap(), [],
            "[regex, short type] pairs tried on libmagic's description before the shipped table"),
    Setting("banned_rules", BannedRules(), {},
            "banned rule sets by name; DEFAULT, NO-EXE, ALLOW_EXE, NO-DISK-IMAGES are shipped"),
    Setting("av_scanners", ScannerList(), [],
            "virus scanners (clamd), all run in order; none configured: no virus scanning"),
    Setting("av_scanners_backup", ScannerList(), [],
            "scanners tried in order, until one answers, only when every primary failed"),
    Setting("first_infected_stops_scan", Bool(), False,
            "stop at the first primary scanner that finds a virus (default: every primary runs)"),
    Setting("spam_scanners", SpamdList(), [],
            "spamd daemons, tried in order until one answers; none configured: no spam checking"),
    Setting("spam_cache", Section(_SPAM_CACHE_SETTINGS, SPAM_CACHE_DEFAULTS), SPAM_CACHE_DEFAULTS,
            "reuse spamd's verdict for the same message for ttl_s seconds (0: off), at most max_entries kept"),
    Setting("resubmit", Section(_RESUBMIT_SETTINGS, RESUBMIT_DEFAULTS), RESUBMIT_DEFAULTS,
            "the MTA's loopback listener that does not filter (contrib/postfix: inet:127.0.0.1:10025): "
            "recipients needing other header edits are re-submitted there; socket null: not used"),
    Setting("quarantine", Section(_QUARANTINE_SETTINGS, QUARANTINE_DEFAULTS), QUARANTINE_DEFAULTS,
            "the quarantine: dir (default STATE_DIR/quarantine), subdir_levels, gzip, database "
            "(SQLAlchemy URL; default sqlite under state_dir), who may release without the secret_id"),
    Setting("notify", Section(_NOTIFY_SETTINGS, NOTIFY_DEFAULTS), NOTIFY_DEFAULTS,
            "notifications (sent to resubmit.socket): queue_dir (default STATE_DIR/notify), templates_dir, "
            "From: header lines, envelope sender of admin notices ('' is <>), retry_s, max_age_s"),
    Setting("sql_log", Section(_SQL_LOG_SETTINGS, SQL_LOG_DEFAULTS), SQL_LOG_DEFAULTS,
            "log every message in amavis's msgs/msgrcpt/maddr tables: enabled, database (default: "
            "quarantine.database), queue_max, retry_s"),
    Setting("authserv_id", AuthservId(nullable=True), None,
            "our name in Authentication-Results (default: myhostname); arriving fields with it are removed"),
    Setting("dkim_signing_keys", SigningKeys(), {},
            "DKIM keys by From domain for dkim_sign: {DOMAIN: {selector, key_file, algorithm, headers, oversign}}"),
    Setting("arc_sealing", ArcSealing(), None,
            "the key banks with arc_seal seal with: {domain, selector, key_file, algorithm (rsa-sha256), headers, "
            "oversign}; null: no sealing"),
    Setting("dns", Section(_DNS_SETTINGS, DNS_DEFAULTS), DNS_DEFAULTS,
            "DNS for the authentication checks: resolver (name server addresses; null: /etc/resolv.conf), "
            "timeout_s (one lookup), deadline_s (all lookups of one message)"),
    Setting("author_to_policy_bank", Lookup("address", bank_names_from_text), None,
            "banks by the author (the one From address; keys as other address lookups: "
            "{'.paypal.com': WHITELIST}), loaded after the authentication check when a DKIM "
            "signature by the author's domain or a parent passed (amavis's @author_to_policy_bank_maps)"),
    Setting("auth_result_policy", StrMap(BankNames(), keys=RESULT_KEYS), {},
            "banks by authentication result ({'dmarc=fail': SUSPECT, 'spf=fail': [A, B]}): every key "
            "that matches loads its banks, in the order written, before the author's"),
    Setting("mynets_bank", Str(nullable=True), "MYNETS", "bank loaded when the client is in mynetworks"),
    Setting("auth_bank", Str(nullable=True), "AUTH", "bank loaded when the client authenticated (SMTP AUTH)"),
    Setting("myusers_bank", Str(nullable=True), "MYUSERS",
            "bank loaded when originating mail has a sender in local_domains"),
    Setting("event_log", Section(_EVENT_LOG_SETTINGS, EVENT_LOG_DEFAULTS), EVENT_LOG_DEFAULTS,
            "one JSON event per message (amavis's structured_report fields): target none, file, stdout or "
            "syslog; path (file; default STATE_DIR/events.jsonl); redact addresses and/or subjects"),
    Setting("control_socket", Str(nullable=True), "pymavis.ctl",
            "unix socket (mode 0600; relative to state_dir) where `pymavis status` and `pymavis stats` ask the "
            "running milter; null: none"),
    Setting("metrics", MetricsSection(_METRICS_SETTINGS, METRICS_DEFAULTS), METRICS_DEFAULTS,
            "Prometheus metrics over HTTP: listen HOST:PORT (null: off; loopback only unless "
            "allow_non_loopback: true)"),
)

# Banks a selector may load without a file defining them, and what they imply.
BUILTIN_BANKS = {"MYNETS": {"originating": True}, "AUTH": {"originating": True}, "MYUSERS": {}}
