"""Lookup tables and chains: amavisd-new's hash, ACL, regexp, IP and constant maps as values.

A setting that depends on the recipient, the sender or the client IP is configured as a
*lookup chain*: tables tried in order, the first table that knows an answer wins (amavis
README.lookups). `build_chain(spec, kind=...)` turns the already-parsed YAML of one setting
into a `LookupChain`; `chain.lookup_address(...)` / `chain.lookup_ip(...)` answer with a
`Hit(value, table)` or None (not found).

Address keys (`address_keys`) follow amavis's make_query_keys, in the SQL form where a
domain key carries a leading '@', so one key never means two things:
    user+ext@sub.dom.tld, user@sub.dom.tld, user+ext@, user@ (local recipients only),
    @sub.dom.tld, @.sub.dom.tld, @.dom.tld, @.tld, @.
Everything is lowercased (amavis's default: $localpart_is_case_sensitive is false). Angle
brackets are dropped and a quoted local part is unquoted (amavis looks up the raw form);
trailing dots leave the domain; an address literal (@[192.0.2.1]) is not split into parent
domains; an address without '@' is all local part. The null sender ("" or "<>") gives
"", "@", "@.". postmaster, mailer-daemon and double-bounce never lose an "extension".

Table semantics (amavis's, with the differences marked):
- map: the first address key present wins. A key without '@' is an amavis hash domain key
  ("example.com", ".example.com", ".") and is stored as "@" + key. A null value means
  "this table does not know": the search in it stops and the next table is tried.
- acl: strings, first match wins, '!' negates (found with False). "example.com" is that
  domain, ".example.com" the domain and its subdomains, "." everything, "user@example.com"
  the full address (extensions are not stripped). Not amavis: "user@" is a local part on
  local domains (as in a map; amavis would compare it with an address without a domain)
  and "@example.com" / "@.example.com" are read as the domain forms.
- regex: [pattern, value] pairs, re.search on the address (domain lowercased); not amavis:
  always case-insensitive. $1, ${1} or $(1) in a string value is replaced by the group.
- cidr: networks, first match wins in list order, '!' negates. IPv4 lives in IPv6's
  ::ffff:0:0/96, so mapped addresses match IPv4 entries, "0/0" matches every IPv4
  address and "::/0" every address; "10/8" is 10.0.0.0/8, masks may be 255.0.0.0.
- constant: always found.
- file: amavis read_hash (format hash, a map), read_array (format array, an acl; for IP
  lookups a cidr list) or a cidr list, read once when the chain is built (a config load
  or reload). '#' starts a comment except inside a quoted local part.

What can fail and how it shows:
- build_chain raises LookupSpecError(message, path) for a spec of the wrong shape, an
  unknown key, a value the caller's value_check refuses, a bad regex or network, an
  unreadable or malformed file. `.path` points inside the spec (e.g. (1, 'regex', 0)) so
  the config loader can name the YAML line; file problems also name file:line.
- A table that cannot answer raises LookupFailed; callers turn it into TEMPFAIL, never
  into "not found". No table here raises it yet: files are read at build time, so a file
  that disappears later changes nothing until the next reload. (SQL/Redis tables will.)
- An IP string that does not parse is "not found", not an error.

Limits: none of its own; lookup files are operator-supplied and read whole.
Configuration keys: none directly; callers pass the spec of each *_maps setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pymavis.spec import SpecError, suggest

__all__ = [
    "LookupFailed", "LookupSpecError", "Hit", "NOT_FOUND", "address_keys", "parse_ip",
    "ConstantTable", "MapTable", "AclTable", "RegexTable", "CidrTable", "FileTable",
    "LookupChain", "build_chain",
]


class LookupFailed(Exception):
    """a table's backend failed (file unreadable at lookup time, later SQL/Redis); callers
    turn it into TEMPFAIL, never into 'not found'."""


class LookupSpecError(SpecError):
    """a table spec in the configuration is wrong. .path is a tuple of sub-keys/indexes
    inside the spec (e.g. (1, 'regex', 0)) so the config loader can point at a YAML line;
    str() is the human message."""


@dataclass(frozen=True)
class Hit:
    value: object
    table: str  # short description for explain/debug output: "map#1", "file:/etc/x"
    key: str | None = field(default=None, compare=False)  # the key or entry that matched


NOT_FOUND = None

_QUOTED = r'"(?:\\.|[^"\\])*"'
_UNQUOTE_RE = re.compile(r'"|\\(.)|\\\Z', re.S)
_TOKEN_RE = re.compile(rf'(?:{_QUOTED}|[^\s"])+', re.S)  # one word; spaces only in quotes
_BEFORE_COMMENT_RE = re.compile(rf'(?:{_QUOTED}|[^#"])*', re.S)
_HASH_LINE_RE = re.compile(rf'((?:{_QUOTED}|[^\s"])+)(?:\s+(.*))?', re.S)
_RHS_REF_RE = re.compile(r"\$(?:(\d+)|\{(\d+)\}|\((\d+)\))")
_SHORT_V4_RE = re.compile(r"\d+(?:\.\d+){0,2}")
_NEVER_SPLIT = frozenset({"postmaster", "mailer-daemon", "double-bounce"})
_V4_MAPPED = 0xFFFF << 32


def _unquote(text: str) -> str:
    return _UNQUOTE_RE.sub(lambda m: m.group(1) or "", text) if '"' in text else text


def _split(address: str) -> tuple[str, str, bool]:
    """(local part, domain, had '@'): raw form, domain lowercased without trailing dots."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    local, at, domain = a.rpartition("@")
    if not at:
        local, domain = a, ""
    return _unquote(local), domain.lower().rstrip("."), bool(at)


