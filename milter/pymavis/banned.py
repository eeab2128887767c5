"""Banned content: named rule sets of allow/deny rules over the parts of a walk.

amavisd-new's `%banned_rules`, `$banned_filename_re` and `$banned_namepath_re`, as data.
A rule set is an ordered list of rules; a rule is `allow` or `deny` with matchers, all of
which must match the part:

    name        regex, searched in the decoded file name (case-insensitive)
    ext         extensions; compared with the name's LAST extension, lowercased, after
                trailing dots and spaces are stripped ("a.EXE. ." has extension "exe")
    double_ext  extensions; as `ext`, but only when an earlier extension holding a letter
                precedes it ("invoice.pdf.exe", "photo.jpg      .scr"; not "setup-1.2.exe")
    declared    regex, searched in the declared MIME type ("application/zip")
    detected    short types from libmagic ("exe-ms", "dll", "zip", ...; decode/types.py)
    path        regex, searched in the part's amavis path chain, its ancestors and itself
                joined with " | ": "P=p002,L=1/2,M=application/zip,T=zip,N=a.zip | P=p003,..."
    within      matchers (any of the keys above), true when ANY ancestor matches them:
                `allow: {within: {detected: [tar]}}` allows everything inside a tar

All regexes are case-insensitive and unanchored (re.search), like amavis's qr''i. A part
without a name matches no `name`/`ext`/`double_ext`; the same for a missing declared or
detected type. An empty matcher mapping (`allow: {}`) matches every part.

Order of decisions: for each part (in walk order, containers before their members), the
rule sets apply in the order given (amavis's banned_filename_maps "NO-EXE,DEFAULT"); in a
set the first rule that matches decides; a set where no rule matches has no opinion and the
next set is asked; a part no set decides is not banned. The first denied part makes the
message BANNED, with that part's path chain as the reason.

Differences from amavis, on purpose:
- amavis matches $banned_filename_re against each level of a part's path from the top down
  and lets the first level with a match decide, so `[qr'^\\.tar$' => 0]` silently allows a
  Windows executable inside a tar. Here a rule looks at the part itself (and `within` at its
  ancestors), so DEFAULT can deny exe-ms inside a tar and still allow `build.bat` there -
  what amavis's own $banned_namepath_re example does.
- Names keep bidi and control characters (decode keeps them): rules look for them.

Configuration: `build_rule_sets(spec)` takes the YAML mapping {SET: [rule, ...]} (which
configuration key holds it, and banned_filename_maps, are the config schema's business).
Shipped sets: DEFAULT (amavis's recommended $banned_filename_re, extended), NO-EXE,
ALLOW_EXE (amavis's example), NO-DISK-IMAGES (optional; ISO/IMG/VHD attachments that
strip Windows' mark of the web).

What can fail: only building. A wrong spec raises RuleSpecError with the path of keys and
indexes inside the spec and, for unknown keys, the nearest known one. Evaluation is pure and
does not raise (regexes are compiled at build time). Limits: none of its own; the walk's
limits bound the number of parts, and evaluation is O(parts x depth x rules).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pymavis.categories import Ccat, Finding
from pymavis.decode import Part
from pymavis.spec import SpecError, suggest

__all__ = [
    "DEFAULT_RULE_SETS",
    "DEFAULT_SPEC",
    "BannedResult",
    "Match",
    "Rule",
    "RuleSet",
    "RuleSpecError",
    "build_rule_sets",
    "evaluate",
    "extension",
    "path_chain",
    "to_finding",
]


class RuleSpecError(SpecError):
    """A banned-rules spec is wrong. .path is the tuple of keys/indexes inside the spec
    (e.g. ("DEFAULT", 3, "deny", "name")) so the config loader can point at a YAML line;
    str() is the human message."""


# --- matching ------------------------------------------------------------------------


def _basename(name: str) -> str:
    # archive members carry directories ("foto/expander.exe"); Windows splits on both
    return re.split(r"[/\\]", name)[-1]


def extension(name: str | None) -> str | None:
    """The last extension as Windows sees it: trailing dots and spaces dropped, lowercased."""
    if not name:
        return None
    base = re.sub(r"[.\s]+$", "", _basename(name))
    if "." not in base:
        return None
    ext = base.rsplit(".", 1)[1].strip().lower()
    return ext or None


def _has_earlier_extension(name: str) -> bool:
    """amavis's double-extension test: an extension with a letter before the last one."""
    base = re.sub(r"[.\s]+$", "", _basename(name))
    pieces = base.split(".")
    # pieces[0] is the stem; pieces[-1] the last extension
    return any(re.search(r"[^\W\d_]", piece) for piece in pieces[1:-1])


