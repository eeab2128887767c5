"""DKIM signing of originating mail: keys by From domain, loaded and checked with the
configuration; the signature made after our own header edits verifies with dkimpy; mail
leaving as banned (to lovers), inbound mail and banks without dkim_sign are not signed."""

import os
import shutil
import textwrap

import pytest

from test_auth import DKIMPY, KEYS, MESSAGE, Zone, data, txn_of

from pymavis import pipeline, rawmsg
from pymavis.auth import dkimsign, dkimverify, resolver
from pymavis.auth.dkimsign import SigningKey
from pymavis.config import ConfigError, load
from pymavis.outcome import Action
from pymavis.policy import merge

RSA_2048 = data(DKIMPY, "2048_testkey.key")
ED25519 = data(DKIMPY, "rfc8032_7_1.key").strip()   # RFC 8463 A.2's key pair, public half in KEYS
ED_PUBLIC = b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
ZONE_KEYS = {**KEYS, "ed._domainkey.example.com": ED_PUBLIC, "ed._domainkey.example.org": ED_PUBLIC}

FROM_EXAMPLE = MESSAGE.replace(b"joe@football.example.com", b"joe@example.com")


def verify(raw):
    return [(r.result, r.domain, r.selector) for r in dkimverify.verify(raw, Zone(txt=ZONE_KEYS))]


def rsa_key(**kwargs):
    return SigningKey("example.com", "k2048", "rsa-sha256", RSA_2048, **kwargs)


# --- signing ------------------------------------------------------------------------------


def test_rsa_signature_verifies_and_is_one_line():
    value = dkimsign.signature(FROM_EXAMPLE, rsa_key())
    assert "\r" not in value and "\n" not in value
    assert value.startswith("v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; i=@example.com; q=dns/txt; s=k2048; t=")
    assert verify(b"DKIM-Signature: " + value.encode() + b"\r\n" + FROM_EXAMPLE) == [("pass", "example.com", "k2048")]


def test_ed25519_signature_verifies():
    key = SigningKey("example.com", "ed", "ed25519-sha256", ED25519)
    value = dkimsign.signature(FROM_EXAMPLE, key)
    assert "a=ed25519-sha256" in value
    assert verify(b"DKIM-Signature: " + value.encode() + b"\r\n" + FROM_EXAMPLE) == [("pass", "example.com", "ed")]


def test_present_headers_are_signed_and_from_subject_date_oversigned():
    value = dkimsign.signature(FROM_EXAMPLE, rsa_key())
    h = value.split("h=", 1)[1].split(";", 1)[0].replace(" ", "").split(":")
    assert h == ["from", "to", "subject", "date", "message-id", "from", "subject", "date"]
    signed = b"DKIM-Signature: " + value.encode() + b"\r\n" + FROM_EXAMPLE
    added = signed.replace(b"\r\n\r\n", b"\r\nSubject: Pay now\r\n\r\n", 1)
    assert verify(added)[0][0] == "fail"   # an added Subject breaks it (over-signed)
    other = signed.replace(b"\r\n\r\n", b"\r\nX-Mailer: relay\r\n\r\n", 1)
    assert verify(other)[0][0] == "pass"


def test_a_message_without_from_is_not_signed():
    with pytest.raises(dkimsign.SignFailed, match="no From"):
        dkimsign.signature(FROM_EXAMPLE.replace(b"From: Joe SixPack <joe@example.com>\r\n", b""), rsa_key())


@pytest.mark.parametrize("author, domain", [
    ("example.com", "example.com"), ("EXAMPLE.com.", "example.com"), ("mail.example.org", "example.org"),
    ("a.b.example.org", "example.org"), ("example.org", "example.org"), ("example.net", None), (None, None),
    ("sub.example.com", None),
])
def test_key_for_the_author_domain(author, domain):
    keys = {"example.com": rsa_key(), ".example.org": SigningKey("example.org", "s", "rsa-sha256", RSA_2048)}
    got = dkimsign.key_for(keys, author)
    assert (got.domain if got else None) == domain


