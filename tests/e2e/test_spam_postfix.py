"""The spam check behind a real Postfix, with the session's real spamd.

- GTUBE is refused (554 ... - spam) for a recipient whose kill level it passes; a spam
  lover in the same transaction gets it tagged (X-Spam-Flag YES, ***SPAM***) while the
  other recipient is removed; a lover with addr_extension_spam gets it as user+spam@;
- sample-nonspam passes, with X-Spam-Status for a recipient whose tag level it reaches;
- a whitelisted sender's GTUBE passes, a blacklisted sender's ham is refused;
- two recipients needing different headers in one transaction: without the RCPT-time
  split, the minority is re-submitted through contrib/postfix's no-filter listener and
  each copy carries its own headers; with the split (a front Postfix, a real SMTP client,
  relays in), the second recipient gets 452 4.5.3, the front retries it in a transaction
  of its own, and again each copy has its own headers;
- a real spamd stopped mid-run: the mail passes unchecked for spam (default), or, with
  spam_scanner_failure: tempfail, the front keeps it and delivers it once spamd is back.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from harness.net import free_port, wait_until
from harness.postfix import PostfixInstance, front_mta
from harness.pymavisd import PymavisProcess
from harness.spamd import GTUBE, SAMPLES, SpamdProcess

SENDER = "sender@example.org"
BOB, LOVER, TAGME, EXT = "bob@example.net", "lover@example.net", "tagme@example.net", "ext@example.net"
with open(os.path.join(SAMPLES, "sample-nonspam.txt"), "rb") as _fh:
    _NONSPAM = _fh.read()


def config(spamd_socket: str, resubmit_port: int | None, *, split: bool = False, failure: str = "pass") -> str:
    resubmit = f'resubmit: {{socket: "inet:127.0.0.1:{resubmit_port}"}}\n' if resubmit_port else ""
    return f"""\
mydomain: example.test
spam_scanners:
  - {{name: spamd, socket: "{spamd_socket}", timeout_s: 60, connect_timeout_s: 2}}
{resubmit}policy:
  mynetworks: [10.0.0.0/8]        # the loopback test clients count as the Internet
  local_domains: [example.net]
  final_spam_destiny: reject
  spam_lovers: [{LOVER}, {EXT}]
  spam_tag_level: {{"{TAGME}": -999, ".": 50}}
  addr_extension_spam: {{"{EXT}": spam}}
  whitelist_sender: [friend@good.example]
  blacklist_sender: [spammer@bad.example]
  split_recipients_at_rcpt: {str(split).lower()}
  spam_scanner_failure: {failure}
