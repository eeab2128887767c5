"""DKIM behind a real Postfix: mail submitted on the ORIGINATING listener leaves signed with a
key made by `pymavis dkim genkey` (the signature verifies with dkimpy after Postfix
delivered it), and the same message arriving on the MX listener is verified against the key
"published" by a fake DNS server: one Authentication-Results field of ours with dkim=pass,
the one it carried from the first pass removed; a name server that does not answer gives
temperror, never fail. Mail whose From domain publishes DMARC p=reject and fails it is
refused at end of data with 554 5.7.1 (dmarc_reject_action: reject). Mail ARC-sealed by a
forwarder before it reaches the MX listener of a filter with arc_verify and arc_seal leaves
with arc=pass in our field and our ARC set i=2, which dkimpy's arc_verify passes."""

from __future__ import annotations

import os
import uuid

import dkim
import pytest

from conftest import CORPUS

from harness.fakedns import FakeDNS
from harness.net import free_port, wait_until
from harness.postfix import PostfixInstance
from harness.pymavisd import PymavisProcess

from pymavis.auth import genkey

SENDER, BOB = "sender@example.org", "bob@example.net"


def config(key_path: str, dns_spec: str) -> str:
    return f"""\
mydomain: example.test
authserv_id: filter.test
dns: {{resolver: "{dns_spec}", timeout_s: 2, deadline_s: 5}}
daemon_name_policy: {{ORIGINATING: ORIGINATING}}
dkim_signing_keys:
  example.org: {{selector: e2e, key_file: "{key_path}"}}
policy:
  mynetworks: [10.0.0.0/8]
  local_domains: [example.net]
  dkim_verify: true
  dmarc_verify: true
  dmarc_reject_action: reject
"""


BANKS = {"banks.yaml": "ORIGINATING:\n  originating: true\n  dkim_sign: true\n"}


def message(subj: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: {subj}\r\nDate: Thu, 3 Dec 2026 07:00:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nhello, signed\r\n").encode()


def delivered(sink, subj):
    return wait_until(lambda: next((m for m in sink.messages if str(m.message["Subject"]) == subj), None), 60,
                      what=f"delivery of {subj!r}")


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path, record = genkey.genkey("example.org", "e2e", str(tmp_path_factory.mktemp("dkim")))
    return path, record


@pytest.fixture(scope="module")
def dns_server(key):
    with FakeDNS({"e2e._domainkey.example.org": key[1], "_dmarc.bank.example": "v=DMARC1; p=reject"}) as server:
        yield server


@pytest.fixture(scope="module")
def pymavis(tmp_path_factory, key, dns_server):
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-auth")), config(key[0], dns_server.spec),
                          BANKS).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def postfix(public_tmp, sink, pymavis):
    with PostfixInstance(public_tmp / "postfix-auth", sink_port=sink.port, milter=pymavis.socket_spec) as pf:
        yield pf


def test_submitted_mail_leaves_signed_and_arrives_verified(postfix, sink, key):
    subj = f"signed {uuid.uuid4().hex[:8]}"
    assert postfix.send("submission", SENDER, [BOB], message(subj)).code == 250
    first = delivered(sink, subj)
    assert first.message["DKIM-Signature"] is not None
    record = key[1].encode()
    assert dkim.verify(first.data, dnsfunc=lambda name, timeout=5: record)
    sink.clear()
    assert postfix.send("mx", SENDER, [BOB], first.data).code == 250
    second = delivered(sink, subj)
    fields = second.message.get_all("Authentication-Results")
    ours = [f for f in fields if str(f).startswith("filter.test")]
    assert len(ours) == 1, fields
    assert "dkim=pass" in str(ours[0]) and "header.d=example.org" in str(ours[0]) and "header.s=e2e" in str(ours[0])


