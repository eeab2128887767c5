"""Decoding and banned content behind a real Postfix: an executable inside a zip inside a
forwarded message is refused at end-of-data with the part path in the 554 reply; a clean
attachment passes; a banned-files lover gets the mail with the alert header; with a lover
and a plain recipient together, the plain one is removed (delrcpt) and the lover gets it."""

from __future__ import annotations

import base64
import uuid

import pytest

from conftest import scanners_yaml
from harness.net import wait_until
from harness.postfix import PostfixInstance
from harness.pymavisd import PymavisProcess
from harness.samples import pe, zip_bytes

SENDER = "alice@example.org"
MAIN = """\
mydomain: example.test
policy:
  mynetworks: [10.0.0.0/8]
  local_domains: [example.net]
  final_banned_destiny: reject
  banned_files_lovers: [lover@example.net]
"""


def with_attachment(subject: str, name: str, ctype: str, data: bytes) -> bytes:
    body = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (f"From: {SENDER}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            f'--b1\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{body}--b1--\r\n').encode()


def forwarded(subject: str, inner: bytes) -> bytes:
    return (f"From: {SENDER}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="o"\r\n\r\n'
            "--o\r\nContent-Type: text/plain\r\n\r\nfyi\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n").encode() \
        + inner + b"\r\n--o--\r\n"


def subject(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def banned_message(subj: str) -> bytes:
    inner = with_attachment("invoice", "docs.zip", "application/zip", zip_bytes(("invoice.pdf.exe", pe())))
    return forwarded(subj, inner)


@pytest.fixture(scope="module")
def pymavis(tmp_path_factory, clamd):
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis")), MAIN + scanners_yaml(clamd)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def postfix(public_tmp, sink, pymavis):
    with PostfixInstance(public_tmp / "postfix", sink_port=sink.port, milter=pymavis.socket_spec) as pf:
        yield pf


def delivered(sink, subj):
    return wait_until(lambda: next((m for m in sink.messages if m.message["Subject"] == subj), None),
                      30, what=f"{subj!r} at the sink")


def test_banned_attachment_is_refused_with_the_part_path(postfix, sink, pymavis):
    subj = subject("banned")
    reply = postfix.send("mx", SENDER, ["bob@example.net"], banned_message(subj))
    assert reply.code == 554, reply
    assert reply.text.startswith("5.7.0 Reject, id="), reply
    assert " - BANNED: P=p001,L=1,M=multipart/mixed | P=p003,L=1/2,M=message/rfc822 | " in reply.text
    assert reply.text.endswith("M=application/zip,T=zip,N=docs.zip | P=p007,L=1/2/1/2/1,T=exe-ms,N=invoice.pdf.exe"), \
        reply
    line = wait_until(lambda: next((l for l in pymavis.log_text().splitlines() if "Blocked BANNED" in l), None), 15)
    assert "{RejectedInbound}" in line and "reply: 554 5.7.0" in line
    assert not any(m.message["Subject"] == subj for m in sink.messages)


def test_clean_attachment_passes(postfix, sink, pymavis):
    subj = subject("clean-attachment")
    data = with_attachment(subj, "notes.zip", "application/zip", zip_bytes(("notes.txt", b"meeting at ten\n" * 20)))
    assert postfix.send("mx", SENDER, ["bob@example.net"], data).code == 250
    msg = delivered(sink, subj).message
    assert msg["X-Virus-Scanned"] == "pymavis at example.test"
    assert msg["X-Pymavis-Alert"] is None


def test_lover_gets_it_tagged_and_the_other_recipient_is_removed(postfix, sink, pymavis):
    subj = subject("banned-lover")
    reply = postfix.send("mx", SENDER, ["bob@example.net", "lover@example.net"], banned_message(subj))
    assert reply.code == 250, reply
    got = delivered(sink, subj)
    assert got.rcpt_tos == ("lover@example.net",)
    alert = got.message["X-Pymavis-Alert"]
    assert alert.startswith("BANNED, message contains P=p001,L=1,M=multipart/mixed | ") and "invoice.pdf.exe" in alert
