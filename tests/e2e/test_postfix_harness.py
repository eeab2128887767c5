"""The real-Postfix harness works: private instances built from contrib/postfix relay to the
test sink, talk to a milter with the contrib macro lists, tempfail without a milter, and tell
the milter which listener the client used.

Three Postfix instances (no milter, the null milter, a milter port where nothing listens) are
started once for the module and share one sink; each test sends with its own Subject and
finds its own message. Teardown stops every instance and checks its master has exited.
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import uuid
from pathlib import Path

import pytest

from harness.net import closed_port, free_port, port_is_open, wait_until
from harness.nullmilter import NullMilterProcess, parse_macro_header
from harness.postfix import (
    CONTRIB_MAIN_CF,
    CONTRIB_MASTER_CF,
    PostfixInstance,
    parse_main_cf,
    parse_master_cf,
    process_alive,
    smtp_send,
)
from harness.sink import SMTPSink, SinkMessage

SENDER = "alice@example.org"
RCPT = "bob@example.net"


def message(subject: str, body: str = "hello\r\n") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n{body}"
    ).encode()


def unique_subject(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:12]}"


def received(sink: SMTPSink, subject: str, timeout: float = 30) -> SinkMessage:
    """Wait for the message with this Subject to reach the sink."""

    def find():
        return next((m for m in sink.messages if m.message["Subject"] == subject), None)

    return wait_until(find, timeout, what=f"message {subject!r} at the sink")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    # Not pytest's tmp_path: its parents are mode 0700 and Postfix daemons run as `postfix`.
    path = Path(tempfile.mkdtemp(prefix="pymavis-e2e-postfix-"))
    path.chmod(0o755)  # mkdtemp makes it 0700
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _instance(workdir: Path, name: str, sink: SMTPSink, milter: str | None):
    pf = PostfixInstance(workdir / name, sink_port=sink.port, milter=milter)
    pf.start()
    try:
        yield pf
    finally:
        pid = pf.master_pid
        pf.stop()
        assert pid is not None and not process_alive(pid), f"master {pid} still running"
        assert not any(port_is_open("127.0.0.1", p) for p in pf.ports.values())


@pytest.fixture(scope="module")
def null_milter(workdir):
    with NullMilterProcess(free_port(), log_path=workdir / "nullmilter.log") as m:
        yield m


@pytest.fixture(scope="module")
def postfix_plain(workdir, sink):
    yield from _instance(workdir, "plain", sink, milter=None)


@pytest.fixture(scope="module")
def postfix_milter(workdir, sink, null_milter):
    yield from _instance(workdir, "milter", sink, milter=null_milter.postfix_spec)


@pytest.fixture(scope="module")
def postfix_dead_milter(workdir, sink):
    # A port that refuses connections: Postfix's connect to the milter fails at once.
    with closed_port() as port:
        yield from _instance(workdir, "dead-milter", sink, milter=f"inet:127.0.0.1:{port}")


# --- the configuration comes from contrib/postfix ---------------------------------------


def test_instance_config_is_built_from_the_contrib_fragments(postfix_milter, null_milter):
    effective = postfix_milter.postconf()
    for p in parse_main_cf(CONTRIB_MAIN_CF.read_text()):
        if p.mark:
            continue
        assert effective[p.name] == p.value, p.name
    # The one marked parameter carries the test milter's address.
    assert effective["smtpd_milters"] == null_milter.postfix_spec
    assert effective["milter_default_action"] == "tempfail"

    master = (postfix_milter.config_dir / "master.cf").read_text()
    written = {e.service: e for e in parse_master_cf(master)}
    for entry in parse_master_cf(CONTRIB_MASTER_CF.read_text()):
        port = postfix_milter.ports[entry.marks["listener"]]
        got = written[f"127.0.0.1:{port}"]
        assert got.command == entry.command == "smtpd"
        kept = [o for o in entry.options if not (
            entry.marks.get("strip") == "tls-sasl"
            and (o[0].startswith(("smtpd_tls_", "smtpd_sasl_"))
                 or "permit_sasl_authenticated" in o[1]))]
        assert got.options == kept
    assert ("milter_macro_daemon_name", "ORIGINATING") in written[
        f"127.0.0.1:{postfix_milter.ports['submission']}"].options


def test_fragment_parsers_follow_postfix_syntax():
    main = parse_main_cf("# c\n# @harness: milter\na = 1\n  2\nb =\n#x\nc = x # not a comment\n")
    assert [(p.name, p.value, p.mark) for p in main] == [
        ("a", "1 2", "milter"), ("b", "", ""), ("c", "x # not a comment", "")]
    master = parse_master_cf(
        "# @harness: listener=mx strip=tls-sasl\nsmtp inet n - y - - smtpd\n"
        "  # a comment inside the entry\n  -o a=1\n\n  -o b=\npickup unix n - y 60 1 pickup\n")
    assert master[0].marks == {"listener": "mx", "strip": "tls-sasl"}
    assert master[0].options == [("a", "1"), ("b", "")]
    assert (master[1].service, master[1].marks, master[1].args) == ("pickup", {}, ())


def test_sink_and_smtp_send_without_postfix():
    with SMTPSink() as own:
        data = b"Subject: direct\n\n.starts with a dot\n"
        reply = smtp_send("127.0.0.1", own.port, SENDER, [RCPT, "x@example.com"], data)
        assert (reply.code, reply.stage, reply.queue_id) == (250, "eom", "SINK000001")
        [got] = own.wait_for(1, timeout=5)
        assert (got.mail_from, got.rcpt_tos) == (SENDER, (RCPT, "x@example.com"))
        assert got.data == b"Subject: direct\r\n\r\n.starts with a dot\r\n"
        own.set_reply("550 5.1.1 no such user", stage="rcpt")
        own.set_reply("452 4.3.1 full", stage="mail")
        own.set_reply("554 5.7.1 go away", stage="eom")
        assert smtp_send("127.0.0.1", own.port, SENDER, [RCPT], data)[:3] == (
            550, "5.1.1 no such user", "rcpt")
        assert smtp_send("127.0.0.1", own.port, SENDER, [RCPT], data)[:3] == (
            452, "4.3.1 full", "mail")
        assert smtp_send("127.0.0.1", own.port, SENDER, [RCPT], data)[:3] == (
            554, "5.7.1 go away", "eom")
        assert own.rejected == 3 and len(own.messages) == 1
        with pytest.raises(TimeoutError):
            own.wait_for(2, timeout=0.2)


# --- 1. no milter: relay to the sink ----------------------------------------------------


def test_relays_without_milter_to_the_sink(postfix_plain, sink):
    subject = unique_subject("plain")
    body = "hello\r\n.a line that starts with a dot\r\n..two dots\r\n"
    reply = postfix_plain.send("mx", SENDER, [RCPT, "carol@example.com"], message(subject, body))
    assert (reply.code, reply.stage) == (250, "eom"), reply
    got = received(sink, subject)
    assert got.mail_from == SENDER
    assert sorted(got.rcpt_tos) == sorted([RCPT, "carol@example.com"])
    msg = got.message
    assert msg["From"] == SENDER
    assert got.data.endswith(body.encode())  # CRLF kept, dot-stuffing undone
    assert msg.get_content().replace("\r\n", "\n") == body.replace("\r\n", "\n")
    assert "X-Null-Milter" not in msg
    assert f"id {reply.queue_id}" in msg["Received"]
    postfix_plain.wait_for_log(rf"{reply.queue_id}: to=<{RCPT}>.*status=sent")


def test_deferred_mail_waits_in_the_queue_until_the_sink_recovers(postfix_plain, sink):
    subject = unique_subject("deferred")
    sink.set_reply("451 4.3.0 sink says later", count=1000, stage="eom")
    try:
        reply = postfix_plain.send("mx", SENDER, [RCPT], message(subject))
        assert reply.code == 250, reply
        postfix_plain.wait_for_log(rf"{reply.queue_id}: .*status=deferred .*sink says later")


        def deferred_entry():
            # Between retries the message sits in "deferred" with the reason; during a
            # retry (every 1-2 s here) it is "active" and has none.
            return next((e for e in postfix_plain.queue()
                         if e["queue_id"] == reply.queue_id and e["queue_name"] == "deferred"),
                        None)

        try:
            entry = wait_until(deferred_entry, 30, what="message in the deferred queue")
        except TimeoutError:
            pytest.fail(f"{reply.queue_id} never seen deferred; queue: {postfix_plain.queue()}"
                        f"\nsink: {sink.messages}\nlog:\n{postfix_plain.log_text()}")
        assert entry["sender"] == SENDER
        [recipient] = entry["recipients"]
        assert recipient["address"] == RCPT
        assert "sink says later" in recipient["delay_reason"]
    finally:
        sink.clear_replies()
    postfix_plain.flush()
    received(sink, subject)
    postfix_plain.wait_for_empty_queue()


def test_reload_applies_a_changed_main_cf(postfix_plain):
    postfix_plain.extra_main["smtpd_banner"] = "$myhostname ESMTP reloaded"
    postfix_plain.reload()
    client = smtplib.SMTP(timeout=30)
    try:
        code, banner = client.connect("127.0.0.1", postfix_plain.ports["mx"])
    finally:
        client.close()
    assert (code, banner) == (220, b"pymavis-test.localdomain ESMTP reloaded")


# --- 2. the null milter: headers and connect macros -------------------------------------


def test_null_milter_adds_header_and_sees_connect_macros(postfix_milter, sink):
    subject = unique_subject("milter")
    reply = postfix_milter.send("mx", SENDER, [RCPT], message(subject))
    assert reply.code == 250, reply
    msg = received(sink, subject).message
    assert msg["X-Null-Milter"] == "yes"
    connect = parse_macro_header(msg["X-Null-Macros-Connect"])
    assert connect["{daemon_port}"] == str(postfix_milter.ports["mx"])
    assert connect["{client_addr}"] == "127.0.0.1"
    assert connect["{daemon_addr}"] == "127.0.0.1"
    assert connect["{client_port}"].isdigit()
    assert connect["j"] == "pymavis-test.localdomain"
    # Not ORIGINATING: the MX listener leaves milter_macro_daemon_name at $myhostname.
    assert connect["{daemon_name}"] == "pymavis-test.localdomain"
    mail = parse_macro_header(msg["X-Null-Macros-Mail"])
    assert mail["{mail_addr}"] == SENDER
    rcpt = parse_macro_header(msg["X-Null-Macros-Rcpt"])
    assert rcpt["{rcpt_addr}"] == RCPT
    assert rcpt["{rcpt_mailer}"] == "smtp"
    assert parse_macro_header(msg["X-Null-Macros-Eom"])["i"] == reply.queue_id


# --- 3. milter unreachable: tempfail ----------------------------------------------------


def test_unreachable_milter_tempfails_and_keeps_nothing(postfix_dead_milter, sink):
    subject = unique_subject("dead")
    reply = postfix_dead_milter.send("mx", SENDER, [RCPT], message(subject))
    # Postfix 3.7 accepts the connection and EHLO, then answers MAIL FROM with the
    # milter_default_action = tempfail reply.
    assert (reply.code, reply.stage) == (451, "mail"), reply
    assert reply.text.startswith("4.7.1 Service unavailable - try again later")
    postfix_dead_milter.wait_for_log(r"connect to Milter service inet:127\.0\.0\.1:\d+: "
                                     r"Connection refused")
    postfix_dead_milter.wait_for_log(r"NOQUEUE: milter-reject: MAIL from .*: 451 4\.7\.1")
    assert postfix_dead_milter.queue() == []
    assert all(m.message["Subject"] != subject for m in sink.messages)


# --- 4. submission and resubmission listeners -------------------------------------------


def test_submission_listener_passes_originating_daemon_name(postfix_milter, sink):
    subject = unique_subject("submission")
    reply = postfix_milter.send("submission", SENDER, [RCPT], message(subject))
    assert reply.code == 250, reply
    msg = received(sink, subject).message
    connect = parse_macro_header(msg["X-Null-Macros-Connect"])
    assert connect["{daemon_name}"] == "ORIGINATING"
    assert connect["{daemon_port}"] == str(postfix_milter.ports["submission"])
    postfix_milter.wait_for_log(rf"postfix/submission/smtpd\[\d+\]: {reply.queue_id}: client=")


def test_resubmit_listener_bypasses_the_milter(postfix_milter, sink):
    subject = unique_subject("resubmit")
    reply = postfix_milter.send("resubmit", SENDER, [RCPT], message(subject))
    assert reply.code == 250, reply
    msg = received(sink, subject).message
    assert "X-Null-Milter" not in msg
    postfix_milter.wait_for_log(rf"postfix/resubmit/smtpd\[\d+\]: {reply.queue_id}: client=")
