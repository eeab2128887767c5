"""Notifications: the DSN's structure, header safety, the suppression rules, templates, and the
durable outbox (retries, restart, give-up, a real SMTP listener)."""

import email
import email.policy
import json
import re
import smtplib
import threading

import pytest

from harness.sink import SMTPSink
from pymavis import notify
from pymavis.notify import Facts, Notice, Outbox, OutboxError, TemplateError, Templates

HDRFROM = '"Content-filter at mx.example.net" <postmaster@mx.example.net>'
ORIGINAL = (b"Received: from client (client [192.0.2.1])\r\n\tby mx.example.net\r\n"
            b"From: J\xc3\xb6rg <joerg@example.org>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
            b"X-Raw: \xe4\xf6\xfc latin-1\r\nMessage-ID: <1@example.org>\r\n\r\n")
FAILED = [("bob@example.com", "5.7.0", "554 5.7.0 Reject, id=AbC123 - INFECTED: Eicar-Signature"),
          ("ann@example.com", "5.7.1", "554 5.7.1 Reject, id=AbC123 - INFECTED: Eicar-Signature")]
ALL_MACROS_TEMPLATE = ("Subject: ${subject} ${sender} ${recipients} ${virus_names} ${reason} ${from_header}\n"
                       "X-Info: ${bank} ${queue_id}\n\n${subject}\n${recipients}\n${virus_names}\n")


def facts(**changes):
    base = dict(mail_id="AbC123", category="VIRUS", reason="INFECTED: Eicar-Signature", sender="joerg@example.org",
                recipients=("bob@example.com", "ann@example.com"), subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
                from_header="J\u00f6rg <joerg@example.org>", message_id="<1@example.org>",
                virus_names=("Eicar-Signature",), date=1_700_000_000.0, myhostname="mx.example.net",
                queue_id="4QXYZ", client_ip="192.0.2.1", bank="MYNETS")
    base.update(changes)
    return Facts(**base)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def content(part) -> str:
    """A text part's content with LF line ends (8bit parts keep the CRLF they came with)."""
    return part.get_content().replace("\r\n", "\n")


def dsn(f=None, templates=None, original=ORIGINAL, failed=FAILED):
    return notify.sender_dsn(f or facts(), original, failed, templates=templates or Templates(), hdrfrom=HDRFROM,
                             reporting_mta="mx.example.net", arrival_date=1_700_000_000.0)


def admin(f=None, templates=None, admins=("virusalert@example.net",)):
    return notify.admin_notice(f or facts(), admins, templates=templates or Templates(), hdrfrom=HDRFROM,
                               mail_from="")


def warning(f=None, templates=None, rcpt="bob@example.com"):
    return notify.recipient_warning(f or facts(), rcpt, templates=templates or Templates(), hdrfrom=HDRFROM,
                                    mail_from="postmaster@mx.example.net")


def assert_smtp_data(data: bytes):
    """Valid SMTP DATA content: CRLF line ends only, no NUL, every line at most 998 bytes."""
    assert data.endswith(b"\r\n")
    assert b"\0" not in data
    assert not re.search(rb"[^\r]\n|\r[^\n]", data), "bare CR or LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def header_names(msg) -> list[str]:
    return [name.lower() for name in msg.keys()]


# -- the DSN -------------------------------------------------------------------------------

