"""pymavis.addresses against its references: every plain address list in the corpus gives
the addresses email.utils.getaddresses finds and no defect the bad-header check reports."""

import email.utils
import os

import pytest

from conftest import CORPUS
from pymavis import events
from pymavis.addresses import plain_addresses
from pymavis.checks import headers


@pytest.mark.parametrize("value, expected", [
    ("a@b.example", ["a@b.example"]),
    ("<a@b.example>", ["a@b.example"]),
    ("John Q. Public <jqp@example.com>, d@e.example", ["jqp@example.com", "d@e.example"]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x.example>", ["j@x.example"]),
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


def test_corpus_plain_lists_match_the_references(monkeypatch):
    values = list(corpus_address_values())
    plain = [(n, v) for n, v in values if plain_addresses(v) is not None]
    assert len(values) > 1000 and len(plain) > len(values) / 2
    slow = {}
    monkeypatch.setattr(headers, "plain_addresses", lambda value: None)   # the registry's verdict
    for name, value in plain:
        slow[value] = headers._address_error(name.lower(), name, value)
    assert {v: why for v, why in slow.items() if why} == {}
    for name, value in plain:
        assert plain_addresses(value) == [a for _, a in email.utils.getaddresses([value]) if a], value
        assert events.address_list([value]) == plain_addresses(value)