@dataclass(frozen=True)
class Match:
    """Matchers of one rule; None means "not given". All given ones must match."""

    name: re.Pattern | None = None
    ext: frozenset[str] | None = None
    double_ext: frozenset[str] | None = None
    declared: re.Pattern | None = None
    detected: frozenset[str] | None = None
    path: re.Pattern | None = None
    within: Match | None = None

    def matches(self, part: Part, ancestors: Sequence[Part], chain: str) -> bool:
        if self.name is not None and (not part.name or not self.name.search(part.name)):
            return False
        if self.ext is not None and extension(part.name) not in self.ext:
            return False
        if self.double_ext is not None and not (
            extension(part.name) in self.double_ext and _has_earlier_extension(part.name or "")
        ):
            return False
        if self.declared is not None and (not part.declared_type or not self.declared.search(part.declared_type)):
            return False
        if self.detected is not None and part.detected not in self.detected:
            return False
        if self.path is not None and not self.path.search(chain):
            return False
        if self.within is not None and not any(
            self.within.matches(a, ancestors[:i], path_chain([*ancestors[:i], a]))
            for i, a in enumerate(ancestors)
        ):
            return False
        return True


@dataclass(frozen=True)
class Rule:
    action: str  # "allow" | "deny"
    match: Match
    why: str = ""  # the operator's note, for logs and `pymavis scan`


@dataclass(frozen=True)
class RuleSet:
    name: str
    rules: tuple[Rule, ...]

    def decide(self, part: Part, ancestors: Sequence[Part], chain: str) -> tuple[int, Rule] | None:
        """The first rule matching `part` (its index and itself), or None: no opinion."""
        for index, rule in enumerate(self.rules):
            if rule.match.matches(part, ancestors, chain):
                return index, rule
        return None


@dataclass(frozen=True)
class BannedResult:
    part: Part
    chain: str  # amavis's part path: ancestors and the part, " | "-joined
    rule_set: str
    rule_index: int
    rule: Rule

    @property
    def rule_ref(self) -> str:
        return f"{self.rule_set}[{self.rule_index}]"


def path_chain(parts: Iterable[Part]) -> str:
    return " | ".join(p.part_path() for p in parts)


def _ancestors(part: Part, by_depth: Mapping[str, Part]) -> list[Part]:
    steps = part.depth_path.split("/")
    found = []
    for n in range(1, len(steps)):
        parent = by_depth.get("/".join(steps[:n]))
        if parent is not None:
            found.append(parent)
    return found


def evaluate(parts: Iterable[Part], rule_sets: Sequence[RuleSet]) -> BannedResult | None:
    """The first part (walk order) that the first deciding rule set denies, or None."""
    parts = list(parts)
    by_depth = {p.depth_path: p for p in parts}
    for part in parts:
        ancestors = _ancestors(part, by_depth)
        chain = path_chain([*ancestors, part])
        for rule_set in rule_sets:
            decision = rule_set.decide(part, ancestors, chain)
            if decision is None:
                continue
            index, rule = decision
            if rule.action == "deny":
                return BannedResult(part, chain, rule_set.name, index, rule)
            break
    return None


def to_finding(result: BannedResult, rcpts: frozenset | None = None) -> Finding:
    """The BANNED finding for `rcpts` (None: every recipient)."""
    return Finding(
        check="banned",
        ccat=Ccat.BANNED,
        detail=result.chain,
        rcpts=rcpts,
        values=(("banned_part", result.chain), ("banned_rule", result.rule_ref), ("banned_why", result.rule.why)),
    )