def test_dsn_is_a_multipart_report_with_three_parts():
    notice = dsn()
    assert (notice.kind, notice.mail_from, notice.rcpts) == ("dsn", "", ("joerg@example.org",))
    assert_smtp_data(notice.data)
    msg = parse(notice.data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert header_names(msg) == ["from", "to", "subject", "date", "message-id", "auto-submitted", "mime-version",
                                 "content-type", "content-transfer-encoding"]
    assert msg["To"].addresses[0].addr_spec == "joerg@example.org"
    assert msg["From"].addresses[0].addr_spec == "postmaster@mx.example.net"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith("@mx.example.net>")
    assert msg["Subject"] == "Undelivered mail: VIRUS found in your message"
    text, status, headers = msg.iter_parts()
    assert [p.get_content_type() for p in (text, status, headers)] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    body = content(text)
    assert "AbC123" in body and "INFECTED: Eicar-Signature" in body and "Grüße" in body
    assert "    bob@example.com\n    ann@example.com\n" in body

    per_message, *per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.net"
    assert per_message["X-Pymavis-Mail-Id"] == "AbC123"
    assert per_message["Arrival-Date"] == email.utils.formatdate(1_700_000_000.0, localtime=True)
    assert [(b["Final-Recipient"], b["Action"], b["Status"], b["Diagnostic-Code"]) for b in per_rcpt] == [
        ("rfc822; bob@example.com", "failed", "5.7.0", "smtp; " + FAILED[0][2]),
        ("rfc822; ann@example.com", "failed", "5.7.1", "smtp; " + FAILED[1][2])]

    assert headers.get_payload(decode=True) == ORIGINAL[:-2]   # the header section, 8-bit intact


def test_dsn_original_headers_get_crlf_and_long_lines_split():
    original = b"Subject: x\nX-Long: " + b"a" * 3000 + b"\nTo: b\n\nbody must not appear\n"
    notice = dsn(original=original)
    assert_smtp_data(notice.data)
    part = list(parse(notice.data).iter_parts())[2].get_payload(decode=True)
    assert part.startswith(b"Subject: x\r\nX-Long: aaa") and part.endswith(b"\r\nTo: b\r\n")
    assert b"body" not in part


def test_dsn_refuses_null_sender_and_temporary_status():
    with pytest.raises(ValueError, match="null sender"):
        dsn(facts(sender=""))
    with pytest.raises(ValueError, match="'4.7.1'.*5.x.x"):
        dsn(failed=[("bob@example.com", "4.7.1", "451 4.7.1 later")])


def test_non_ascii_subject_is_rfc2047_encoded(tmp_path):
    (tmp_path / "dsn-sender.txt").write_text("Subject: Re: ${subject}\n\nbody\n")
    notice = dsn(facts(subject="Grüße aus Köln, " * 6), templates=Templates(str(tmp_path)))
    head = notice.data.split(b"\r\n\r\n")[0]
    subject_lines = re.search(rb"^Subject:.*?(?=\r\n\S)", head, re.S | re.M).group(0)
    assert subject_lines.isascii() and b"=?utf-8?" in subject_lines
    assert b"\r\n " in subject_lines                 # folded
    assert all(len(line) <= 78 for line in subject_lines.split(b"\r\n"))
    assert parse(notice.data)["Subject"] == "Re: " + ("Grüße aus Köln, " * 6).strip()


def test_admin_notice_and_recipient_warning():
    a = admin()
    assert (a.kind, a.mail_from, a.rcpts) == ("admin", "", ("virusalert@example.net",))
    msg = parse(a.data)
    assert msg["Subject"] == "VIRUS in mail FROM <joerg@example.org>"
    assert msg["Auto-Submitted"] == "auto-generated" and msg.get_content_type() == "text/plain"
    assert "4QXYZ" in content(msg) and "Eicar-Signature" in content(msg)
    w = warning()
    assert (w.kind, w.mail_from, w.rcpts) == ("recipient", "postmaster@mx.example.net", ("bob@example.com",))
    msg = parse(w.data)
    assert msg["To"] == "bob@example.com" and "AbC123" in content(msg)
    for notice in (a, w):
        assert_smtp_data(notice.data)


def test_long_body_line_goes_quoted_printable(tmp_path):
    (tmp_path / "notice-admin.txt").write_text("Subject: x\n\n" + "${subject} " * 8 + "\n")
    notice = admin(facts(subject="ä" * 300), templates=Templates(str(tmp_path)))
    assert_smtp_data(notice.data)
    msg = parse(notice.data)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(msg).count("ä") == 8 * 247 and "ä... ä" in content(msg)   # cut to 250 with "..."


INJECTIONS = {
    "crlf": "hi\r\nBcc: victim@example.com",
    "lf": "hi\nBcc: victim@example.com",
    "cr": "hi\rBcc: victim@example.com",
    "fold-then-header": "hi\r\n Bcc: x\r\nBcc: victim@example.com",
    "nul": "hi\0\r\nBcc: victim@example.com",
    "encoded-word": "=?utf-8?q?hi=0D=0ABcc=3A_victim=40example=2Ecom?=",
    "line-separator": "hi\u2028Bcc: victim@example.com",
    "nel": "hi\x85Bcc: victim@example.com",
}


@pytest.mark.parametrize("field", ["subject", "sender", "recipient", "virus_name"])
@pytest.mark.parametrize("payload", INJECTIONS.values(), ids=INJECTIONS.keys())
def test_no_header_injection(tmp_path, field, payload):
    for name in notify.TEMPLATE_NAMES:
        (tmp_path / name).write_text(ALL_MACROS_TEMPLATE)
    templates = Templates(str(tmp_path))
    changes = {"subject": {"subject": payload}, "sender": {"sender": "a" + payload + "@example.org"},
               "recipient": {"recipients": ("b" + payload + "@example.com",)},
               "virus_name": {"virus_names": (payload,), "reason": "INFECTED: " + payload}}[field]
    f = facts(**changes)
    rcpt = f.recipients[0]
    notices = [dsn(f, templates, failed=[(rcpt, "5.7.0", "554 5.7.0 " + payload)]),
               admin(f, templates, admins=(rcpt,)), warning(f, templates, rcpt=rcpt)]
    for notice in notices:
        assert_smtp_data(notice.data)
        msg = parse(notice.data)
        assert "bcc" not in header_names(msg)
        assert header_names(msg)[:7] == ["from", "to", "subject", "x-info", "date", "message-id", "auto-submitted"]
        assert len(msg["To"].addresses) == 1 and not msg.defects
        assert not re.search(rb"^bcc:", notice.data, re.I | re.M)
        for part in msg.walk():
            assert "bcc" not in header_names(part)
        if notice.kind == "dsn":
            for block in list(msg.iter_parts())[1].get_payload():
                assert "bcc" not in header_names(block)


# -- when the sender is not told -------------------------------------------------------------

FORGERS = [re.compile(r"^Worm\."), re.compile(r"Sobig")]


@pytest.mark.parametrize("changes, headers, kwargs, expected", [
    ({}, [("Subject", "hi")], {}, None),
    ({"sender": ""}, [], {}, "null sender"),
    ({"virus_names": ("Eicar", "W32.Sobig.F")}, [], {}, "sender forged by the virus (W32.Sobig.F)"),
    ({"virus_names": ("Eicar",)}, [], {}, None),
    ({}, [("Precedence", "bulk")], {}, "bulk mail (Precedence: bulk)"),
    ({}, [("PRECEDENCE", " List ")], {}, "bulk mail (Precedence: list)"),
    ({}, [("precedence", "junk (comment)")], {}, "bulk mail (Precedence: junk)"),
    ({}, [("Precedence", "first-class")], {}, None),
    ({}, [("List-Id", "<x.lists.example.org>")], {}, "automatic mail"),
    ({}, [("Auto-Submitted", "auto-replied")], {}, "automatic mail"),
    ({}, [("Auto-Submitted", " No (a person wrote it)")], {}, None),
    ({}, [], {"notify_never": True}, "NOTIFY=NEVER"),
    ({}, [], {"spam_over_cutoff": True}, "spam above the DSN cutoff"),
], ids=["none", "null-sender", "forged", "not-forging", "bulk", "list", "junk", "first-class", "list-id",
        "auto-replied", "auto-submitted-no", "notify-never", "spam-cutoff"])
def test_dsn_suppressed(changes, headers, kwargs, expected):
    args = {"fake_sender_patterns": FORGERS, "notify_never": False, "spam_over_cutoff": False, **kwargs}
    assert notify.dsn_suppressed(facts(**changes), headers, **args) == expected


# -- templates -----------------------------------------------------------------------------

def test_override_directory_replaces_one_template(tmp_path):
    (tmp_path / "warn-recipient.txt").write_text("# ours\nSubject: Blocked: ${mail_id}\n\nHeld ${quarantine}.\n")
    (tmp_path / "README").write_text("not a template: ignored")
    templates = Templates(str(tmp_path))
    assert templates.paths["warn-recipient.txt"] == str(tmp_path / "warn-recipient.txt")
    assert templates.paths["dsn-sender.txt"] == str(notify.SHIPPED / "dsn-sender.txt")
    msg = parse(warning(facts(quarantine="virus-AbC123"), templates).data)
    assert msg["Subject"] == "Blocked: AbC123" and content(msg) == "Held virus-AbC123.\n"
    assert parse(dsn(templates=templates).data)["Subject"] == "Undelivered mail: VIRUS found in your message"


@pytest.mark.parametrize("text, message", [
    ("Subject: x\n\nScore ${spam_scroe}\n", r"notice-admin.txt:3: unknown macro \$\{spam_scroe\} "
                                           r"\(did you mean \$\{spam_score\}\?\)"),
    ("Subject: ${nosuch}\n\nbody\n", r"notice-admin.txt:1: unknown macro \$\{nosuch\}"),
    ("Subject: x\n\nprice $5\n", r"notice-admin.txt:3: '\$' not followed by a macro name"),
    ("Subject: x\nTo: someone@example.com\n\nbody\n", r"notice-admin.txt:2: To is set by pymavis"),
    ("X-Only: x\n\nbody\n", r"notice-admin.txt: no Subject"),
    ("Subject x\n\nbody\n", r"notice-admin.txt:1: expected a header line"),
])
def test_bad_template_is_rejected_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "notice-admin.txt").write_text(text)
    with pytest.raises(TemplateError, match=re.escape(str(tmp_path)) + ".*" + message):
        Templates(str(tmp_path))


