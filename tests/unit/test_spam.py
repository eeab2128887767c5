"""The spam side as tables: level -> category -> edits per recipient (checks/spam.py), the
X-Spam-* values, what spamd is given, the verdict cache, raw header edits (rawmsg.py),
address extensions and header groups (edits.py)."""

from types import SimpleNamespace

import pytest

from pymavis import rawmsg
from pymavis.categories import Ccat
from pymavis.checks.spam import (Judgement, Levels, SenderLists, Verdict, VerdictCache, envelope_lines, header_values,
                                 judge, message_for_spamd)
from pymavis.edits import Group, extended, groups, removals
from pymavis.outcome import HeaderEdit
from pymavis.transaction import Connection, Spool, Transaction

DEFAULT = Levels()                     # tag 2, tag2 6.2, kill 6.9, subject tag2 ***SPAM***
TAG3 = Levels(tag3=20.0, subject_tag3="***VERY SPAMMY*** ")
NO_TAG = Levels(tag=None)              # undefined tag level: headers always
LOW = Levels(tag=-999.0, tag2=3.0, kill=5.0, subject_tag="[tagged] ", addr_extension="spam")
WL, BL = SenderLists(whitelisted=True), SenderLists(blacklisted=True)


# (id, levels, score, lists) -> (category, minor, headers?, subject tag, extension)
JUDGE_TABLE = [
    ("ham-below-tag", DEFAULT, 1.0, SenderLists(), (None, 0, False, None, None)),
    ("ham-at-tag", DEFAULT, 2.0, SenderLists(), (None, 0, True, None, None)),
    ("spammy-at-tag2", DEFAULT, 6.2, SenderLists(), (Ccat.SPAMMY, 0, True, "***SPAM*** ", None)),
    ("spam-at-kill", DEFAULT, 6.9, SenderLists(), (Ccat.SPAM, 0, True, "***SPAM*** ", None)),
    ("gtube", DEFAULT, 1000.0, SenderLists(), (Ccat.SPAM, 0, True, "***SPAM*** ", None)),
    ("negative-score", DEFAULT, -5.0, SenderLists(), (None, 0, False, None, None)),
    ("tag-undefined-always-headers", NO_TAG, -50.0, SenderLists(), (None, 0, True, None, None)),
    ("tag3-subject", TAG3, 25.0, SenderLists(), (Ccat.SPAM, 1, True, "***VERY SPAMMY*** ", None)),
    ("between-tag2-and-tag3", TAG3, 6.5, SenderLists(), (Ccat.SPAMMY, 0, True, "***SPAM*** ", None)),
    ("low-levels-tag-subject", LOW, 0.0, SenderLists(), (None, 0, True, "[tagged] ", None)),
    ("low-levels-spammy-extension", LOW, 3.5, SenderLists(), (Ccat.SPAMMY, 0, True, "***SPAM*** ", "spam")),
    ("low-levels-spam-extension", LOW, 5.0, SenderLists(), (Ccat.SPAM, 0, True, "***SPAM*** ", "spam")),
    ("whitelisted-gtube", DEFAULT, 1000.0, WL, (None, 0, True, None, None)),
    ("blacklisted-ham", DEFAULT, -1.0, BL, (Ccat.SPAM, 0, True, "***SPAM*** ", None)),
    ("blacklisted-not-scanned", DEFAULT, None, BL, (Ccat.SPAM, 0, True, "***SPAM*** ", None)),
    ("boost-pushes-over-kill", DEFAULT, 5.0, SenderLists(boost=3.0), (Ccat.SPAM, 0, True, "***SPAM*** ", None)),
    ("negative-boost-rescues", DEFAULT, 8.0, SenderLists(boost=-5.0), (None, 0, True, None, None)),
    ("not-scanned", DEFAULT, None, SenderLists(), (None, 0, False, None, None)),
    ("bypass", Levels(bypass=True), 1000.0, SenderLists(), (None, 0, False, None, None)),
    ("kill-undefined-never-spam", Levels(kill=None), 1000.0, SenderLists(), (Ccat.SPAMMY, 0, True, "***SPAM*** ",
                                                                              None)),
]