"""


def subject(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def gtube(subj: str, to: str = BOB) -> bytes:
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subj}\r\nDate: Thu, 3 Dec 2026 07:00:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n").encode() + GTUBE + b"\r\n"


def nonspam(subj: str) -> bytes:
    text = _NONSPAM.replace(b"\r\n", b"\n")
    text = re.sub(rb"(?m)^Subject: .*$", b"Subject: " + subj.encode(), text, count=1)
    text = re.sub(rb"(?m)^Message-Id: .*$", f"Message-Id: <{uuid.uuid4().hex}@example.org>".encode(), text,
                  count=1, flags=re.IGNORECASE)
    return text.replace(b"\n", b"\r\n")


def copies(sink, subj: str, n: int = 1, timeout: float = 60):
    """The `n` deliveries whose Subject ends with `subj`, in arrival order."""
    def found():
        got = [m for m in sink.messages if str(m.message["Subject"]).endswith(subj)]
        return got if len(got) >= n else None
    return wait_until(found, timeout, what=f"{n} deliveries of {subj!r}")


def log_line(proc: PymavisProcess, contains: str) -> str:
    return wait_until(lambda: next((l for l in reversed(proc.log_text().splitlines()) if contains in l), None),
                      15, what=f"pymavis log line with {contains!r}")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resubmit_port():
    return free_port()


@pytest.fixture(scope="module")
def pymavis(tmp_path_factory, spamd, resubmit_port):
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-spam")),
                          config(spamd.socket_spec("unix"), resubmit_port)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def postfix(public_tmp, sink, pymavis, resubmit_port):
    with PostfixInstance(public_tmp / "postfix-spam", sink_port=sink.port, milter=pymavis.socket_spec,
                         listeners={"resubmit": resubmit_port}) as pf:
        yield pf


@pytest.fixture(scope="module")
def split(tmp_path_factory, spamd):
    """A pymavis with the RCPT-time split on (no re-submission listener configured)."""
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-split")),
                          config(spamd.socket_spec("unix"), None, split=True)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def split_postfix(public_tmp, sink, split):
    with PostfixInstance(public_tmp / "postfix-split", sink_port=sink.port, milter=split.socket_spec,
                         extra_main={"myhostname": "filter.test"}) as pf:
        yield pf


@pytest.fixture(scope="module")
def front(public_tmp, sink, split_postfix):
    """A sending MTA without a milter that relays everything into split_postfix."""
    with front_mta(public_tmp / "front-spam", split_postfix, sink.port) as pf:
        yield pf


# --- verdicts -----------------------------------------------------------------------------------


def test_gtube_is_refused(postfix, sink, pymavis):
    subj = subject("gtube")
    reply = postfix.send("mx", SENDER, [BOB], gtube(subj))
    assert reply.code == 554 and reply.stage == "eom", reply
    m = re.fullmatch(r"5\.7\.0 Reject, id=(\S+) - spam", reply.text)
    assert m, reply
    line = log_line(pymavis, f"mail_id: {m.group(1)},")
    assert line.startswith("Blocked SPAM {RejectedInbound}") or " Blocked SPAM {RejectedInbound}" in line, line
    assert not [s for s in sink.messages if subj in str(s.message["Subject"])]


def test_lover_gets_gtube_tagged_and_the_other_recipient_is_removed(postfix, sink):
    subj = subject("gtube-lover")
    reply = postfix.send("mx", SENDER, [BOB, LOVER], gtube(subj))
    assert reply.code == 250, reply
    [got] = copies(sink, subj)
    assert got.rcpt_tos == (LOVER,)
    msg = got.message
    assert msg["Subject"] == "***SPAM*** " + subj and msg["X-Spam-Flag"] == "YES"
    assert str(msg["X-Spam-Status"]).startswith("Yes, score=") and "GTUBE" in str(msg["X-Spam-Status"])


def test_lover_with_an_address_extension_gets_it_as_user_plus_spam(postfix, sink):
    subj = subject("gtube-ext")
    reply = postfix.send("mx", SENDER, [EXT], gtube(subj, EXT))
    assert reply.code == 250, reply
    [got] = copies(sink, subj)
    assert got.rcpt_tos == ("ext+spam@example.net",) and got.message["X-Spam-Flag"] == "YES"


def test_ham_passes_with_x_spam_status_for_a_tag_level_recipient(postfix, sink):
    subj = subject("ham")
    reply = postfix.send("mx", SENDER, [TAGME], nonspam(subj))
    assert reply.code == 250, reply
    [got] = copies(sink, subj)
    msg = got.message
    assert msg["X-Spam-Flag"] == "NO" and str(msg["X-Spam-Status"]).startswith("No, score="), msg
    assert msg["Subject"] == subj


def test_whitelisted_sender_passes_and_blacklisted_sender_is_refused(postfix, sink, pymavis):
    subj = subject("whitelisted-gtube")
    reply = postfix.send("mx", "friend@good.example", [BOB], gtube(subj))
    assert reply.code == 250, reply
    [got] = copies(sink, subj)
    assert got.message["X-Spam-Flag"] is None and got.message["Subject"] == subj

    reply = postfix.send("mx", "spammer@bad.example", [BOB], nonspam(subject("blacklisted-ham")))
    assert reply.code == 554 and reply.text.endswith(" - spam"), reply


def test_incoming_x_spam_headers_are_not_believed(postfix, sink):
    subj = subject("forged-flag")
    forged = nonspam(subj).replace(b"\r\n\r\n", b"\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=99\r\n\r\n", 1)
    assert postfix.send("mx", SENDER, [BOB], forged).code == 250
    [got] = copies(sink, subj)
    assert got.message["X-Spam-Flag"] is None and got.message["X-Spam-Status"] is None


# --- recipients that need different headers ------------------------------------------------------


def test_different_headers_are_resubmitted_for_the_minority(postfix, sink, pymavis):
    subj = subject("two-levels")
    reply = postfix.send("mx", SENDER, [BOB, TAGME], nonspam(subj))
    assert reply.code == 250, reply
    got = copies(sink, subj, 2)
    by_rcpt = {m.rcpt_tos: m.message for m in got}
    assert set(by_rcpt) == {(BOB,), (TAGME,)}, [m.rcpt_tos for m in got]
    assert by_rcpt[(BOB,)]["X-Spam-Status"] is None
    assert str(by_rcpt[(TAGME,)]["X-Spam-Status"]).startswith("No, score=")
    assert "re-submitted for <tagme@example.net> with their own header edits: 250 " in pymavis.log_text()
    assert len(copies(sink, subj, 2)) == 2   # and nobody got it twice


def test_rcpt_time_split_defers_the_second_recipient_and_each_copy_has_its_headers(front, split, sink):
    subj = subject("split")
    accepted = front.send("mx", SENDER, [BOB, TAGME], nonspam(subj))
    assert accepted.code == 250, accepted
    log_line(split, "RCPT <tagme@example.net> deferred with 452 4.5.3")
    front.flush()
    got = copies(sink, subj, 2, timeout=90)
    by_rcpt = {m.rcpt_tos: m.message for m in got}
    assert set(by_rcpt) == {(BOB,), (TAGME,)}, [m.rcpt_tos for m in got]
    assert by_rcpt[(BOB,)]["X-Spam-Status"] is None
    assert str(by_rcpt[(TAGME,)]["X-Spam-Status"]).startswith("No, score=")
    assert "RECIPIENTS REQUIRE DIFFERENT HEADERS" not in split.log_text()
    front.wait_for_empty_queue()


# --- spamd stopped --------------------------------------------------------------------------------


def test_spamd_stopped_passes_or_tempfails_per_config_and_nothing_is_lost(
        split, split_postfix, front, sink, tmp_path_factory):
    def configure(socket: str, failure: str):
        before = split.log_text().count("configuration reloaded")
        split.write_config(config(socket, None, failure=failure), {})
        split.reload()
        assert split.log_text().count("configuration reloaded") > before, split.log_text()[-3000:]

    own = SpamdProcess(str(tmp_path_factory.mktemp("spamd-stop"))).start()
    try:
        configure(own.socket_spec("inet"), "pass")
        reply = split_postfix.send("mx", SENDER, [BOB], gtube(subject("before-stop")))
        assert reply.code == 554, reply
        own.stop()

        subj = subject("stopped-pass")
        reply = split_postfix.send("mx", SENDER, [BOB], gtube(subj))
        assert reply.code == 250, reply                      # not marked spam, not refused
        [got] = copies(sink, subj)
        assert got.message["X-Spam-Flag"] is None
        assert "SPAM CHECK FAILED: spamd: SpamdUnavailable" in split.log_text()

        configure(own.socket_spec("inet"), "tempfail")
        subj = subject("stopped-tempfail")
        accepted = front.send("mx", SENDER, [BOB], gtube(subj))
        assert accepted.code == 250, accepted
        wait_until(lambda: any(q["queue_id"] == accepted.queue_id and any(
            "451 4.3.0 Temporary content check failure" in r.get("delay_reason", "") for r in q["recipients"])
            for q in front.queue()), 60, what="the front to keep the message deferred")

        own.start()
        configure(own.socket_spec("inet"), "tempfail")   # a restarted spamd listens on a new port
        blocked = split.log_text().count("Blocked SPAM {RejectedInbound}")
        front.flush()
        # checked once spamd was back: refused as spam, so the front bounces it (nothing lost)
        wait_until(lambda: split.log_text().count("Blocked SPAM {RejectedInbound}") > blocked, 60,
                   what="the deferred message to be checked again")
        wait_until(lambda: not [q for q in front.queue() if q["queue_id"] == accepted.queue_id], 60,
                   what="the front to finish with the deferred message")
    finally:
        own.stop()