def _split_localpart(local: str, delimiter: str | None) -> tuple[str, str]:
    """(user, extension with its delimiter), as amavis's split_localpart."""
    if not delimiter or local in _NEVER_SPLIT:
        return local, ""
    if delimiter == "-" and re.search(r"^owner-.|.-request\Z", local, re.S):
        return local, ""
    i = local.find(delimiter, 1)  # never leave an empty user part
    return (local, "") if i < 0 else (local[:i], local[i:])


def address_keys(address: str, *, delimiter: str | None = "+", is_local: bool) -> list[str]:
    """The map keys for an envelope address, most specific first (see the module header)."""
    local, domain, has_at = _split(address)
    local = local.lower()
    user, ext = _split_localpart(local, delimiter)
    keys = [f"{local}@{domain}" if has_at else local,  # the address itself ("" for <>)
            f"{user}{ext}@{domain}", f"{user}@{domain}"]
    if is_local:  # a bare local part means something only on our own domains
        keys += [f"{user}{ext}@", f"{user}@"]
    keys.append("@" + domain)
    if domain.startswith("["):  # an address literal has no parent domains
        keys.append("@.")
    else:
        d = domain
        while True:
            keys.append("@." + d)
            if not d:
                break
            d = d.partition(".")[2]
    return list(dict.fromkeys(keys))