@pytest.mark.parametrize("levels, score, lists, expected", [row[1:] for row in JUDGE_TABLE],
                         ids=[row[0] for row in JUDGE_TABLE])
def test_judge(levels, score, lists, expected):
    j = judge("r@example.com", levels, score, lists)
    assert (j.ccat, j.minor, j.tag_headers, j.subject_tag, j.extension) == expected


def test_level_is_score_plus_boost_and_cutoffs_compare_it():
    j = judge("r@example.com", DEFAULT, 9.0, SenderLists(boost=1.5))
    assert j.level == 10.5 and j.over(j.levels.dsn_cutoff) and not j.over(None)


def test_header_values_for_gtube():
    j = judge("r@example.com", DEFAULT, 1000.9, SenderLists())
    values = dict(header_values(j, ("GTUBE", "MISSING_DATE")))
    assert values == {"X-Spam-Flag": "YES", "X-Spam-Score": "1000.9", "X-Spam-Level": "*" * 64,
                      "X-Spam-Status": "Yes, score=1000.9 tag=2 tag2=6.2 kill=6.9 tests=[GTUBE, MISSING_DATE]"}


def test_header_values_for_ham_and_lists():
    ham = dict(header_values(judge("r@x", DEFAULT, 2.5, SenderLists()), ()))
    assert ham["X-Spam-Flag"] == "NO" and ham["X-Spam-Level"] == "**"
    assert ham["X-Spam-Status"] == "No, score=2.5 tag=2 tag2=6.2 kill=6.9 tests=[none]"
    negative = dict(header_values(judge("r@x", NO_TAG, -1.2, SenderLists()), ()))
    assert "X-Spam-Level" not in negative and negative["X-Spam-Score"] == "-1.2"
    bl = dict(header_values(judge("r@x", DEFAULT, None, BL), ()))
    assert bl == {"X-Spam-Flag": "YES", "X-Spam-Status": "Yes, score=- tag=2 tag2=6.2 kill=6.9 tests=[BLACKLISTED]"}
    wl = dict(header_values(judge("r@x", DEFAULT, 1000.0, WL), ("GTUBE",)))
    assert wl["X-Spam-Flag"] == "NO" and "tests=[WHITELISTED, GTUBE]" in wl["X-Spam-Status"]


def test_a_long_test_list_is_cut_to_fit_one_header_line():
    tests = tuple(f"RULE_NUMBER_{i:04d}" for i in range(200))
    status = dict(header_values(judge("r@x", DEFAULT, 7.0, SenderLists()), tests))["X-Spam-Status"]
    assert len(status) <= 900 and status.endswith(", ...]")


# --- what spamd sees ------------------------------------------------------------------------

def spool_of(data: bytes) -> Spool:
    spool = Spool(1 << 20, None)
    spool.write(data)
    return spool


def test_message_for_spamd_truncates_at_a_line_end_and_drops_our_headers():
    raw = b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes,\r\n\tscore=99\r\nSubject: hi\r\n\r\n" + b"line\r\n" * 100
    data, truncated = message_for_spamd(spool_of(raw), 0, True)
    assert not truncated and data.startswith(b"Subject: hi\r\n\r\nline\r\n") and b"X-Spam" not in data
    data, truncated = message_for_spamd(spool_of(raw), 100, False)
    assert truncated and len(data) <= 100 and data.endswith(b"\r\n")
    kept, _ = message_for_spamd(spool_of(raw), 0, False)
    assert kept == raw


def txn(headers=(), ip="192.0.2.1", helo="mail.example.org", name="mail.example.org", macros=()):
    conn = Connection("c1", ip, 40000, name, helo, (("j", "mx.example.com"),), 0.0)
    return Transaction(conn, "MAILID", "SECRET", "QID", "a@example.org", (), (), tuple(headers),
                       spool_of(b""), macros=tuple(macros))


