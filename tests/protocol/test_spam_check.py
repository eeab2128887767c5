"""The spam check in the pipeline against the session's real spamd (and a fake spamd where
the test must see exactly what spamd was sent, or needs an exact score): categories and
destinies per recipient, lovers, X-Spam-* headers and subject tags, sender lists, address
extensions, header groups, the size cap, the cache and the failure policy."""

import concurrent.futures
import os
import textwrap
import threading
import time

import pytest

from conftest import spam_scanners_yaml
from harness.fakespamd import FakeSpamd
from harness.net import closed_port
from harness.spamd import GTUBE, SAMPLES
from pymavis import pipeline
from pymavis.categories import Ccat
from pymavis.checks import spam
from pymavis.config import load
from pymavis.outcome import Action
from pymavis.policy import merge
from pymavis.transaction import Connection, Rcpt, TransactionBuilder

with open(os.path.join(SAMPLES, "sample-nonspam.txt"), "rb") as _fh:
    NONSPAM = _fh.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
BOB, ANN, LOVER = "bob@example.com", "ann@example.com", "lover@example.com"


def gtube(subject="gtube test", extra_headers=b"") -> bytes:
    return (b"From: a@example.org\r\nTo: bob@example.com\r\nDate: Thu, 3 Dec 2026 07:00:00 +0000\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Message-ID: <gtube@example.org>\r\n" + extra_headers + b"\r\n" + GTUBE + b"\r\n")


def txn_of(raw: bytes, rcpts, tmp_dir, sender="a@example.org"):
    conn = Connection("c1", "192.0.2.1", 40000, "client.example.org", "client.example.org", (), 0.0)
    builder = TransactionBuilder(conn, f"<{sender}>", (), {}, 100 * 1024, tmp_dir)
    for r in rcpts:
        builder.add_rcpt(Rcpt(f"<{r}>", r), 0)
    head, _, body = raw.partition(b"\r\n\r\n")
    for field in head.replace(b"\r\n\t", b"\0\t").replace(b"\r\n ", b"\0 ").split(b"\r\n"):
        field = field.replace(b"\0", b"\r\n")
        name, _, value = field.partition(b":")
        builder.add_header(name.decode(), value.decode().strip(), field + b"\r\n")
    builder.end_of_headers()
    builder.add_body(body)
    return builder.freeze("QID1", {})


def run(tmp_path, raw, config_text, rcpts=(BOB,), sender="a@example.org"):
    path = tmp_path / "pymavis.yaml"
    cache = "" if "spam_cache:" in config_text else "spam_cache: {ttl_s: 0}\n"
    path.write_text(f"state_dir: {tmp_path}\nmydomain: example.com\n{cache}" + textwrap.dedent(config_text))
    config = load(str(path))
    txn = txn_of(raw, rcpts, str(tmp_path), sender)
    try:
        return pipeline.process(config, merge(config, ()), txn)
    finally:
        txn.spool.close()


def policy(**settings) -> str:
    lines = "".join(f"  {k}: {v}\n" for k, v in settings.items())
    return "policy:\n  local_domains: [example.com]\n" + lines


def headers(result):
    return {h.name: h.value for h in result.outcome.headers if h.value}


def spam_view(result):
    return next(r.spam for r in result.checks if r.name == "spam")


