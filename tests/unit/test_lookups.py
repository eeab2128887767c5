"""Unit tests for pymavis.lookups: key order, each table kind, chains, files, spec errors."""

import ipaddress

import pytest

from pymavis.lookups import (
    AclTable, CidrTable, ConstantTable, FileTable, Hit, LookupChain, LookupFailed,
    LookupSpecError, MapTable, NOT_FOUND, RegexTable, address_keys, build_chain, parse_ip,
)

DOMAIN_KEYS = ["@sub.dom.tld", "@.sub.dom.tld", "@.dom.tld", "@.tld", "@."]

# --- address_keys --------------------------------------------------------------------

KEY_CASES = [
    ("ext-local", "user+ext@sub.dom.tld", "+", True,
     ["user+ext@sub.dom.tld", "user@sub.dom.tld", "user+ext@", "user@", *DOMAIN_KEYS]),
    ("ext-remote", "user+ext@sub.dom.tld", "+", False,
     ["user+ext@sub.dom.tld", "user@sub.dom.tld", *DOMAIN_KEYS]),
    ("plain-local", "user@sub.dom.tld", "+", True, ["user@sub.dom.tld", "user@", *DOMAIN_KEYS]),
    ("plain-remote", "user@sub.dom.tld", "+", False, ["user@sub.dom.tld", *DOMAIN_KEYS]),
    ("one-label-domain", "u@tld", "+", False, ["u@tld", "@tld", "@.tld", "@."]),
    ("case-folded", "User+Ext@Sub.DOM.tld", "+", False,
     ["user+ext@sub.dom.tld", "user@sub.dom.tld", *DOMAIN_KEYS]),
    ("trailing-dot", "user@sub.dom.tld.", "+", False, ["user@sub.dom.tld", *DOMAIN_KEYS]),
    ("angle-brackets", "<user@sub.dom.tld>", "+", False, ["user@sub.dom.tld", *DOMAIN_KEYS]),
    ("null-sender", "", "+", False, ["", "@", "@."]),
    ("null-sender-brackets", "<>", "+", True, ["", "@", "@."]),
    ("no-at-remote", "user", "+", False, ["user", "user@", "@", "@."]),
    ("no-at-ext-local", "user+x", "+", True, ["user+x", "user+x@", "user@", "@", "@."]),
    ("delimiter-none", "user+ext@dom.tld", None, True,
     ["user+ext@dom.tld", "user+ext@", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("delimiter-minus", "user-ext@dom.tld", "-", False,
     ["user-ext@dom.tld", "user@dom.tld", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("owner-not-split", "owner-list@dom.tld", "-", False,
     ["owner-list@dom.tld", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("request-not-split", "list-request@dom.tld", "-", False,
     ["list-request@dom.tld", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("postmaster-not-split", "mailer-daemon@dom.tld", "-", False,
     ["mailer-daemon@dom.tld", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("leading-delimiter-not-split", "+ext@dom.tld", "+", True,
     ["+ext@dom.tld", "+ext@", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("extension-from-first-delimiter", "a+b+c@dom.tld", "+", False,
     ["a+b+c@dom.tld", "a@dom.tld", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("quoted-localpart", '"Bob Dude"@dom.tld', "+", True,
     ["bob dude@dom.tld", "bob dude@", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("quoted-at-in-localpart", '"a@b"@dom.tld', "+", False,
     ["a@b@dom.tld", "@dom.tld", "@.dom.tld", "@.tld", "@."]),
    ("address-literal", "u@[192.0.2.1]", "+", False, ["u@[192.0.2.1]", "@[192.0.2.1]", "@."]),
]


@pytest.mark.parametrize("address,delimiter,is_local,expected",
                         [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_address_keys(address, delimiter, is_local, expected):
    assert address_keys(address, delimiter=delimiter, is_local=is_local) == expected


@pytest.mark.parametrize("address", ['"unbalanced@dom', "@@@", "a@b@c", '"', "\\", " "],
                         ids=["unbalanced-quote", "only-ats", "two-ats", "lone-quote",
                              "lone-backslash", "blank"])
def test_address_keys_odd_input_does_not_crash(address):
    keys = address_keys(address, is_local=True)
    assert keys[-1] == "@." and len(keys) == len(set(keys))


# --- single tables through build_chain ------------------------------------------------

def addr_value(spec, address, *, is_local=True, **kw):
    hit = build_chain(spec, kind="address", **kw).lookup_address(address, is_local=is_local)
    return None if hit is None else hit.value


MAP = {"user@dom.tld": "exact", "user@": "mailbox", "@dom.tld": "domain",
       "@.tld": "any-under-tld", "Boss@Example.COM": "cased"}
MAP_CASES = [
    ("full-address", "user@dom.tld", True, "exact"),
    ("extension-stripped", "user+x@dom.tld", True, "exact"),
    ("mailbox-local", "user@other.org", True, "mailbox"),
    ("mailbox-not-for-remote", "user@other.tld", False, "any-under-tld"),
    ("domain", "someone@dom.tld", True, "domain"),
    ("parent-domain", "someone@sub.dom.tld", False, "any-under-tld"),
    ("keys-lowercased", "BOSS@example.com", False, "cased"),
    ("not-found", "someone@example.org", False, None),
]


@pytest.mark.parametrize("address,is_local,expected", [c[1:] for c in MAP_CASES],
                         ids=[c[0] for c in MAP_CASES])
def test_map(address, is_local, expected):
    assert addr_value({"map": MAP}, address, is_local=is_local) == expected


@pytest.mark.parametrize("key", ["dom.tld", ".dom.tld", "."],
                         ids=["domain", "dot-domain", "dot"])
def test_map_amavis_hash_domain_keys_get_an_at(key):
    assert addr_value({key: 1}, "u@dom.tld", is_local=False) == 1


def test_map_null_value_stops_this_table_and_tries_the_next():
    spec = [{"map": {"u@dom.tld": None, "@dom.tld": "domain"}}, {"constant": "next"}]
    assert addr_value(spec, "u@dom.tld") == "next"


def test_map_null_sender_key():
    assert addr_value({"": "null", "@.": "other"}, "<>", is_local=False) == "null"
    assert addr_value({"@": "null", "@.": "other"}, "", is_local=False) == "null"


def test_map_hit_names_table_and_key():
    hit = build_chain([{"acl": ["x.org"]}, {"@.tld": 5}], kind="address").lookup_address(
        "u@a.tld", is_local=False)
    assert hit == Hit(5, "map#2") and hit.key == "@.tld"


ACL = ["me.ac.uk", "!.ac.uk", ".uk", "Boss@Corp.example", "!user@", "@other.example",
       "!@.neg.example", "!!double.example"]
ACL_CASES = [  # the README.lookups examples plus our additions
    ("exact-domain", "u@me.ac.uk", True, True),
    ("negated-subdomain", "u@you.ac.uk", True, False),
    ("negated-parent-itself", "u@ac.uk", True, False),
    ("subdomain", "u@them.co.uk", True, True),
    ("fall-through", "u@some.com", True, None),
    ("domain-not-subdomain", "u@x.me.ac.uk", True, False),
    ("full-address-case-insensitive", "BOSS@corp.EXAMPLE", True, True),
    ("full-address-keeps-extension", "boss+x@corp.example", True, None),
    ("mailbox-local-negated", "user+x@some.com", True, False),
    ("mailbox-not-for-remote", "user@some.com", False, None),
    ("at-domain-form", "u@other.example", True, True),
    ("at-dot-domain-form", "u@a.neg.example", True, False),
    ("double-negation", "u@double.example", True, True),
    ("trailing-dot-address", "u@them.co.uk.", True, True),
]


@pytest.mark.parametrize("address,is_local,expected", [c[1:] for c in ACL_CASES],
                         ids=[c[0] for c in ACL_CASES])
def test_acl(address, is_local, expected):
    assert addr_value(ACL, address, is_local=is_local) == expected


@pytest.mark.parametrize("acl,address,expected", [
    (["."], "u@any.where", True),
    (["!."], "u@any.where", False),
    (["."], "", True),
    (["@"], "", True),
    (["@"], "u@x.org", None),
    (['"bob dude"@x.org'], '"Bob Dude"@x.org', True),
], ids=["dot-matches-all", "not-dot", "dot-matches-null-sender", "at-is-null-sender",
        "at-not-others", "quoted-entry"])
def test_acl_special_entries(acl, address, expected):
    assert addr_value(acl, address, is_local=False) == expected


REGEX = [[r"^(.*)@example\.com$", "virus-${1}@example.com"], [r"[@.]ac\.uk$", 0],
         r"\.uk$", [r"^$", "null"], [r"^skip@", None], [r"^x(y)?@", "a$2b$(1)c$0"]]
REGEX_CASES = [
    ("substitution", "Joe@Example.COM", "virus-Joe@example.com"),
    ("value-zero", "u@you.ac.uk", 0),
    ("bare-pattern-true", "u@them.co.uk", True),
    ("null-sender", "", "null"),
    ("none-value-not-found", "skip@example.org", None),
    ("missing-groups-empty", "x@a.org", "abc"),
    ("no-match", "u@some.com", None),
]


@pytest.mark.parametrize("address,expected", [c[1:] for c in REGEX_CASES],
                         ids=[c[0] for c in REGEX_CASES])
def test_regex(address, expected):
    assert addr_value({"regex": REGEX}, address) == expected


def test_constant_always_found_and_is_constant():
    chain = build_chain(6.5, kind="address")
    assert chain.is_constant()
    assert chain.value("anyone@anywhere", default=0, is_local=False) == 6.5
    assert chain.lookup_ip("192.0.2.1") == Hit(6.5, "constant#1")


# --- IP lookups ------------------------------------------------------------------------

CIDR = ["!192.168.1.12", "172.16.3.3", "!172.16.3.0/255.255.255.0", "10/8", "172.16.0.0/12",
        "192.168.0.0/16", "!0.0.0.0/8", "!::", "127.0.0.0/8", "[::1]", "2001:db8::/32",
        "![fe80::]/10"]
CIDR_CASES = [  # the README.lookups example plus IPv6
    ("rfc1918", "192.168.7.1", True),
    ("negated-host", "192.168.1.12", False),
    ("host-before-negated-net", "172.16.3.3", True),
    ("negated-net", "172.16.3.4", False),
    ("short-prefix", "10.9.8.7", True),
    ("unspecified-v4", "0.0.0.0", False),
    ("unspecified-v6", "::", False),
    ("loopback-v4", "127.0.0.1", True),
    ("loopback-v6", "::1", True),
    ("v6-net", "2001:db8:1::5", True),
    ("v6-negated", "fe80::1", False),
    ("mapped-v4", "::ffff:10.1.2.3", True),
    ("bracketed", "[10.1.2.3]", True),
    ("postfix-ipv6-prefix", "IPv6:2001:db8::1", True),
    ("scoped-v6", "fe80::1%eth0", False),
    ("public-v4", "198.51.100.1", None),
    ("unparsable", "not-an-ip", None),
    ("empty", "", None),
]


@pytest.mark.parametrize("ip,expected", [c[1:] for c in CIDR_CASES],
                         ids=[c[0] for c in CIDR_CASES])
def test_cidr(ip, expected):
    hit = build_chain(CIDR, kind="ip").lookup_ip(ip)
    assert (None if hit is None else hit.value) == expected


@pytest.mark.parametrize("entry,ip,expected", [
    ("0/0", "203.0.113.9", True),
    ("0/0", "::ffff:203.0.113.9", True),
    ("0/0", "2001:db8::1", None),
    ("::/0", "203.0.113.9", True),
    ("::/0", "2001:db8::1", True),
    ("::ffff:10.0.0.0/104", "10.1.1.1", True),
    ("10.1.2.3/8", "10.200.0.1", True),
], ids=["zero-v4", "zero-v4-mapped", "zero-not-v6", "all-v6-includes-v4", "all-v6",
        "mapped-entry", "host-bits-masked"])
def test_cidr_whole_spaces(entry, ip, expected):
    hit = build_chain([entry], kind="ip").lookup_ip(ipaddress.ip_address(ip))
    assert (None if hit is None else hit.value) == expected


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("IPv6:::1", "::1"),
    ("::ffff:1.2.3.4", "1.2.3.4"), (" 192.0.2.1 ", "192.0.2.1"), ("unknown", None),
    ("010.0.0.1", None), ("[]", None),
], ids=["v4", "bracketed-v6", "postfix-ipv6", "mapped-unwrapped", "spaces", "word",
        "leading-zero", "empty-brackets"])
def test_parse_ip(text, expected):
    ip = parse_ip(text)
    assert (None if ip is None else str(ip)) == expected


def test_cidr_table_lookup_ip_str():
    table = build_chain(["10.0.0.0/8"], kind="ip").tables[0]
    assert isinstance(table, CidrTable)
    assert table.lookup_ip_str("[10.0.0.1]").value is True
    assert table.lookup_ip_str("garbage") is None


def test_ip_scalar_string_is_one_cidr_entry():
    chain = build_chain("127.0.0.0/8", kind="ip")
    assert not chain.is_constant()
    assert chain.lookup_ip("127.0.0.1") == Hit(True, "cidr#1")
    assert chain.lookup_ip("10.0.0.1") is NOT_FOUND


# --- chains ---------------------------------------------------------------------------

CHAIN = [{"map": {"boss@corp.example": 50}}, ["!.spam.example", ".example"],
         {"regex": [["^admin@", 7]]}, 3]
CHAIN_CASES = [
    ("map-first", "boss@corp.example", 50),
    ("acl-second", "u@corp.example", True),
    ("acl-negation-is-found", "u@x.spam.example", False),
    ("regex-third", "admin@other.org", 7),
    ("constant-last", "u@other.org", 3),
]


@pytest.mark.parametrize("address,expected", [c[1:] for c in CHAIN_CASES],
                         ids=[c[0] for c in CHAIN_CASES])
def test_chain_first_hit_wins(address, expected):
    assert addr_value(CHAIN, address) == expected


def test_chain_describes_tables_by_position():
    chain = build_chain(CHAIN, kind="address")
    assert [t.describe for t in chain.tables] == ["map#1", "acl#2", "regex#3", "constant#4"]
    assert not chain.is_constant()


def test_ip_chain_first_hit_wins():
    chain = build_chain([{"cidr": ["!10.0.0.1"]}, ["10.0.0.0/8"], {"constant": "other"}],
                        kind="ip")
    assert chain.lookup_ip("10.0.0.1") == Hit(False, "cidr#1")
    assert chain.lookup_ip("10.0.0.2") == Hit(True, "cidr#2")
    assert chain.lookup_ip("192.0.2.1") == Hit("other", "constant#3")
    assert chain.lookup_ip("bogus") is None


def test_empty_chain_never_finds():
    chain = build_chain(None, kind="address")
    assert chain.tables == () and not chain.is_constant()
    assert chain.value("u@x.org", default="dflt", is_local=True) == "dflt"
    assert build_chain([], kind="address").lookup_address("u@x.org", is_local=True) is None


def test_value_check_converts_values():
    def to_int(v):
        return int(v)
    chain = build_chain([{"@x.org": "42"}, 7], kind="address", value_check=to_int)
    assert chain.value("u@x.org", default=None, is_local=False) == 42


def test_chain_passes_delimiter():
    chain = build_chain({"a-b@x.org": 1, "a@x.org": 2}, kind="address")
    assert chain.value("a-b-c@x.org", default=0, delimiter="-", is_local=False) == 2
    assert chain.value("a-b@x.org", default=0, delimiter=None, is_local=False) == 1


def test_tables_are_frozen():
    chain = build_chain({"@x.org": 1}, kind="address")
    with pytest.raises(AttributeError):
        chain.tables = ()
    with pytest.raises(TypeError):
        chain.tables[0].entries["@y.org"] = 2


class FailingTable:
    describe = "broken"

    def lookup_address(self, address, keys):
        raise LookupFailed("backend down")


def test_lookup_failed_propagates_through_chain():
    chain = LookupChain((MapTable({}), FailingTable(), ConstantTable(1)))
    with pytest.raises(LookupFailed):
        chain.lookup_address("u@x.org", is_local=False)


# --- files ------------------------------------------------------------------------------

def write(tmp_path, text, name="table.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


HASH_FILE = """\
# whitelist, amavis read_hash style
user@dom.tld   5000000      # a comment
.dom.tld       some value with spaces
"a#b c"@x.org  quoted
bare@x.org
"""


@pytest.mark.parametrize("address,expected", [
    ("user+x@dom.tld", "5000000"),
    ("u@sub.dom.tld", "some value with spaces"),
    ('"a#b c"@x.org', "quoted"),
    ("BARE@x.org", True),
    ("u@other.org", None),
], ids=["value", "value-with-spaces", "hash-inside-quotes", "no-value-is-true", "absent"])
def test_hash_file(tmp_path, address, expected):
    path = write(tmp_path, HASH_FILE)
    assert addr_value({"file": str(path)}, address) == expected


def test_hash_file_value_check_converts_and_reports_line(tmp_path):
    path = write(tmp_path, "a@x.org 12\nb@x.org twelve\n")
    with pytest.raises(LookupSpecError) as e:
        build_chain({"file": str(path)}, kind="address", value_check=int)
    assert str(e.value).startswith(f"{path}:2: bad value 'twelve'")
    assert e.value.path == ("file",)


def test_file_relative_to_base_dir(tmp_path):
    write(tmp_path, "! .spam.example\n.example\n", name="acl.txt")
    chain = build_chain({"file": "acl.txt", "format": "array"}, kind="address",
                        base_dir=str(tmp_path))
    table = chain.tables[0]
    assert isinstance(table, FileTable) and isinstance(table.table, AclTable)
    assert table.describe == f"file:{tmp_path / 'acl.txt'}"
    hit = chain.lookup_address("u@a.spam.example", is_local=False)
    assert hit == Hit(False, f"file:{tmp_path / 'acl.txt'}")
    assert chain.value("u@a.example", default=None, is_local=False) is True


def test_cidr_file(tmp_path):
    path = write(tmp_path, "# mynetworks\n\n  !10.0.0.1  \n10.0.0.0/8 # lan\n[::1]\n")
    chain = build_chain([{"file": str(path)}], kind="ip")
    assert chain.tables[0].format == "cidr"
    assert [chain.lookup_ip(ip) is not None and chain.lookup_ip(ip).value
            for ip in ("10.0.0.1", "10.0.0.2", "::1", "192.0.2.1")] == [False, True, True, False]


def test_array_file_for_ip_is_a_cidr_list(tmp_path):
    path = write(tmp_path, "192.0.2.0/24\n")
    chain = build_chain({"file": str(path), "format": "array"}, kind="ip")
    assert chain.lookup_ip("192.0.2.9").value is True


FILE_ERRORS = [
    ("hash-duplicate", "hash", "a@x.org 1\n# c\nA@X.org 2\n",
     ":3: duplicate key 'A@X.org' (first on line 1)"),
    ("hash-unbalanced-quote", "hash", 'ok 1\n"open@x.org 1\n', ":2: unbalanced quote"),
    ("array-two-words", "array", "x.org\nu@x.org 5\n", ":2: 'u@x.org 5' is not one address"),
    ("array-empty-negation", "array", "!\n", ":1: empty ACL entry"),
    ("cidr-bad-network", "cidr", "10.0.0.0/8\n\n10.0.0.300\n", ":3: '10.0.0.300' is not an IP"),
]


@pytest.mark.parametrize("fmt,text,message", [c[1:] for c in FILE_ERRORS],
                         ids=[c[0] for c in FILE_ERRORS])
def test_file_malformed_line(tmp_path, fmt, text, message):
    path = write(tmp_path, text)
    kind = "ip" if fmt == "cidr" else "address"
    with pytest.raises(LookupSpecError) as e:
        build_chain([1, {"file": str(path), "format": fmt}], kind=kind)
    assert str(e.value).startswith(f"{path}{message}")
    assert e.value.path == (1, "file")


def test_missing_file_names_file_and_os_error(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(LookupSpecError) as e:
        build_chain({"file": str(path)}, kind="address")
    assert str(e.value) == f"cannot read lookup file {path}: No such file or directory"
    assert e.value.path == ("file",)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9@x.org\n")
    with pytest.raises(LookupSpecError, match="not UTF-8"):
        build_chain({"file": str(path), "format": "array"}, kind="address")


# --- spec shapes ------------------------------------------------------------------------

SHAPES = [
    ("scalar-constant", "yes", "address", [ConstantTable]),
    ("bool-constant-ip", False, "ip", [ConstantTable]),
    ("string-list-acl", ["x.org"], "address", [AclTable]),
    ("string-list-cidr", ["10/8"], "ip", [CidrTable]),
    ("map-shorthand", {"@x.org": 1}, "address", [MapTable]),
    ("explicit-map", {"map": {"@x.org": 1}}, "address", [MapTable]),
    ("explicit-acl", {"acl": ["x.org"]}, "address", [AclTable]),
    ("explicit-regex", {"regex": ["x"]}, "address", [RegexTable]),
    ("explicit-cidr", {"cidr": ["::1"]}, "ip", [CidrTable]),
    ("explicit-constant", {"constant": "10.0.0.1"}, "ip", [ConstantTable]),
    ("chain", [{"@x.org": 1}, ["y.org"], 2.5, {"constant": "s"}], "address",
     [MapTable, AclTable, ConstantTable, ConstantTable]),
    ("chain-of-constants", [1, 2], "address", [ConstantTable, ConstantTable]),
]


@pytest.mark.parametrize("spec,kind,types", [c[1:] for c in SHAPES], ids=[c[0] for c in SHAPES])
def test_spec_shapes(spec, kind, types):
    assert [type(t) for t in build_chain(spec, kind=kind).tables] == types


def not_negative(v):
    if isinstance(v, (int, float)) and v < 0:
        raise ValueError("must not be negative")
    return v


SPEC_ERRORS = [
    ("mixed-strings-and-tables", [{"map": {}}, "x.org"], "address", (1,),
     "this list mixes plain strings with tables"),
    ("mixed-cidr", ["10/8", {"cidr": []}], "ip", (0,), "one cidr list"),
    ("mixed-strings-and-numbers", ["x.org", 5], "address", (0,), "mixes plain strings"),
    ("unknown-key-suggests", {"acl": ["x.org"], "fomat": "hash"}, "address", ("fomat",),
     "unknown key 'fomat' in a table of kind 'acl' (did you mean 'format'?); format goes"
     " only with file"),
    ("unknown-key-in-file", {"file": "f", "formt": "hash"}, "address", ("formt",),
     "did you mean 'format'?"),
    ("two-kinds", [{"map": {}, "acl": []}], "address", (0, "acl"), "one table has one kind"),
    ("misspelt-kind", [{"fiel": "x.txt"}], "address", (0, "fiel"),
     "unknown table kind 'fiel' (did you mean 'file'?)"),
    ("format-without-file", {"format": "hash"}, "address", ("format",), "format goes only"),
    ("acl-for-ip", {"acl": ["10/8"]}, "ip", ("acl",),
     "a table of kind 'acl' cannot do ip lookups; use cidr"),
    ("cidr-for-address", [{"cidr": ["10/8"]}], "address", (0, "cidr"), "use map, acl or regex"),
    ("bad-format", {"file": "f", "format": "hsah"}, "address", ("format",),
     "format 'hsah' is not one of hash, array for address lookups (did you mean 'hash'?)"),
    ("cidr-format-for-address", {"file": "f", "format": "cidr"}, "address", ("format",),
     "not one of hash, array"),
    ("hash-format-for-ip", {"file": "f", "format": "hash"}, "ip", ("format",),
     "not one of cidr, array"),
    ("file-not-string", {"file": ["a"]}, "address", ("file",), "wants the path"),
    ("bad-regex-names-index", [1, {"regex": [["ok", 1], ["(", 2]]}], "address",
     (1, "regex", 1), "regex item 1: bad pattern '('"),
    ("regex-item-shape", {"regex": [["a", 1, 2]]}, "address", ("regex", 0), "[pattern, value]"),
    ("regex-not-list", {"regex": "a"}, "address", ("regex",), "wants a list"),
    ("map-not-mapping", {"map": ["a"]}, "address", ("map",), "wants a mapping"),
    ("map-non-string-key", {1: "a"}, "address", (1,), "map key 1 is not a string"),
    ("map-duplicate-after-normalizing", {"x.org": 1, "@X.org": 2}, "address", ("@X.org",),
     "duplicate map key '@X.org'"),
    ("acl-not-list", {"acl": "x.org"}, "address", ("acl",), "wants a list of strings"),
    ("acl-non-string-item", [["x.org", 5]], "address", (0, 1),
     "holds strings only; item 1 is 5"),
    ("acl-space", ["x.org", "a b.org"], "address", (1,), "is not one address or domain"),
    ("acl-empty", {"acl": ["!"]}, "address", ("acl", 0), "empty ACL entry"),
    ("cidr-bad", {"cidr": ["10.0.0.0/8", "10.0.0.0/33"]}, "ip", ("cidr", 1),
     "'10.0.0.0/33' is not an IP address or network"),
    ("ip-scalar-bad", "localhost", "ip", (), "'localhost' is not an IP"),
    ("null-item", [None, 1], "address", (0,), "empty table"),
    ("unsupported-type", {"constant": 1, "x": 2}, "address", ("x",), "unknown key 'x'"),
    ("object-type", [object()], "address", (0,), "cannot be a object"),
    ("value-check-map", {"@x.org": -1}, "address", ("@x.org",),
     "bad value -1: must not be negative"),
    ("value-check-constant", [{"constant": -2}], "address", (0, "constant"), "bad value -2"),
    ("value-check-regex", {"regex": [["a", -3]]}, "address", ("regex", 0, 1), "bad value -3"),
]


@pytest.mark.parametrize("spec,kind,path,message", [c[1:] for c in SPEC_ERRORS],
                         ids=[c[0] for c in SPEC_ERRORS])
def test_spec_errors(spec, kind, path, message):
    with pytest.raises(LookupSpecError) as e:
        build_chain(spec, kind=kind, value_check=not_negative)
    assert message in str(e.value)
    assert e.value.path == path


def test_value_check_on_boolean_tables_names_the_entry():
    def numbers_only(v):
        if isinstance(v, bool):
            raise ValueError("wants a number, an ACL gives yes/no")
        return v
    with pytest.raises(LookupSpecError) as e:
        build_chain([{"@x.org": 1}, ["y.org"]], kind="address", value_check=numbers_only)
    assert e.value.path == (1, 0) and "an ACL gives yes/no" in str(e.value)


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="kind must be"):
        build_chain(1, kind="addresses")


def test_spec_error_is_a_value_error_with_message_and_path():
    err = LookupSpecError("bad thing", (1, "regex", 0))
    assert isinstance(err, ValueError) and str(err) == "bad thing"
    assert err.path == (1, "regex", 0) and LookupSpecError("x").path == ()
