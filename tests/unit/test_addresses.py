"""pymavis.addresses against its references: every plain address list in the corpus gives
the addresses email.utils.getaddresses finds and no defect the bad-header check reports."""

import email.utils
import os
import random

import pytest

from conftest import CORPUS
from pymavis import events
from pymavis.addresses import plain_addresses
from pymavis.checks import headers


@pytest.mark.parametrize("value, expected", [
    ("a@b.example", ["a@b.example"]),
    ("<a@b.example>", ["a@b.example"]),
    ("John Q. Public <jqp@example.com>, d@e.example", ["jqp@example.com", "d@e.example"]),
    ("J\u00f6rg \u00c5str\u00f6m <j@x.example>", ["j@x.example"]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x.example>", None),       # encoded words: the registry decodes them
    (".x <a@b.example>", None),                          # the registry fails on these three
    ("Z.<a@b.example>", None),
    ("a\rb <a@b.example>", None),
    ("a@b.example,, c@d.example,", ["a@b.example", "c@d.example"]),
    (",", []),
    ('"Quoted, Name" <a@b.example>', None),
    ("a (comment) <a@b.example>", None),
    ("group: a@b.example;", None),
    ("a.@b.example", None),
    ("a@b..example", None),
    ("<a@b.example> trailing", None),
])
def test_plain_forms(value, expected):
    assert plain_addresses(value) == expected


def corpus_address_values():
    """(field name, unfolded value) of every address field in the corpus's header sections."""
    for dirpath, _, files in os.walk(CORPUS):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read(200_000)
            for line, folded in _lines(headers.header_section(data)):
                m = headers.FIELD_HEAD.match(line)
                if m and m.group(1).lower().decode("ascii") in headers.ADDRESS_FIELDS:
                    yield m.group(1).decode("ascii"), (line + folded)[m.end():].decode("utf-8", "surrogateescape").strip()


def _lines(section: bytes):
    """Each field's first line and its unfolded continuation."""
    fields = []
    for line in section.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line
        elif line:
            fields.append([line, b""])
    return fields


def _references(name, value, monkeypatch):
    """The bad-header check's verdict with the fast path off (the registry's), and the
    addresses getaddresses finds."""
    with monkeypatch.context() as m:
        m.setattr(headers, "plain_addresses", lambda value: None)
        error = headers._address_error(name.lower(), name, value)
    return error, [a for _, a in email.utils.getaddresses([value]) if a]


def test_corpus_plain_lists_match_the_references(monkeypatch):
    values = list(corpus_address_values())
    plain = [(n, v) for n, v in values if plain_addresses(v) is not None]
    assert len(values) > 1000 and len(plain) > len(values) / 2
    slow = {}
    for name, value in plain:
        error, addresses = _references(name, value, monkeypatch)
        if error:
            slow[value] = error
        assert plain_addresses(value) == addresses, value
        assert events.address_list([value]) == plain_addresses(value)
    assert slow == {}


_NAME_CHARS = list("abcXYZ 09.!#$%&'*+/=?^_`{|}~-\t") + [
    "\u00e9", "\x01", "\x00", "\x7f", "=?", "?=", "=?utf-8?q?", "=?utf-8?b?", "\u2028", "\x85",
    "\r", "\n", "\ud800", "\udce9", "\u00a0", ". ", ".<"]


def test_crafted_plain_lists_match_the_references(monkeypatch):
    """Random names and addresses (seeded): whatever the fast path calls plain, the registry
    finds no error in and getaddresses reads alike."""
    rng = random.Random(7)
    checked = 0
    for _ in range(6000):
        name = "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randrange(0, 14)))
        addr = rng.choice(["a", "a.b", "a+b", "{x}", "a'b"]) + "@" + rng.choice(["b.example", "b", "1.2.3.4", "b-.example"])
        value = f"{name}<{addr}>" if rng.random() < 0.8 else f" {addr}"
        if rng.random() < 0.2:
            value += rng.choice([", ", ",", " ,"]) + addr
        found = plain_addresses(value)
        if found is None:
            continue
        checked += 1
        error, addresses = _references("To", value, monkeypatch)
        assert error is None, repr(value)
        assert found == addresses, repr(value)
    assert checked > 2000
