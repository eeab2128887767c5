"""pymavis behind a real Postfix built from contrib/postfix: delivered headers, the bank
chosen by the listener, a 552 for oversized mail with the per-bank limit, delrcpt for a
blocked minority, a 451 with the message kept by the sending MTA when pymavis fails
internally, and mail that keeps flowing across configuration reloads.

One sink, one pymavis process and one filtering Postfix for the module; a second Postfix
("sender", no milter) relays into the filtering one where a test needs an MTA that keeps
the message in its own queue.
"""

from __future__ import annotations

import re
import uuid

import pytest

from conftest import scanners_yaml
from harness.net import wait_until
from harness.postfix import PostfixInstance, front_mta
from harness.pymavisd import PymavisProcess

SENDER = "alice@example.org"
FAULT = "please-fail-internally"

MAIN = """\
mydomain: example.test
daemon_name_policy: {ORIGINATING: ORIGINATING}
policy:
  mynetworks: [10.0.0.0/8]         # loopback test clients count as the Internet
  local_domains: [example.net]
  message_size_limit:
    - {"small@example.net": 1500}
    - 100000
"""
BANKS = {"banks.yaml": """\
    ORIGINATING:
      originating: true
      message_size_limit: 2000
    """}


def message(subject: str, body: str = "hello\r\n", to: str = "bob@example.net") -> bytes:
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n{body}").encode()


def subject(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


BIG_BODY = ("y" * 76 + "\r\n") * 40   # ~3.1 KB: over the ORIGINATING limit, under the default


@pytest.fixture(scope="module")
def pymavis(tmp_path_factory, clamd):
    main = MAIN + scanners_yaml(clamd)
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis")), main, BANKS,
                          env={"PYMAVIS_FAULT_INJECT": FAULT}).start()
    proc.main = main
    yield proc
    assert proc.stop() == 0
    assert "pymavis stopped" in proc.log_text()


@pytest.fixture(scope="module")
def postfix(public_tmp, sink, pymavis):
    pf = PostfixInstance(public_tmp / "postfix", sink_port=sink.port, milter=pymavis.socket_spec)
    with pf:
        yield pf


def delivered(sink, subj, timeout=30):
    return wait_until(lambda: next((m for m in sink.messages if m.message["Subject"] == subj), None),
                      timeout, what=f"{subj!r} at the sink")


def pymavis_line(pymavis, subj_mail_id_hint=None, *, contains):
    return wait_until(lambda: next((l for l in reversed(pymavis.log_text().splitlines()) if contains in l), None),
                      15, what=f"pymavis log line with {contains!r}")


def test_clean_mail_is_delivered_with_our_header(postfix, sink, pymavis):
    subj = subject("clean")
    reply = postfix.send("mx", SENDER, ["bob@example.net"], message(subj))
    assert reply.code == 250, reply
    msg = delivered(sink, subj).message
    assert msg["X-Virus-Scanned"] == "pymavis at example.test"
    raw = delivered(sink, subj).data
    assert b"\r\nX-Virus-Scanned: pymavis at example.test\r\n" in b"\r\n" + raw  # one space, as written
    line = pymavis_line(pymavis, contains=f"Queue-ID: {reply.queue_id}")
    assert "Passed CLEAN {RelayedInbound}" in line and "bank: DEFAULT," in line
    assert re.search(r"\[127\.0\.0\.1\]:\d+ <alice@example\.org> -> <bob@example\.net>", line)


def test_submission_listener_selects_the_originating_bank(postfix, sink, pymavis):
    subj = subject("submission")
    reply = postfix.send("submission", SENDER, ["bob@example.net"], message(subj))
    assert reply.code == 250, reply
    delivered(sink, subj)
    line = pymavis_line(pymavis, contains=f"Queue-ID: {reply.queue_id}")
    assert "bank: ORIGINATING," in line and "{RelayedInternal}" in line


def test_oversized_mail_gets_552_with_the_per_bank_limit(postfix, sink, pymavis):
    subj = subject("big-submission")
    reply = postfix.send("submission", SENDER, ["bob@example.net"], message(subj, BIG_BODY))
    assert reply.code == 552, reply
    assert reply.text.startswith("5.3.4 Message size (")
    assert "exceeds recipient's size limit (2000)" in reply.text
    # The same message on the MX listener is under the default bank's 100000.
    subj2 = subject("big-mx")
    assert postfix.send("mx", SENDER, ["bob@example.net"], message(subj2, BIG_BODY)).code == 250
    delivered(sink, subj2)
    assert not any(m.message["Subject"] == subj for m in sink.messages)