def parse_ip(text: str):
    """An IPv4Address/IPv6Address from what an MTA reports ("192.0.2.1", "[::1]",
    "IPv6:::1", "fe80::1%eth0"); IPv4-mapped IPv6 comes back as IPv4. None if unparsable."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    if s[:5].lower() == "ipv6:":
        s = s[5:]
    try:
        ip = ipaddress.ip_address(s.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _as_v6(ip) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(_V4_MAPPED | int(ip)) if ip.version == 4 else ip


def _negation(text: str) -> tuple[bool, str]:
    body = text.strip()
    bare = body.lstrip("!")
    return (len(body) - len(bare)) % 2 == 1, bare.strip()


def _parse_network(text: str) -> ipaddress.IPv6Network:
    addr, slash, mask = text.partition("/")
    addr = addr.strip()
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    if addr[:5].lower() == "ipv6:":
        addr = addr[5:]
    if slash and _SHORT_V4_RE.fullmatch(addr):  # amavis's "0/0", "10/8"
        addr += ".0" * (3 - addr.count("."))
    try:
        net = ipaddress.ip_network(f"{addr}/{mask.strip()}" if slash else addr, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network"
                         " (write e.g. 10.0.0.0/8, 192.0.2.1, [::1] or 2001:db8::/32)") from None
    if net.version == 4:
        return ipaddress.IPv6Network((_V4_MAPPED | int(net.network_address), 96 + net.prefixlen))
    return net


def _acl_pattern(body: str) -> tuple[str, object]:
    """(kind, pattern) for an ACL entry without its '!'s; ValueError if it is not one."""
    if not body:
        raise ValueError("empty ACL entry")
    if not _TOKEN_RE.fullmatch(body):
        raise ValueError(f"{body!r} is not one address or domain"
                         " (a space outside quotes, or an unbalanced quote)")
    if "@" in body:
        local, _, domain = body.rpartition("@")
        local = _unquote(local).lower()
        if local and not domain:
            return "mailbox", local + "@"
        if local or not domain:  # "@" alone is the null sender, as in amavis
            return "address", (local, domain.lower().rstrip("."))
        body = domain
    body = body.lower()
    if body.startswith("."):
        return "subdomain", body[1:].rstrip(".")
    return "domain", body.rstrip(".")


def _map_key(raw: str) -> str:
    key = _unquote(raw.strip()).lower()
    return key if key == "" or "@" in key else "@" + key  # amavis hash domain key


@dataclass(frozen=True)
class ConstantTable:
    value: object
    describe: str = "constant"

    def lookup_address(self, address: str, keys: list[str]) -> Hit:
        return Hit(self.value, self.describe)

    def lookup_ip(self, ip) -> Hit:
        return Hit(self.value, self.describe)


@dataclass(frozen=True)
class MapTable:
    entries: Mapping[str, object]  # normalized keys; a None value stops the search here
    describe: str = "map"

    def lookup_address(self, address: str, keys: list[str]) -> Hit | None:
        for key in keys:
            if key in self.entries:
                value = self.entries[key]
                return None if value is None else Hit(value, self.describe, key)
        return None


@dataclass(frozen=True)
class AclTable:
    entries: tuple  # ((kind, pattern), value, entry text)
    describe: str = "acl"

    def lookup_address(self, address: str, keys: list[str]) -> Hit | None:
        local, domain, _ = _split(address)
        local = local.lower()
        for (kind, pattern), value, text in self.entries:
            if kind == "address":
                found = (local, domain) == pattern
            elif kind == "mailbox":
                found = pattern in keys
            elif kind == "domain":
                found = domain == pattern
            else:
                found = not pattern or domain == pattern or domain.endswith("." + pattern)
            if found:
                return Hit(value, self.describe, text)
        return None


@dataclass(frozen=True)
class RegexTable:
    entries: tuple  # (compiled pattern, value)
    describe: str = "regex"

    def lookup_address(self, address: str, keys: list[str]) -> Hit | None:
        local, domain, has_at = _split(address)
        subject = f"{local}@{domain}" if has_at else local
        for rx, value in self.entries:
            m = rx.search(subject)
            if m is None:
                continue
            if value is None:
                return None
            if isinstance(value, str) and "$" in value:
                value = _RHS_REF_RE.sub(lambda r: _group(m, r), value)
            return Hit(value, self.describe, rx.pattern)
        return None


def _group(m: re.Match, ref: re.Match) -> str:
    n = int(ref.group(1) or ref.group(2) or ref.group(3))
    return (m.group(n) or "") if 1 <= n <= m.re.groups else ""


@dataclass(frozen=True)
class CidrTable:
    entries: tuple  # (IPv6Network, value, entry text); IPv4 as ::ffff:0:0/96
    describe: str = "cidr"

    def lookup_ip(self, ip) -> Hit | None:
        v6 = _as_v6(ip)
        for net, value, text in self.entries:
            if v6 in net:
                return Hit(value, self.describe, text)
        return None

    def lookup_ip_str(self, text: str) -> Hit | None:
        ip = parse_ip(text)
        return None if ip is None else self.lookup_ip(ip)


@dataclass(frozen=True)
class FileTable:
    path: str
    format: str  # hash, array or cidr
    table: MapTable | AclTable | CidrTable  # what the file held when it was read
    describe: str = ""

    def lookup_address(self, address: str, keys: list[str]) -> Hit | None:
        return self.table.lookup_address(address, keys)

    def lookup_ip(self, ip) -> Hit | None:
        return self.table.lookup_ip(ip)


@dataclass(frozen=True)
class LookupChain:
    tables: tuple = ()

    def lookup_address(self, address: str, *, delimiter: str | None = "+",
                       is_local: bool) -> Hit | None:
        if not self.tables:
            return None
        if isinstance(self.tables[0], ConstantTable):   # no keys needed (most settings)
            return self.tables[0].lookup_address(address, [])
        keys = address_keys(address, delimiter=delimiter, is_local=is_local)
        for table in self.tables:
            hit = table.lookup_address(address, keys)
            if hit is not None:
                return hit
        return None

    def lookup_ip(self, ip) -> Hit | None:
        if isinstance(ip, str):
            ip = parse_ip(ip)
            if ip is None:
                return None
        for table in self.tables:
            hit = table.lookup_ip(ip)
            if hit is not None:
                return hit
        return None

    def value(self, address: str, *, default, delimiter: str | None = "+", is_local: bool):
        hit = self.lookup_address(address, delimiter=delimiter, is_local=is_local)
        return default if hit is None else hit.value

    def is_constant(self) -> bool:
        return bool(self.tables) and isinstance(self.tables[0], ConstantTable)


# --- building chains from YAML -------------------------------------------------------

_TABLE_KINDS = ("map", "acl", "regex", "cidr", "constant", "file")
_KIND_TABLES = {"address": ("map", "acl", "regex", "constant", "file"),
                "ip": ("cidr", "constant", "file")}
_FILE_FORMATS = {"address": ("hash", "array"), "ip": ("cidr", "array")}
_SCALARS = (str, int, float, bool)


def _did_you_mean(word, choices, cutoff: float = 0.6) -> str:
    return suggest(word, choices, cutoff)


def build_chain(spec, *, kind: str, value_check: Callable | None = None,
                base_dir: str | None = None) -> LookupChain:
    """The LookupChain for one setting's YAML spec; LookupSpecError if it is wrong.

    spec: None (never found); a scalar (a constant; for kind "ip" a string is one CIDR
    entry); a list of strings (one acl, or cidr for kind "ip"); a mapping with one of
    map/acl/regex/cidr/constant/file (file may add format: hash|array|cidr); any other
    mapping (a map); or a list of those, tried in order.
    value_check(value) -> converted value, raising ValueError on a bad one.
    """
    if kind not in _KIND_TABLES:
        raise ValueError(f"kind must be 'address' or 'ip', not {kind!r}")
    builder = _Builder(kind, value_check or (lambda v: v), base_dir)
    if spec is None:
        return LookupChain(())
    if isinstance(spec, list) and not all(isinstance(item, str) for item in spec):
        for i, item in enumerate(spec):
            if isinstance(item, str):
                raise LookupSpecError(
                    f"this list mixes plain strings with tables; write either a list of strings"
                    f" (one {'cidr' if kind == 'ip' else 'acl'} list) or a list of tables"
                    f" (mappings such as {{map: ...}}, lists, or constants): put the strings"
                    f" in their own list, or write a string constant as {{constant: {item!r}}}",
                    (i,))
        return LookupChain(tuple(builder.table(item, (i,), i + 1) for i, item in enumerate(spec)))
    return LookupChain((builder.table(spec, (), 1),))


@dataclass(frozen=True)
class _Builder:
    kind: str
    value_check: Callable
    base_dir: str | None

    def check(self, value, path: tuple, where: str = ""):
        try:
            return self.value_check(value)
        except ValueError as e:
            raise LookupSpecError(f"{where}bad value {value!r}: {e}", path) from e

    def table(self, spec, path: tuple, n: int):
        if spec is None:
            raise LookupSpecError("empty table in the list; remove it", path)
        if isinstance(spec, str) and self.kind == "ip":
            return CidrTable(self.entries([(spec, path, "")], _parse_network), f"cidr#{n}")
        if isinstance(spec, _SCALARS):
            return ConstantTable(self.check(spec, path), f"constant#{n}")
        if isinstance(spec, list):
            return self.list_table(spec, path, n)
        if not isinstance(spec, dict):
            raise LookupSpecError(f"a lookup table cannot be a {type(spec).__name__}", path)
        kinds = [k for k in spec if k in _TABLE_KINDS]
        if not kinds:
            return self.map(spec, path, f"map#{n}")
        if len(kinds) > 1:
            raise LookupSpecError(f"one table has one kind, this one has {kinds[0]!r} and"
                                  f" {kinds[1]!r}; to chain tables, make a list of them",
                                  path + (kinds[1],))
        tk = kinds[0]
        for key in spec:
            if key != tk and not (tk == "file" and key == "format"):
                hint = _did_you_mean(key, _TABLE_KINDS + ("format",))
                if "'format'" in hint and tk != "file":
                    hint += "; format goes only with file"
                raise LookupSpecError(f"unknown key {key!r} in a table of kind {tk!r}{hint}",
                                      path + (key,))
        if tk not in _KIND_TABLES[self.kind]:
            use = "cidr" if self.kind == "ip" else "map, acl or regex"
            raise LookupSpecError(f"a table of kind {tk!r} cannot do {self.kind} lookups;"
                                  f" use {use}", path + (tk,))
        body, where = spec[tk], path + (tk,)
        if tk == "constant":
            return ConstantTable(self.check(body, where), f"constant#{n}")
        if tk == "map":
            if not isinstance(body, dict):
                raise LookupSpecError("map: wants a mapping of address or domain to value", where)
            return self.map(body, where, f"map#{n}")
        if tk == "regex":
            return self.regex(body, where, f"regex#{n}")
        if tk == "file":
            return self.file(body, spec.get("format"), path)
        if not isinstance(body, list):
            raise LookupSpecError(f"{tk}: wants a list of strings", where)
        return self.list_table(body, where, n)

    def list_table(self, items: list, path: tuple, n: int):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise LookupSpecError(f"an acl or cidr list holds strings only;"
                                      f" item {i} is {item!r}", path + (i,))
        items = [(item, path + (i,), "") for i, item in enumerate(items)]
        if self.kind == "ip":
            return CidrTable(self.entries(items, _parse_network), f"cidr#{n}")
        return AclTable(self.entries(items, _acl_pattern), f"acl#{n}")

    def map(self, spec: dict, path: tuple, describe: str) -> MapTable:
        entries: dict = {}
        for raw, value in spec.items():
            if not isinstance(raw, str):
                raise LookupSpecError(f"map key {raw!r} is not a string; quote it", path + (raw,))
            stripped = raw.strip()
            if stripped == "format":
                raise LookupSpecError("format goes only with file", path + (raw,))
            if stripped and "@" not in stripped and "." not in stripped:
                # a misspelt table kind would otherwise become a domain key; 0.7 lets
                # single-label domains such as "intranet" through
                hint = _did_you_mean(stripped, _TABLE_KINDS + ("format",), cutoff=0.7)
                if hint:
                    raise LookupSpecError(f"unknown table kind {raw!r}{hint}", path + (raw,))
            key = _map_key(raw)
            if key in entries:
                raise LookupSpecError(f"duplicate map key {raw!r} (keys are compared"
                                      " lowercased, and 'example.com' is '@example.com')",
                                      path + (raw,))
            entries[key] = None if value is None else self.check(value, path + (raw,))
        return MapTable(MappingProxyType(entries), describe)

    def entries(self, items: list, parse: Callable) -> tuple:
        """(pattern, value, text) for acl/cidr entries, '!' negating; items are
        (entry text, spec path, "file:line: " or ""), parse(body) -> pattern."""
        entries = []
        for text, path, where in items:
            negated, body = _negation(text)
            try:
                pattern = parse(body)
            except ValueError as e:
                raise LookupSpecError(f"{where}{e}", path) from None
            entries.append((pattern, self.check(not negated, path, where), text))
        return tuple(entries)

    def regex(self, spec, path: tuple, describe: str) -> RegexTable:
        if not isinstance(spec, list):
            raise LookupSpecError("regex: wants a list of [pattern, value] pairs", path)
        entries = []
        for i, item in enumerate(spec):
            if isinstance(item, str):
                item = [item]
            if not (isinstance(item, list) and len(item) in (1, 2) and isinstance(item[0], str)):
                raise LookupSpecError(f"regex item {i} is {item!r}; write 'pattern' or"
                                      " [pattern, value]", path + (i,))
            try:
                rx = re.compile(item[0], re.IGNORECASE)
            except re.error as e:
                raise LookupSpecError(f"regex item {i}: bad pattern {item[0]!r}: {e}",
                                      path + (i,)) from None
            value = item[1] if len(item) == 2 else True
            entries.append((rx, None if value is None else self.check(value, path + (i, 1))))
        return RegexTable(tuple(entries), describe)

    def file(self, name, fmt, path: tuple) -> FileTable:
        where = path + ("file",)
        if not isinstance(name, str) or not name.strip():
            raise LookupSpecError("file: wants the path of a lookup file", where)
        formats = _FILE_FORMATS[self.kind]
        fmt = formats[0] if fmt is None else fmt
        if fmt not in formats:
            raise LookupSpecError(f"format {fmt!r} is not one of {', '.join(formats)} for"
                                  f" {self.kind} lookups{_did_you_mean(fmt, formats)}",
                                  path + ("format",))
        filename = name.strip()
        if self.base_dir and not os.path.isabs(filename):
            filename = os.path.join(self.base_dir, filename)
        describe = f"file:{filename}"
        lines = _file_lines(filename, where)
        items = [(text, where, f"{filename}:{n}: ") for n, text in lines]
        if fmt == "hash":
            table = self.hash_file(filename, lines, where, describe)
        elif self.kind == "address":
            table = AclTable(self.entries(items, _acl_pattern), describe)
        else:
            table = CidrTable(self.entries(items, _parse_network), describe)
        return FileTable(filename, fmt, table, describe)

    def hash_file(self, filename: str, lines: list, path: tuple, describe: str) -> MapTable:
        entries: dict = {}
        first_line: dict = {}
        for n, text in lines:
            m = _HASH_LINE_RE.fullmatch(text)  # matches: text is stripped, its quotes balance
            key = _map_key(m.group(1))
            if key in entries:
                raise LookupSpecError(f"{filename}:{n}: duplicate key {m.group(1)!r}"
                                      f" (first on line {first_line[key]})", path)
            value = m.group(2) if m.group(2) else True  # amavis: no value means true
            entries[key] = self.check(value, path, f"{filename}:{n}: ")
            first_line[key] = n
        return MapTable(MappingProxyType(entries), describe)


def _file_lines(filename: str, path: tuple) -> list[tuple[int, str]]:
    """(line number, text) of each entry: comments, blank lines and outer spaces dropped."""
    try:
        with open(filename, encoding="utf-8") as f:
            content = f.read()
    except OSError as e:
        raise LookupSpecError(f"cannot read lookup file {filename}: {e.strerror or e}",
                              path) from e
    except UnicodeDecodeError as e:
        raise LookupSpecError(f"lookup file {filename} is not UTF-8: {e}", path) from e
    lines = []
    for n, raw in enumerate(content.splitlines(), 1):
        m = _BEFORE_COMMENT_RE.match(raw)
        if raw[m.end():].startswith('"'):
            raise LookupSpecError(f"{filename}:{n}: unbalanced quote", path)
        text = m.group(0).strip()
        if text:
            lines.append((n, text))
    return lines