def test_read_key_checks_the_key(tmp_path):
    assert dkimsign.read_key(os.path.join(DKIMPY, "2048_testkey_PKCS8.key"), "rsa-sha256")
    assert dkimsign.read_key(os.path.join(DKIMPY, "rfc8032_7_1.key"), "ed25519-sha256") == ED25519
    with pytest.raises(dkimsign.BadKey, match="not a PEM RSA private key"):
        dkimsign.read_key(os.path.join(DKIMPY, "rfc8032_7_1.key"), "rsa-sha256")
    (tmp_path / "junk").write_bytes(b"not base64 at all!")
    with pytest.raises(dkimsign.BadKey, match="not a base64 ed25519 private key"):
        dkimsign.read_key(str(tmp_path / "junk"), "ed25519-sha256")
    assert "PRIVATE" not in repr(rsa_key()) and "MII" not in repr(rsa_key())


# --- configuration ------------------------------------------------------------------------


def write_config(tmp_path, text):
    (tmp_path / "keys").mkdir(exist_ok=True)
    shutil.copy(os.path.join(DKIMPY, "2048_testkey.key"), tmp_path / "keys" / "k2048.pem")
    shutil.copy(os.path.join(DKIMPY, "rfc8032_7_1.key"), tmp_path / "keys" / "ed.key")
    path = tmp_path / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmyhostname: mx.example.net\n" + textwrap.dedent(text))
    return path


KEYS_YAML = """\
dkim_signing_keys:
  example.com: {selector: k2048, key_file: keys/k2048.pem}
  .Example.ORG: {selector: ed, key_file: keys/ed.key, algorithm: ed25519-sha256, oversign: [From]}
"""


def test_signing_keys_load_relative_to_the_config_file(tmp_path):
    config = load(str(write_config(tmp_path, KEYS_YAML)))
    keys = config["dkim_signing_keys"]
    assert sorted(keys) == [".example.org", "example.com"]
    assert (keys["example.com"].selector, keys["example.com"].algorithm) == ("k2048", "rsa-sha256")
    assert keys[".example.org"].domain == "example.org" and keys[".example.org"].oversign == ("from",)


@pytest.mark.parametrize("entry, error", [
    ("example.com: {selector: k, key_file: keys/none.pem}", "pymavis.yaml:4: dkim_signing_keys['example.com'].key_file: cannot read "),
    ("example.com: {selector: k, key_file: keys/ed.key}", "pymavis.yaml:4: dkim_signing_keys['example.com'].key_file: "),
    ("example.com: {key_file: keys/k2048.pem}", "a signing key needs 'selector'"),
    ("example.com: {selector: k, key_file: keys/k2048.pem, algoritm: rsa-sha256}", "did you mean 'algorithm'?"),
    ("example.com: {selector: k, key_file: keys/k2048.pem, algorithm: rsa-sha1}", "expected one of rsa-sha256"),
    ("'exa mple.com': {selector: k, key_file: keys/k2048.pem}", "is not a domain name"),
])
def test_signing_key_errors_name_file_and_line(tmp_path, entry, error):
    path = write_config(tmp_path, f"dkim_signing_keys:\n  {entry}\n")
    with pytest.raises(ConfigError) as err:
        load(str(path))
    assert error in str(err.value)


# --- the pipeline ---------------------------------------------------------------------------


SIGNING = KEYS_YAML + """\
client_ipaddr_policy:
  - {ip: [192.0.2.0/24], bank: OUT}
policy:
  local_domains: [example.com]
  subject_tag_by_ccat: {BADH: "[bad header] "}
"""