def test_gtube_is_spam_and_rejected(tmp_path, spamd):
    result = run(tmp_path, gtube(), spam_scanners_yaml(spamd) + policy(final_spam_destiny="reject"))
    assert result.outcome.action is Action.REJECT, result.outcome
    assert str(result.outcome.reply).startswith("554 5.7.0 Reject, id=") and str(result.outcome.reply).endswith(" - spam")
    [finding] = [f for f in result.findings if f.check == "spam"]
    assert finding.ccat is Ccat.SPAM and "GTUBE" in finding.detail


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_spam_lover_gets_it_tagged_and_the_other_is_removed(tmp_path, spamd, kind):
    result = run(tmp_path, gtube("offer"), spam_scanners_yaml(spamd, kind)
                 + policy(final_spam_destiny="discard", spam_lovers=f"[{LOVER}]"), rcpts=(BOB, LOVER))
    out = result.outcome
    assert out.action is Action.CONTINUE and out.del_rcpts == (BOB,), out
    h = headers(result)
    assert h["X-Spam-Flag"] == "YES" and h["Subject"] == "***SPAM*** offer", h
    assert h["X-Spam-Status"].startswith("Yes, score=") and "GTUBE" in h["X-Spam-Status"]
    assert float(h["X-Spam-Score"]) >= 1000 and h["X-Spam-Level"] == "*" * 64


def test_ham_gets_x_spam_status_for_a_tag_level_recipient(tmp_path, spamd):
    result = run(tmp_path, NONSPAM, spam_scanners_yaml(spamd) + policy(spam_tag_level="-999"))
    h = headers(result)
    assert result.outcome.action is Action.CONTINUE
    assert h["X-Spam-Flag"] == "NO" and h["X-Spam-Status"].startswith("No, score="), h
    assert "Subject" not in h


def test_ham_below_the_tag_level_gets_no_spam_headers(tmp_path, spamd):
    result = run(tmp_path, NONSPAM, spam_scanners_yaml(spamd) + policy(spam_tag_level=50))
    assert not [n for n in headers(result) if n.startswith("X-Spam")]
    assert spam_view(result).verdict is not None


def test_whitelisted_sender_passes_gtube_without_asking_spamd(tmp_path):
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE") as fake:
        result = run(tmp_path, gtube(), f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
                     + policy(final_spam_destiny="reject", whitelist_sender='[".example.org"]'))
        assert fake.requests == []
    assert result.outcome.action is Action.CONTINUE and not result.findings
    assert "whitelisted" in spam_view(result).note


def test_blacklisted_sender_is_spam_whatever_the_score(tmp_path, spamd):
    result = run(tmp_path, NONSPAM, spam_scanners_yaml(spamd)
                 + policy(final_spam_destiny="reject", blacklist_sender='{"a@example.org": true}'))
    assert result.outcome.action is Action.REJECT
    [finding] = result.findings
    assert finding.ccat is Ccat.SPAM and finding.detail == "sender blacklisted"


def test_score_sender_boost_is_added(tmp_path):
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 4.0 / 5.0\r\n\r\nRULE_A") as fake:
        result = run(tmp_path, NONSPAM, f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
                     + policy(score_sender='{"@.example.org": 3.5}'))
    j = spam_view(result).judgement(BOB)
    assert j.level == 7.5 and j.ccat is Ccat.SPAM and headers(result)["X-Spam-Score"] == "7.5"


def test_plus_address_extension_for_spammy_mail(tmp_path, spamd):
    result = run(tmp_path, gtube(), spam_scanners_yaml(spamd)
                 + policy(spam_lovers="true", addr_extension_spam="spam"), rcpts=(BOB, "carl@elsewhere.org"))
    out = result.outcome
    assert out.del_rcpts == (BOB,) and out.add_rcpts == ("bob+spam@example.com",), out


