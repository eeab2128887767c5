"""Signatures pymavis makes, checked by a verifier that is not dkimpy: OpenDKIM's
`opendkim-testmsg` (harness/opendkim.py runs it with the public keys served by our fake DNS
server). Mail submitted on the ORIGINATING listener of a real Postfix is signed by pymavis
with an RSA-2048 and an ed25519 key from `pymavis dkim genkey`, delivered to the sink, and
the delivered bytes verify; the same bytes with one changed body character do not (the
verifier really checks)."""

from __future__ import annotations

import uuid

import pytest

from harness import opendkim
from harness.net import wait_until
from harness.postfix import PostfixInstance
from harness.pymavisd import PymavisProcess

from pymavis.auth import genkey

BOB = "bob@example.net"
DOMAINS = {"example.org": "rsa", "ed.example.org": "ed25519"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("dkim-keys"))
    return {domain: genkey.genkey(domain, "odk", directory, key_type=kind) for domain, kind in DOMAINS.items()}


@pytest.fixture(scope="module")
def postfix(tmp_path_factory, public_tmp, sink, keys):
    signing = "\n".join(f"  {domain}: {{selector: odk, key_file: \"{path}\", algorithm: {genkey.ALGORITHM[kind]}}}"
                        for (domain, (path, _)), kind in zip(keys.items(), DOMAINS.values()))
    config = (f"mydomain: example.test\ndaemon_name_policy: {{ORIGINATING: ORIGINATING}}\n"
              f"dkim_signing_keys:\n{signing}\npolicy:\n  local_domains: [example.net]\n")
    banks = {"banks.yaml": "ORIGINATING:\n  originating: true\n  dkim_sign: true\n"}
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-opendkim")), config, banks).start()
    try:
        with PostfixInstance(public_tmp / "postfix-opendkim", sink_port=sink.port, milter=proc.socket_spec) as pf:
            yield pf
    finally:
        assert proc.stop() == 0


def zone(keys) -> dict[str, str]:
    return {f"odk._domainkey.{domain}": record for domain, (_, record) in keys.items()}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_a_signature_made_by_pymavis_verifies_with_opendkim(postfix, sink, keys, domain):
    subj = f"opendkim {DOMAINS[domain]} {uuid.uuid4().hex[:8]}"
    body = "".join(f"line {i} of a signed message, with a tab\there and trailing space \r\n" for i in range(40))
    msg = (f"From: Someone <someone@{domain}>\r\nTo: {BOB}\r\nSubject: {subj}\r\n"
           f"Date: Thu, 3 Dec 2026 07:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@{domain}>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()
    assert postfix.send("submission", f"someone@{domain}", [BOB], msg).code == 250
    got = wait_until(lambda: next((m for m in sink.messages if str(m.message["Subject"]) == subj), None), 60,
                     what=f"delivery of {subj!r}")
    assert f"d={domain};" in str(got.message["DKIM-Signature"]).replace(" ", "")
    verdict = opendkim.verify(got.data, zone(keys))
    assert verdict.ok, verdict.stderr
    tampered = opendkim.verify(got.data.replace(b"line 7 of", b"line 8 of"), zone(keys))
    assert not tampered.ok and "signature" in tampered.stderr.lower(), tampered