def test_a_dmarc_p_reject_failure_is_refused_554_5_7_1(postfix, sink):
    subj = f"forged {uuid.uuid4().hex[:8]}"
    forged = message(subj).replace(f"From: {SENDER}".encode(), b"From: ceo@bank.example")
    reply = postfix.send("mx", SENDER, [BOB], forged)
    assert (reply.code, reply.stage) == (554, "eom"), reply
    assert reply.text.startswith("5.7.1 Reject, id=") and reply.text.endswith(
        " - DMARC policy of bank.example: reject, no aligned DKIM or SPF pass"), reply
    assert not any(str(m.message["Subject"]) == subj for m in sink.messages)


def test_a_name_server_that_does_not_answer_gives_temperror(tmp_path_factory, public_tmp, sink, key):
    dead = f"127.0.0.1:{free_port()}"
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-auth-dead")), config(key[0], dead), BANKS).start()
    try:
        with PostfixInstance(public_tmp / "postfix-auth-dead", sink_port=sink.port, milter=proc.socket_spec) as pf:
            subj = f"dead dns {uuid.uuid4().hex[:8]}"
            assert pf.send("submission", SENDER, [BOB], message(subj)).code == 250
            signed = delivered(sink, subj)
            sink.clear()
            assert pf.send("mx", SENDER, [BOB], signed.data).code == 250
            got = delivered(sink, subj)
            ours = [str(f) for f in got.message.get_all("Authentication-Results") if str(f).startswith("filter.test")]
            assert len(ours) == 1 and "dkim=temperror" in ours[0], ours
    finally:
        assert proc.stop() == 0


# The forwarder's key: dkimpy's published 2048-bit test key; ours is the e2e key of example.org.
FORWARDER_KEY = os.path.join(CORPUS, "dkimpy-tests-data", "2048_testkey.key")
FORWARDER_PUB = os.path.join(CORPUS, "dkimpy-tests-data", "2048_testkey_wo_markers.pub.txt")


def arc_config(key_path: str, dns_spec: str) -> str:
    return (config(key_path, dns_spec) + "  arc_verify: true\n  arc_seal: true\n"
            + f'arc_sealing: {{domain: example.org, selector: e2e, key_file: "{key_path}"}}\n')


def test_a_forwarded_arc_chain_is_verified_and_sealed_again(tmp_path_factory, public_tmp, sink, key):
    with open(FORWARDER_PUB) as f:
        records = {"e2e._domainkey.example.org": key[1], "up._domainkey.forwarder.example": f.read().strip()}
    with open(FORWARDER_KEY, "rb") as f:
        forwarder_key = f.read()
    subj = f"arc {uuid.uuid4().hex[:8]}"
    forwarded = b"Authentication-Results: forwarder.example; spf=pass smtp.mailfrom=sender@example.org; arc=none\r\n" \
        + message(subj)
    forwarded = b"".join(dkim.arc_sign(forwarded, b"up", b"forwarder.example", forwarder_key,
                                       b"forwarder.example")) + forwarded
    with FakeDNS(records) as dns:
        proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-arc")), arc_config(key[0], dns.spec),
                              BANKS).start()
        try:
            with PostfixInstance(public_tmp / "postfix-arc", sink_port=sink.port, milter=proc.socket_spec) as pf:
                assert pf.send("mx", SENDER, [BOB], forwarded).code == 250
                got = delivered(sink, subj)
        finally:
            assert proc.stop() == 0
    ours = [str(f) for f in got.message.get_all("Authentication-Results") if str(f).startswith("filter.test")]
    assert len(ours) == 1 and ours[0].endswith("arc=pass (i=1)"), ours
    assert str(got.message["ARC-Seal"]).startswith("i=2; cv=pass; a=rsa-sha256; d=example.org; s=e2e;")

    def lookup(name, timeout=5):
        return records.get(name.decode().rstrip("."), "").encode() or None

    cv, sets, why = dkim.arc_verify(got.data, dnsfunc=lookup)
    assert (cv, [s["instance"] for s in sets]) == (b"pass", [2, 1]), why