# --- building from the configuration ------------------------------------------------

_ACTIONS = ("allow", "deny")
_RULE_KEYS = (*_ACTIONS, "why")
_MATCH_KEYS = ("name", "ext", "double_ext", "declared", "detected", "path", "within")


def _suggest(word, choices) -> str:
    return suggest(word, choices, 0.6)


def _kind(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _regex(value, where: tuple) -> re.Pattern:
    if not isinstance(value, str) or not value:
        raise RuleSpecError(f"expected a regular expression (a non-empty string), got {_kind(value)} {value!r}", where)
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise RuleSpecError(f"bad regular expression {value!r}: {exc}", where) from None


def _words(value, where: tuple, strip_dot: bool) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise RuleSpecError(f"expected a non-empty list of strings, got {_kind(value)} {value!r}", where)
    words = set()
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip(". " if strip_dot else " "):
            raise RuleSpecError(f"expected a non-empty string, got {_kind(item)} {item!r}", (*where, i))
        words.add(item.strip().lstrip(".").lower() if strip_dot else item.strip().lower())
    return frozenset(words)


def _match(spec, where: tuple) -> Match:
    if not isinstance(spec, dict):
        raise RuleSpecError(f"expected a mapping of matchers ({', '.join(_MATCH_KEYS)}), got {_kind(spec)} {spec!r}",
                            where)
    for key in spec:
        if key not in _MATCH_KEYS:
            raise RuleSpecError(f"unknown matcher {key!r}{_suggest(key, _MATCH_KEYS)}; known: {', '.join(_MATCH_KEYS)}",
                                (*where, key))
    get = spec.get
    return Match(
        name=_regex(get("name"), (*where, "name")) if "name" in spec else None,
        ext=_words(get("ext"), (*where, "ext"), strip_dot=True) if "ext" in spec else None,
        double_ext=_words(get("double_ext"), (*where, "double_ext"), strip_dot=True) if "double_ext" in spec else None,
        declared=_regex(get("declared"), (*where, "declared")) if "declared" in spec else None,
        detected=_words(get("detected"), (*where, "detected"), strip_dot=False) if "detected" in spec else None,
        path=_regex(get("path"), (*where, "path")) if "path" in spec else None,
        within=_match(get("within"), (*where, "within")) if "within" in spec else None,
    )


def _rule(spec, where: tuple) -> Rule:
    if not isinstance(spec, dict):
        raise RuleSpecError(f"expected a rule ({{allow: {{...}}}} or {{deny: {{...}}}}), got {_kind(spec)} {spec!r}",
                            where)
    for key in spec:
        if key not in _RULE_KEYS:
            raise RuleSpecError(f"unknown key {key!r}{_suggest(key, _RULE_KEYS + _MATCH_KEYS)}; a rule has "
                                f"allow or deny (and optionally why)", (*where, key))
    actions = [key for key in _ACTIONS if key in spec]
    if len(actions) != 1:
        raise RuleSpecError("a rule needs exactly one of allow or deny", where)
    why = spec.get("why", "")
    if not isinstance(why, str):
        raise RuleSpecError(f"expected a string, got {_kind(why)} {why!r}", (*where, "why"))
    action = actions[0]
    return Rule(action, _match(spec[action], (*where, action)), why)


def build_rule_sets(spec) -> dict[str, RuleSet]:
    """{SET: [rule, ...]} as parsed from YAML -> {SET: RuleSet}. Raises RuleSpecError."""
    if not isinstance(spec, dict):
        raise RuleSpecError(f"expected a mapping of rule set names to lists of rules, got {_kind(spec)}", ())
    sets = {}
    for name, rules in spec.items():
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise RuleSpecError(f"a rule set name must be a non-empty string without commas, got {name!r}", (name,))
        if not isinstance(rules, list):
            raise RuleSpecError(f"expected a list of rules, got {_kind(rules)} {rules!r}", (name,))
        sets[name] = RuleSet(name, tuple(_rule(rule, (name, i)) for i, rule in enumerate(rules)))
    return sets


# --- shipped rule sets -----------------------------------------------------------------

# amavis's long list of banned extensions (amavisd.conf-sample), less the data formats that
# people mail every day (crt certificates, emf/wmf images, ini, lib, mdb/mdt Access data,
# pcd Photo CD), plus what Windows runs today: PowerShell and Monad scripts, Explorer
# command and settings files, ClickOnce and MSIX/AppX installers, Java archives.
WINDOWS_EXECUTABLE_EXTS = [
    "ade", "adp", "app", "bas", "bat", "chm", "cmd", "com", "cpl", "dll", "exe", "fxp", "grp", "hlp",
    "hta", "inf", "ins", "isp", "js", "jse", "lnk", "mda", "mde", "mdw", "mdz", "msc", "msi", "msp",
    "mst", "ocx", "ops", "pif", "prg", "reg", "scr", "sct", "shb", "shs", "sys", "vb", "vbe", "vbs",
    "vxd", "wsc", "wsf", "wsh",
    # modern additions
    "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "psd1", "psm1", "msh", "msh1", "msh2", "mshxml",
    "msh1xml", "msh2xml", "scf", "settingcontent-ms", "application", "appref-ms", "gadget", "appx",
    "appxbundle", "msix", "msixbundle", "jar", "xbap", "xll", "url",
]

DEFAULT_SPEC: dict = {
    "DEFAULT": [
        # amavis: qr'^\.(exe-ms|dll)$' - a Windows executable by content, whatever its name
        {"deny": {"detected": ["exe-ms", "dll"]}, "why": "Windows executable (by content)"},
        # rfc2046 types that reassemble or fetch content we never see
        {"deny": {"declared": r"^message/(partial|external-body)$"}, "why": "message/partial or external-body"},
        # amavis: x-msdownload, x-msdos-program, hta
        {"deny": {"declared": r"^application/(x-msdownload|x-msdos-program|hta|x-ms-shortcut|x-ms-installer)$"},
         "why": "executable MIME type"},
        # disguises, never legitimate - banned inside Unix archives too
        {"deny": {"name": "[\u202a-\u202e\u2066-\u2069]"}, "why": "bidi control character in name (RTLO)"},
        {"deny": {"name": r"\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?"}, "why": "CLSID extension"},
        {"deny": {"double_ext": WINDOWS_EXECUTABLE_EXTS}, "why": "double extension"},
        {"deny": {"name": r"[.\s]$"}, "why": "trailing dot or space in name"},
        # amavis: [qr'^\.(rpm|cpio|tar)$' => 0] - Unix source archives hold build.bat, x.com...
        {"allow": {"within": {"detected": ["tar", "rpm", "cpio"]}}, "why": "inside a Unix archive"},
        {"deny": {"ext": WINDOWS_EXECUTABLE_EXTS}, "why": "Windows executable or script extension"},
    ],
    # every executable binary, not only Windows': put it before DEFAULT ("NO-EXE,DEFAULT")
    "NO-EXE": [
        {"deny": {"detected": ["exe-ms", "dll", "exe-unix", "exe-mac", "java", "jar"]}, "why": "executable"},
    ],
    # amavis's example: for recipients who take executables ("ALLOW_EXE,DEFAULT")
    "ALLOW_EXE": [
        {"allow": {"ext": ["exe", "vbs", "pif", "scr", "cpl", "bat", "cmd", "com"]}, "why": "executables allowed"},
        {"allow": {"detected": ["exe-ms", "dll"]}, "why": "executables allowed"},
    ],
    # optional: disk images open with a double click and drop the mark of the web
    "NO-DISK-IMAGES": [
        {"deny": {"detected": ["iso"]}, "why": "disk image"},
        {"deny": {"ext": ["iso", "img", "vhd", "vhdx", "udf"]}, "why": "disk image"},
    ],
}

DEFAULT_RULE_SETS: dict[str, RuleSet] = build_rule_sets(DEFAULT_SPEC)