def test_blocked_minority_is_removed_with_delrcpt(postfix, sink, pymavis):
    subj = subject("mixed")
    reply = postfix.send("mx", SENDER, ["small@example.net", "bob@example.net"], message(subj, BIG_BODY))
    assert reply.code == 250, reply
    got = delivered(sink, subj)
    assert got.rcpt_tos == ("bob@example.net",)
    line = pymavis_line(pymavis, contains="Blocked OVERSIZED {BouncedInbound}")
    assert "<small@example.net>" in line or "small@example.net" in pymavis.log_text()


def test_internal_error_answers_451_and_the_sender_keeps_the_message(postfix, sink, pymavis, public_tmp):
    subj = subject(FAULT)
    direct = postfix.send("mx", SENDER, ["bob@example.net"], message(subj))
    assert direct.code == 451 and direct.text.startswith("4.3.0 "), direct
    assert "internal error" in pymavis.log_text() and "InjectedFault" in pymavis.log_text()

    # An MTA in front keeps it in its queue, deferred with our 451 as the reason.
    front = front_mta(public_tmp / "front", postfix, sink.port)
    with front:
        subj2 = subject(FAULT)
        assert front.send("mx", SENDER, ["bob@example.net"], message(subj2)).code == 250

        def deferred():
            return [q for q in front.queue()
                    if any("4.3.0" in r.get("delay_reason", "") for r in q.get("recipients", []))]

        kept = wait_until(deferred, 60, what="the front MTA to defer the message with 4.3.0")
        assert kept[0]["recipients"][0]["address"] == "bob@example.net"
    assert not any(m.message["Subject"] in (subj, subj2) for m in sink.messages)


def test_mail_keeps_flowing_across_reloads(postfix, sink, pymavis):
    pymavis.write_config(pymavis.main.replace("mydomain: example.test", "mydomain: reloaded.test"), BANKS)
    pymavis.reload()
    assert "configuration reloaded" in pymavis.log_text()
    subj = subject("after-reload")
    assert postfix.send("mx", SENDER, ["bob@example.net"], message(subj)).code == 250
    assert delivered(sink, subj).message["X-Virus-Scanned"] == "pymavis at reloaded.test"

    # A broken configuration is refused; the running one stays and mail still flows.
    pymavis.write_config(pymavis.main + "policy_typo: 1\n", BANKS)
    pymavis.reload()
    assert "reload of" in pymavis.log_text() and "unknown key 'policy_typo'" in pymavis.log_text()
    subj = subject("after-bad-reload")
    assert postfix.send("mx", SENDER, ["bob@example.net"], message(subj)).code == 250
    assert delivered(sink, subj).message["X-Virus-Scanned"] == "pymavis at reloaded.test"
    pymavis.write_config(pymavis.main, BANKS)   # leave the module's process as the other tests expect it
    pymavis.reload()


def test_a_header_field_over_64k_passes(postfix, sink, pymavis):
    """libmilter drops a connection on a command packet over 64 KiB, which would tempfail such
    a message forever. Postfix (3.7, as configured here) cuts an 87 KB header field to about
    60 KB before the milter sees it, so the mail passes; this guards that path."""
    subj = subject("long-header")
    long_value = " ".join(["=?utf-8?q?long_header_word?="] * 3000)   # ~90 KB, folded below
    folded = "\r\n ".join(long_value[i:i + 900] for i in range(0, len(long_value), 900))
    data = message(subj).replace(b"\r\n\r\n", f"\r\nX-Long: {folded}\r\n\r\n".encode(), 1)
    reply = postfix.send("mx", SENDER, ["bob@example.net"], data)
    assert reply.code == 250, reply
    got = delivered(sink, subj)
    assert got.message["X-Virus-Scanned"] == "pymavis at example.test"
    line = pymavis_line(pymavis, contains=f"Queue-ID: {reply.queue_id}")
    assert int(re.search(r"size: (\d+)", line).group(1)) > 50000, line