def test_what_spamd_sees(tmp_path):
    reply = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.5 / 5.0\r\n\r\n"
    with FakeSpamd(reply) as fake:
        result = run(tmp_path, gtube(extra_headers=b"X-Spam-Flag: NO\r\nX-Spam-Score: -50\r\n"),
                     f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n' + policy())
        [request] = fake.requests
    message = request.split(b"\r\n\r\n", 1)[1]
    assert message.startswith(b"Return-Path: <a@example.org>\r\nX-Envelope-From: <a@example.org>\r\n"
                              b"Received: from client.example.org (client.example.org [192.0.2.1])\r\n")
    assert b"X-Spam-Flag" not in message and b"X-Spam-Score" not in message and GTUBE in message
    # and the delivered copy loses them too
    removed = [(h.name, h.index) for h in result.outcome.headers if h.op == "change" and not h.value]
    assert removed == [("X-Spam-Flag", 1), ("X-Spam-Score", 1)]


def test_size_limit_truncates_or_skips(tmp_path):
    big = NONSPAM + b"padding line of the sort a long message has\r\n" * 3000
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.5 / 5.0\r\n\r\n") as fake:
        spec = f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
        result = run(tmp_path, big, spec + policy(sa_mail_body_size_limit=20000))
        assert spam_view(result).verdict.truncated and "truncated to" in spam_view(result).note
        assert len(fake.requests[0]) < 21000
        result = run(tmp_path, big, spec + policy(sa_mail_body_size_limit=20000, sa_mail_body_size_action="skip"))
        assert len(fake.requests) == 1 and spam_view(result).verdict is None
        assert "sa_mail_body_size_limit" in spam_view(result).note and result.outcome.action is Action.CONTINUE


@pytest.mark.parametrize("failure, action", [("pass", Action.CONTINUE), ("tempfail", Action.TEMPFAIL)])
def test_spamd_down_passes_or_tempfails(tmp_path, failure, action):
    with closed_port() as port:
        spec = f'spam_scanners: [{{name: down, socket: "inet:127.0.0.1:{port}", connect_timeout_s: 1}}]\n'
        result = run(tmp_path, gtube(), spec + policy(final_spam_destiny="reject", spam_scanner_failure=failure))
    assert result.outcome.action is action, result.outcome
    assert not [f for f in result.findings if f.check == "spam"]   # never spam on a failure
    if failure == "pass":
        assert "SPAM CHECK FAILED" in spam_view(result).note


def test_second_scanner_answers_when_the_first_is_down(tmp_path, spamd):
    with closed_port() as port:
        spec = (f'spam_scanners:\n  - {{name: down, socket: "inet:127.0.0.1:{port}", connect_timeout_s: 1}}\n'
                f'  - {{name: up, socket: "{spamd.socket_spec("unix")}"}}\n')
        result = run(tmp_path, gtube(), spec + policy())
    assert spam_view(result).verdict.scanner == "up"


def test_cache_reuses_the_verdict_for_the_same_message(tmp_path):
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0\r\n\r\nRULE_A") as fake:
        spec = f'spam_cache: {{ttl_s: 600}}\nspam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
        first = run(tmp_path, gtube("same"), spec + policy(spam_lovers="true"))
        second = run(tmp_path, gtube("same"), spec + policy(spam_lovers="true"), rcpts=(ANN,))
        other = run(tmp_path, gtube("different"), spec + policy(spam_lovers="true"))
        assert len(fake.requests) == 2
    assert not spam_view(first).verdict.cached and spam_view(second).verdict.cached
    assert spam_view(second).verdict.score == 9.0 and not spam_view(other).verdict.cached


def test_copies_checked_at_the_same_time_share_one_spamd_call(tmp_path):
    """A MIRV's copies arrive together: the second joins the call in flight for the first."""
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0\r\n\r\nRULE_A", delay=1.0) as fake:
        spec = f'spam_cache: {{ttl_s: 600}}\nspam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
        dirs = [tmp_path / "a", tmp_path / "b"]
        for d in dirs:
            d.mkdir()
        results = {}
        first = threading.Thread(target=lambda: results.setdefault(
            "a", run(dirs[0], gtube("in flight"), spec + policy(spam_lovers="true"))))
        first.start()
        deadline = time.monotonic() + 10
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        results["b"] = run(dirs[1], gtube("in flight"), spec + policy(spam_lovers="true"), rcpts=(ANN,))
        first.join(10)
        assert len(fake.requests) == 1
    assert not spam_view(results["a"]).verdict.cached
    assert spam_view(results["b"]).verdict.cached and spam_view(results["b"]).verdict.score == 9.0


def test_a_copy_whose_leader_failed_asks_spamd_itself():
    cache = spam.VerdictCache(600, 10)
    leader, joined = cache.lead_or_join(b"k", concurrent.futures.Future)
    assert not joined and cache.lead_or_join(b"k", concurrent.futures.Future) == (leader, True)
    asked = []
    follower = spam._follow(leader, lambda: asked.append(1) or (spam.Verdict(3.0, 5.0, ("R",), "s"), ""))
    leader.set_exception(spam._AllFailed("down"))
    verdict, _ = follower.result(5)
    assert asked == [1] and verdict.score == 3.0 and not verdict.cached
    assert cache.lead_or_join(b"k", concurrent.futures.Future)[1] is False   # the failed call is gone


def test_bypass_for_everyone_does_not_ask_spamd(tmp_path):
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n") as fake:
        result = run(tmp_path, gtube(), f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
                     + policy(bypass_spam_checks="true", final_spam_destiny="reject"))
        assert fake.requests == []
    assert result.outcome.action is Action.CONTINUE and not headers(result)


def test_mail_blocked_for_everyone_already_is_not_spam_checked(tmp_path):
    raw = (b"From: a@example.org\r\nSubject: exe\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
           b"\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=x.exe\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\r\n--b--\r\n")
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n") as fake:
        result = run(tmp_path, raw, f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\n'
                     + policy(final_banned_destiny="reject"))
    assert result.outcome.action is Action.REJECT and "BANNED" in str(result.outcome.reply)
    assert spam_view(result).note == "spamd not asked: every recipient is blocked already"


def test_recipients_with_different_levels_without_resubmission(tmp_path, spamd, caplog):
    """amavis's answer: the largest group's edits for everyone, logged."""
    result = run(tmp_path, NONSPAM, spam_scanners_yaml(spamd)
                 + policy(spam_tag_level=f'{{"{ANN}": -999, "{LOVER}": -999, ".": 50}}'), rcpts=(BOB, ANN, LOVER))
    assert "X-Spam-Status" in headers(result) and result.outcome.del_rcpts == ()
    assert "RECIPIENTS REQUIRE DIFFERENT HEADERS; <bob@example.com> get the edits of " \
           "<ann@example.com>, <lover@example.com>" in caplog.text


def test_resubmission_failure_before_anything_was_sent_tempfails(tmp_path, spamd):
    with closed_port() as port:
        result = run(tmp_path, NONSPAM, spam_scanners_yaml(spamd)
                     + f'resubmit: {{socket: "inet:127.0.0.1:{port}", timeout_s: 2}}\n'
                     + policy(spam_tag_level=f'{{"{ANN}": -999, ".": 50}}'), rcpts=(BOB, ANN))
    assert result.outcome.action is Action.TEMPFAIL
    assert str(result.outcome.reply).startswith("451 4.3.0 Temporary failure re-submitting")


def test_spamd_and_clamd_on_one_spooled_message_see_it_whole(tmp_path, spamd, clamd):
    """The spamd call overlaps decoding and clamd; each must still read the whole message
    (the spool has one file position). A message over the 100 KiB memory spool, on disk."""
    from harness.clamd import EICAR
    raw = gtube("both").replace(b"\r\n\r\n", b"\r\nMIME-Version: 1.0\r\n\r\n", 1) + b"X " + EICAR + b"\r\n" \
        + b"filler line to take the message past the memory spool\r\n" * 3000
    config = (spam_scanners_yaml(spamd) + f'av_scanners:\n  - {{name: clamd, socket: "{clamd.socket_spec("unix")}"}}\n'
              + policy(virus_lovers="true", spam_lovers="true", sa_mail_body_size_limit=0))
    for _ in range(5):
        result = run(tmp_path, raw, config)
        ccats = {f.ccat for f in result.findings}
        assert {Ccat.VIRUS, Ccat.SPAM} <= ccats, result.findings
        assert spam_view(result).verdict.score >= 1000