def test_envelope_lines_synthesize_the_clients_received_line():
    text = envelope_lines(txn(), "me.example.com").decode()
    assert text.startswith("Return-Path: <a@example.org>\r\nX-Envelope-From: <a@example.org>\r\n")
    assert "Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n\tby mx.example.com (pymavis) " \
           "with ESMTP id QID;\r\n\t" in text
    auth = envelope_lines(txn(macros=(("{auth_authen}", "alice"),)), "me").decode()
    assert "with ESMTPA id" in auth


def test_envelope_lines_skip_received_when_the_mta_shows_its_own():
    own = txn(headers=(("Received", "from x (x [192.0.2.1]) by mx with ESMTP id QID"),))
    assert b"Received:" not in envelope_lines(own, "me")
    assert b"Received:" not in envelope_lines(txn(ip=None), "me")


def test_verdict_cache_expires_and_is_bounded(monkeypatch):
    import pymavis.checks.spam as spam
    now = [1000.0]
    monkeypatch.setattr(spam.time, "monotonic", lambda: now[0])
    cache = VerdictCache(60, 2)
    v = Verdict(1.0, 5.0, (), "spamd")
    cache.put(b"a", v)
    assert cache.get(b"a") is v
    now[0] += 61
    assert cache.get(b"a") is None and (cache.hits, cache.misses) == (1, 1)
    for key in (b"1", b"2", b"3"):
        cache.put(key, v)
    assert cache.get(b"1") is None and cache.get(b"3") is v
    assert VerdictCache(0, 10).get(b"x") is None


# --- raw header edits -----------------------------------------------------------------------

RAW = b"Received: a\r\nSubject: old\r\nX-Spam-Flag: YES\r\nX-Spam-Flag: NO\r\n folded\r\n\r\nbody\r\n"


def test_apply_edits_like_the_mta():
    out = rawmsg.apply_edits(RAW, [HeaderEdit("X-A", "1", "insert"), HeaderEdit("X-B", "2", "insert"),
                                   HeaderEdit("X-End", "3", "add"), HeaderEdit("Subject", "[tag] old", "change"),
                                   HeaderEdit("X-Spam-Flag", "", "change", 2), HeaderEdit("X-Spam-Flag", "", "change", 1)])
    assert out == b"X-B: 2\r\nX-A: 1\r\nReceived: a\r\nSubject: [tag] old\r\nX-End: 3\r\n\r\nbody\r\n"


def test_removals_delete_incoming_spam_headers_last_first():
    t = txn(headers=(("X-Spam-Flag", "YES"), ("Subject", "s"), ("x-spam-flag", "NO"), ("X-Spam-Status", "Yes")))
    view = SimpleNamespace(remove_existing=True)
    assert removals(t, view) == (HeaderEdit("X-Spam-Flag", "", "change", 2), HeaderEdit("X-Spam-Flag", "", "change", 1),
                                 HeaderEdit("X-Spam-Status", "", "change", 1))
    assert removals(t, SimpleNamespace(remove_existing=False)) == () and removals(t, None) == ()


# --- extensions and groups ------------------------------------------------------------------

POLICY = SimpleNamespace(recipient_delimiter="+", is_local=lambda a: a.endswith("@example.com"))


@pytest.mark.parametrize("rcpt, ext, expected", [
    ("bob@example.com", "spam", "bob+spam@example.com"),
    ("bob+lists@example.com", "spam", "bob+spam@example.com"),     # amavis replaces an extension
    ("bob+spam@example.com", "spam", None),                        # already there: nothing changes
    ("bob@elsewhere.org", "spam", None),                           # only local recipients
    ("postmaster@example.com", "spam", None),
    ("bob@example.com", None, None),
])
def test_extended(rcpt, ext, expected):
    assert extended(POLICY, rcpt, ext) == expected


def test_groups_largest_first_then_rcpt_order():
    a, b = (HeaderEdit("X-A", "1"),), (HeaderEdit("X-B", "2"),)
    assert groups({"r1": a, "r2": b, "r3": b}) == [Group(("r2", "r3"), b), Group(("r1",), a)]
    assert groups({"r1": a, "r2": b}) == [Group(("r1",), a), Group(("r2",), b)]
    assert groups({}) == []


def test_judgement_defaults_are_not_flagged():
    assert not Judgement("r", None, None).flagged