def test_unknown_template_file_and_missing_directory(tmp_path):
    (tmp_path / "notice-admins.txt").write_text("Subject: x\n\n")
    with pytest.raises(TemplateError, match=r"notice-admins.txt: not a notice template "
                                            r"\(did you mean notice-admin.txt\?\)"):
        Templates(str(tmp_path))
    with pytest.raises(TemplateError, match=re.escape(str(tmp_path / "nope"))):
        Templates(str(tmp_path / "nope"))


def test_dollar_sign_and_plain_macro_forms(tmp_path):
    (tmp_path / "notice-admin.txt").write_text("Subject: $category costs $$5\n\nid $mail_id\n")
    msg = parse(admin(templates=Templates(str(tmp_path))).data)
    assert msg["Subject"] == "VIRUS costs $5" and content(msg) == "id AbC123\n"


# -- the outbox ----------------------------------------------------------------------------

class Recorder:
    """A `send` that records what it was given, failing the first `fail` calls."""

    def __init__(self, fail: int = 0):
        self.sent: list[Notice] = []
        self.calls = 0
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, notice: Notice) -> str:
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail:
                raise ConnectionRefusedError(f"attempt {self.calls}: connection refused")
            self.sent.append(notice)
            return "250 2.0.0 Ok: queued as TEST"