def run(tmp_path, monkeypatch, raw, bank_text="OUT:\n  originating: true\n  dkim_sign: true\n",
        config_text=SIGNING, bank=("OUT",), **txn_args):
    path = write_config(tmp_path, config_text)
    (tmp_path / "banks").mkdir(exist_ok=True)
    (tmp_path / "banks" / "out.yaml").write_text(bank_text)
    config = load(str(path))
    monkeypatch.setattr(resolver, "lookup_for", lambda settings: Zone(txt=ZONE_KEYS))
    txn = txn_of(raw, mail_from="<joe@example.com>", **txn_args)
    try:
        return pipeline.process(config, merge(config, bank), txn)
    finally:
        txn.spool.close()


def signatures(result):
    return [h for h in result.outcome.headers if h.name == "DKIM-Signature"]


def test_originating_mail_is_signed_after_our_header_edits(tmp_path, monkeypatch):
    raw = FROM_EXAMPLE.replace(b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n", b"")   # BADH: missing Date
    result = run(tmp_path, monkeypatch, raw)
    out = result.outcome
    assert out.action is Action.CONTINUE
    assert out.headers[-1].name == "DKIM-Signature" and out.headers[-1].op == "insert"
    assert any(h.name == "Subject" and h.value.startswith("[bad header] ") for h in out.headers)
    delivered = rawmsg.apply_edits(raw, out.headers)
    assert delivered.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com;")
    assert b"Subject: [bad header] Is dinner ready?" in delivered
    assert verify(delivered) == [("pass", "example.com", "k2048")]


def test_subdomain_author_is_signed_with_the_parent_key(tmp_path, monkeypatch):
    raw = FROM_EXAMPLE.replace(b"joe@example.com", b"joe@lists.example.org")
    result = run(tmp_path, monkeypatch, raw)
    delivered = rawmsg.apply_edits(raw, result.outcome.headers)
    assert verify(delivered) == [("pass", "example.org", "ed")]


def test_with_authentication_results_the_signature_is_on_top(tmp_path, monkeypatch):
    bank = "OUT:\n  originating: true\n  dkim_sign: true\n  dkim_verify: true\n"
    result = run(tmp_path, monkeypatch, FROM_EXAMPLE, bank)
    names = [h.name for h in result.outcome.headers]
    assert names[-2:] == ["Authentication-Results", "DKIM-Signature"]
    delivered = rawmsg.apply_edits(FROM_EXAMPLE, result.outcome.headers)
    assert delivered.startswith(b"DKIM-Signature: ")
    assert b"\r\nAuthentication-Results: mx.example.net; dkim=none\r\n" in delivered
    assert verify(delivered) == [("pass", "example.com", "k2048")]


def test_inbound_mail_and_banks_without_dkim_sign_are_not_signed(tmp_path, monkeypatch):
    assert signatures(run(tmp_path, monkeypatch, FROM_EXAMPLE, bank=())) == []
    assert signatures(run(tmp_path, monkeypatch, FROM_EXAMPLE, "OUT:\n  originating: true\n")) == []
    not_originating = "OUT:\n  dkim_sign: true\n"
    assert signatures(run(tmp_path, monkeypatch, FROM_EXAMPLE, not_originating)) == []


def test_a_from_domain_without_a_key_is_not_signed(tmp_path, monkeypatch):
    raw = FROM_EXAMPLE.replace(b"joe@example.com", b"joe@example.net")
    assert signatures(run(tmp_path, monkeypatch, raw)) == []


def test_mail_leaving_as_banned_to_a_lover_is_not_signed(tmp_path, monkeypatch):
    import base64
    exe = base64.encodebytes(b"MZ" + b"\0" * 200).replace(b"\n", b"\r\n")
    raw = (b"From: joe@example.com\r\nTo: b@example.net\r\nSubject: x\r\nDate: Fri, 11 Jul 2003 21:00:37 -0700\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\n"
           b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.exe\"\r\n\r\n"
           + exe + b"--b1--\r\n")
    bank = "OUT:\n  originating: true\n  dkim_sign: true\n  banned_files_lovers: true\n"
    result = run(tmp_path, monkeypatch, raw, bank)
    assert result.outcome.action is Action.CONTINUE
    assert [d.main.name for d in result.outcome.decisions] == ["BANNED"]
    assert signatures(result) == []