class Log:
    """A logger stand-in for the outbox: keeps each message as formatted."""

    def __init__(self):
        self.lines: list[str] = []

    def _keep(self, msg, *args):
        self.lines.append(msg % args)

    debug = info = warning = error = _keep

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


NOTICE = Notice("admin", "", ("virusalert@example.net",), b"Subject: x\r\n\r\nbody\r\n")


@pytest.fixture
def outboxes():
    started = []
    yield started
    for box in started:
        box.stop()


def make(outboxes, directory, send, **kw) -> Outbox:
    box = Outbox(directory, send, log=kw.pop("log", Log()), **kw)
    outboxes.append(box)
    return box


def test_put_then_flush_sends_and_deletes(tmp_path, outboxes):
    send = Recorder()
    box = make(outboxes, tmp_path / "q", send)
    box.start()
    names = [box.put(NOTICE), box.put(Notice("dsn", "", ("a@example.org",), b"x\r\n"))]
    assert all(n.endswith(".notice") for n in names) and len(set(names)) == 2
    assert box.flush(10) and box.pending() == 0
    assert send.sent == [NOTICE, Notice("dsn", "", ("a@example.org",), b"x\r\n")]
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["failed", "tmp"]
    assert not list((tmp_path / "q" / "tmp").iterdir())


def test_queue_file_format(tmp_path):
    box = Outbox(tmp_path, Recorder())
    name = box.put(NOTICE)
    line, _, data = (tmp_path / name).read_bytes().partition(b"\n")
    envelope = json.loads(line)
    assert (envelope["kind"], envelope["mail_from"], envelope["rcpts"]) == ("admin", "", ["virusalert@example.net"])
    assert data == NOTICE.data and box.pending() == 1


def test_failing_send_is_retried_until_it_succeeds(tmp_path, outboxes):
    log = Log()
    send = Recorder(fail=2)
    box = make(outboxes, tmp_path, send, retry_s=0.01, log=log)
    box.put(NOTICE)
    box.start()
    assert box.flush(10)
    assert send.calls == 3 and send.sent == [NOTICE]
    assert "attempt 2 failed: attempt 2: connection refused" in log.text
    assert "sent to <virusalert@example.net>: 250 2.0.0 Ok" in log.text


def test_notices_left_on_disk_are_sent_by_a_new_outbox(tmp_path, outboxes):
    first = make(outboxes, tmp_path, Recorder())
    first.put(NOTICE)
    first.put(NOTICE)                       # never started: as if the process had stopped
    assert first.pending() == 2
    send = Recorder()
    second = make(outboxes, tmp_path, send)
    second.start()
    assert second.flush(10) and len(send.sent) == 2


def test_put_into_unwritable_directory_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the queue directory should be")
    box = Outbox(blocker / "outbox", Recorder())
    with pytest.raises(OutboxError, match=re.escape(str(blocker / "outbox"))):
        box.put(NOTICE)


def test_give_up_after_max_age_moves_to_failed(tmp_path, outboxes):
    log = Log()
    send = Recorder(fail=10**6)
    box = make(outboxes, tmp_path, send, retry_s=0.01, max_age_s=0.001, log=log)
    name = box.put(NOTICE)
    box.start()
    assert box.flush(10)
    assert send.sent == [] and (tmp_path / "failed" / name).read_bytes().endswith(NOTICE.data)
    assert f"notice {name} to <virusalert@example.net>: giving up after" in log.text


def test_corrupt_queue_file_moves_to_failed(tmp_path, outboxes):
    log = Log()
    (tmp_path / "00000000000000000001-1-1.notice").write_bytes(b"not json\nbody")
    box = make(outboxes, tmp_path, Recorder(), log=log)
    box.start()
    assert box.flush(10)
    assert (tmp_path / "failed" / "00000000000000000001-1-1.notice").exists()
    assert "corrupt queued notice" in log.text


def test_notices_delivered_through_smtp(tmp_path, outboxes):
    with SMTPSink() as sink:
        def send(notice: Notice) -> str:
            with smtplib.SMTP(sink.host, sink.port, local_hostname="mx.example.net", timeout=10) as smtp:
                smtp.sendmail(notice.mail_from, list(notice.rcpts), notice.data)
            return "250 ok"

        box = make(outboxes, tmp_path, send)
        box.start()
        box.put(dsn())
        box.put(admin(facts(subject="hi\r\nBcc: victim@example.com")))
        got = sink.wait_for(2, timeout=10)
        assert box.flush(10)
    by_kind = {m.rcpt_tos: m for m in got}
    bounce = by_kind[("joerg@example.org",)]
    assert bounce.mail_from == ""
    msg = bounce.message
    assert msg.get_content_type() == "multipart/report"
    assert [b["Final-Recipient"] for b in list(msg.iter_parts())[1].get_payload()[1:]] == [
        "rfc822; bob@example.com", "rfc822; ann@example.com"]
    assert list(msg.iter_parts())[2].get_payload(decode=True) == ORIGINAL[:-2]
    notice = by_kind[("virusalert@example.net",)].message
    assert "bcc" not in header_names(notice) and "hi Bcc: victim@example.com" in content(notice)
