"""ARC (RFC 8617): chains built here with dkimpy's arc_sign and its published test keys, served
by a fake DNS zone, verified by auth/arcverify.py (pass, fail with why, none, temperror,
the form checked before any lookup); the corpus's ARC messages, whose keys are only in live
DNS, never pass; our seal (auth/arcseal.py) verifies with dkimpy's own arc_verify; the
`arc_sealing` key is checked when the configuration loads; the pipeline reports arc= and seals
passed arriving mail after its header edits, never mail leaving as banned. Offline."""

import base64
import os
import shutil
import subprocess
import textwrap

import dkim
import pytest

from harness.samples import corpus_files

from conftest import CORPUS
from test_auth import DKIMPY, KEYS, MESSAGE, PRIV_1024, PRIV_2048, RSPAMD, SA, Zone, data, txn_of

from pymavis import pipeline, rawmsg
from pymavis.auth import (RESULT_KEYS, Facts, Results, Settings, arcseal, arcverify, authenticate, dkimsign,
                          header)
from pymavis.auth.arcverify import ArcResult
from pymavis.auth.dkimsign import SigningKey
from pymavis.config import ConfigError, load
from pymavis.outcome import Action
from pymavis.policy import merge

MIMEDEFANG = os.path.join(CORPUS, "mimedefang-t-data")
PUB_2048 = data(DKIMPY, "2048_testkey_wo_markers.pub.txt").strip()
ARC_KEYS = {**KEYS, "k2048._domainkey.example.org": PUB_2048, "arc._domainkey.example.net": PUB_2048,
            "k1024._domainkey.example.org": KEYS["k1024._domainkey.example.com"]}


def zone(**kwargs):
    return Zone(txt=ARC_KEYS, **kwargs)


def dnsfunc(name, timeout=5):
    """dkimpy's own dnsfunc over the same keys, for arc_verify."""
    return ARC_KEYS.get(name.decode().rstrip("."))


def hop(message, domain, authserv_id, arc, selector=b"k2048", key=PRIV_2048):
    """`message` as a forwarder at `domain` sends it on: its Authentication-Results (with
    `arc=`) and its ARC set, made by dkimpy, on top."""
    ar = f"Authentication-Results: {authserv_id}; spf=pass smtp.mailfrom=bounce@example.com; arc={arc}\r\n"
    message = ar.encode() + message
    return b"".join(dkim.arc_sign(message, selector, domain, key, authserv_id.encode())) + message


def one_hop():
    return hop(MESSAGE, b"example.com", "mx.example.com", "none")


def two_hops():
    return hop(one_hop(), b"example.org", "mx.example.org", "pass")


def arc(raw, z=None, min_key_bits=1024):
    r = arcverify.verify(raw, z if z is not None else zone(), min_key_bits)
    return r.result, r.instances, r.reason


# --- verifying ------------------------------------------------------------------------------


def test_no_arc_fields_is_none_without_a_lookup():
    z = zone()
    assert arc(MESSAGE, z) == ("none", 0, "") and z.asked == []


def test_one_hop_passes():
    r = arcverify.verify(one_hop(), zone())
    assert r == ArcResult("pass", 1, "example.com")


def test_two_hops_pass_and_the_newest_sealer_is_named():
    r = arcverify.verify(two_hops(), zone())
    assert r == ArcResult("pass", 2, "example.org")


def test_a_body_changed_after_the_newest_seal_fails():
    raw = two_hops().replace(b"We lost the game.", b"We won the game.")
    assert arc(raw) == ("fail", 2, "ARC-Message-Signature i=2: body hash did not verify")


def test_a_signed_field_changed_after_sealing_fails():
    raw = two_hops().replace(b"Subject: Is dinner ready?", b"Subject: Is lunch ready?")
    assert arc(raw) == ("fail", 2, "ARC-Message-Signature i=2: signature did not verify")


def test_a_hop_that_changed_the_body_before_sealing_still_passes():
    # what ARC is for: the list footer breaks the first hop's AMS, the second hop's seal vouches
    first = one_hop()
    changed = first.replace(b"Joe.\r\n", b"Joe.\r\n--\r\nlist footer\r\n")
    raw = hop(changed, b"example.org", "mx.example.org", "pass")
    assert arc(raw) == ("pass", 2, "")
    assert arc(changed) == ("fail", 1, "ARC-Message-Signature i=1: body hash did not verify")


def test_a_changed_arc_set_breaks_the_newer_seal():
    raw = two_hops().replace(b"ARC-Authentication-Results: i=1; mx.example.com;",
                             b"ARC-Authentication-Results: i=1; mx.example.com; dkim=pass;")
    assert arc(raw) == ("fail", 2, "ARC-Seal i=2: signature did not verify")


def test_a_seal_key_lookup_that_times_out_is_temperror_never_fail():
    z = zone(stalled={"k2048._domainkey.example.com"})   # the first hop's key; the newest hop's answers
    r = arcverify.verify(two_hops(), z)
    assert (r.result, r.instances, r.reason) == ("temperror", 2, "key lookup failed: timeout after 5 s")
    assert ("k2048._domainkey.example.org", "TXT") in z.asked


def test_the_newest_key_timing_out_is_temperror():
    assert arc(one_hop(), zone(stalled={"*"}))[0] == "temperror"


@pytest.mark.parametrize("record, reason", [
    (None, "no key"), (b"v=DKIM1; k=rsa; p=", "key revoked"), (b"v=DKIM1; k=rsa; p=bm90IGEga2V5", "bad key")])
def test_a_key_that_cannot_verify_fails_the_chain(record, reason):
    keys = dict(ARC_KEYS)
    keys.pop("k2048._domainkey.example.com")
    if record is not None:
        keys["k2048._domainkey.example.com"] = record
    assert arc(one_hop(), Zone(txt=keys)) == ("fail", 1, f"ARC-Message-Signature i=1: {reason}")


def test_a_key_below_min_key_bits_fails():
    raw = hop(MESSAGE, b"example.org", "mx.example.org", "none", selector=b"k1024", key=PRIV_1024)
    assert arc(raw)[0] == "pass"
    assert arc(raw, min_key_bits=2048) == ("fail", 1, "ARC-Message-Signature i=1: key too small: 1024 bits < 2048")


def test_a_newest_seal_saying_cv_fail_fails_before_any_lookup():
    raw = hop(one_hop(), b"example.org", "mx.example.org", "fail")
    z = zone()
    assert arc(raw, z) == ("fail", 2, "ARC-Seal i=2 says cv=fail") and z.asked == []
    # dkimpy's own arc_verify answers None ("the chain is terminated") here, not fail
    assert dkim.arc_verify(raw, dnsfunc=dnsfunc)[0] is None


def test_a_first_seal_with_cv_pass_fails():
    raw = two_hops().replace(b"ARC-Seal: i=1; cv=none", b"ARC-Seal: i=1; cv=pass")
    assert arc(raw) == ("fail", 2, "ARC-Seal i=1 has cv=pass")


def _drop(raw: bytes, name: bytes, instance: int) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    fields, out = head.split(b"\r\n"), []
    skip = False
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            if not skip:
                out.append(line)
            continue
        skip = line.lower().startswith(name.lower() + b": i=%d;" % instance)
        if not skip:
            out.append(line)
    return b"\r\n".join(out) + sep + body


@pytest.mark.parametrize("change, reason", [
    pytest.param(lambda r: _drop(r, b"ARC-Seal", 1), "ARC set i=1 has 0 ARC-Seal fields", id="missing-seal"),
    pytest.param(lambda r: _drop(r, b"ARC-Authentication-Results", 2),
                 "ARC set i=2 has 0 ARC-Authentication-Results fields", id="missing-aar"),
    pytest.param(lambda r: b"ARC-Authentication-Results: i=2; forged.example; arc=pass\r\n" + r,
                 "ARC set i=2 has 2 ARC-Authentication-Results fields", id="doubled"),
    pytest.param(lambda r: b"ARC-Seal: cv=pass; d=example.org\r\n" + r, "an ARC field without an instance number",
                 id="no-instance"),
    pytest.param(lambda r: r.replace(b": i=1;", b": i=0;"), "an ARC field with i=0", id="i=0"),
    pytest.param(lambda r: r.replace(b": i=2;", b": i=3;"), "ARC set i=2 has 0 ARC-Authentication-Results fields",
                 id="gap"),
    pytest.param(lambda r: r.replace(b": i=2;", b": i=51;"), "i=51: more than 50 ARC sets", id="over-50"),
])
def test_a_chain_of_the_wrong_form_fails_before_any_lookup(change, reason):
    z = zone()
    assert arc(change(two_hops()), z)[::2] == ("fail", reason)
    assert z.asked == []


def test_a_header_section_dkimpy_cannot_parse_fails():
    assert arc(b" folded line before any field\r\n" + one_hop()) == ("fail", 0, "header section cannot be parsed")


@pytest.mark.parametrize("path", [
    (SA, "dkim", "arc", "ok01.eml"), (SA, "dkim", "arc", "ko01.eml"), (MIMEDEFANG, "arc1.eml"),
    (MIMEDEFANG, "arc2.eml"), (MIMEDEFANG, "arc-wrong.eml"), (RSPAMD, "arcallow.eml"), (RSPAMD, "arcbad.eml"),
], ids=lambda p: p[-1])
def test_corpus_vectors_never_pass_without_their_keys(path):
    # their keys are only in the live DNS of the domains that sealed them
    r = arcverify.verify(data(*path), zone())
    assert r.result in ("fail", "none"), r
    assert (r.result == "none") == (arcverify.field_count(data(*path)) == 0)


def test_corpus_vectors_fail_for_the_reason_expected():
    assert arc(data(RSPAMD, "arcallow.eml")) == ("fail", 2, "ARC-Message-Signature i=2: no key")
    assert arc(data(SA, "dkim", "arc", "ok01.eml")) == ("fail", 1, "ARC-Message-Signature i=1: no key")
    assert arc(data(RSPAMD, "arcbad.eml")) == ("fail", 1, "ARC set i=1 has 2 ARC-Authentication-Results fields")


def test_every_corpus_message_gives_a_result_and_never_raises():
    count = 0
    for path in corpus_files(CORPUS):
        r = arcverify.verify(data(path), Zone())
        assert r.result in ("none", "fail"), (path, r)
        count += r.result == "fail"
    assert count >= 3


# --- results: the header text, the keys, authenticate() -------------------------------------


@pytest.mark.parametrize("result, text", [
    (ArcResult("pass", 2, "example.org"), "arc=pass (i=2)"),
    (ArcResult("fail", 1, "example.com", "ARC-Seal i=1: no key"), "arc=fail (ARC-Seal i=1: no key)"),
    (ArcResult("none"), "arc=none"),
    (ArcResult("temperror", 1, "x", "key lookup failed: timeout after 5 s"),
     "arc=temperror (key lookup failed: timeout after 5 s)"),
])
def test_header_text(result, text):
    assert header.value("mx.example.net", Results(dkim=(), arc=result)) == f"mx.example.net; dkim=none; {text}"


def test_arc_comes_after_dmarc_and_in_the_keys_and_summary():
    from pymavis.auth.dmarc import DmarcResult, Record
    results = Results(dmarc=DmarcResult("fail", "example.com", "reject", Record("reject")),
                      arc=ArcResult("pass", 1, "example.org"))
    assert header.value("mx", results) == "mx; dmarc=fail (p=reject dis=none) header.from=example.com; arc=pass (i=1)"
    assert results.keys() == {"dmarc=fail", "arc=pass"}
    assert results.summary() == "dmarc=fail arc=pass"
    assert {"arc=pass", "arc=fail", "arc=none", "arc=temperror"} <= set(RESULT_KEYS)


FACTS = Facts(client_ip="192.0.2.7", helo="mta.example.com", mail_from="bounce@example.com",
              from_values=("Joe <joe@football.example.com>",))


def test_authenticate_runs_arc_only_when_asked_and_never_for_originating_mail():
    off = Settings(dkim=False, spf=False, dmarc=False)
    on = Settings(dkim=False, spf=False, dmarc=False, arc=True)
    assert authenticate(two_hops(), FACTS, off, zone()).arc is None
    assert authenticate(two_hops(), FACTS, on, zone()).arc == ArcResult("pass", 2, "example.org")
    originating = Facts(**{**FACTS.__dict__, "originating": True})
    assert authenticate(two_hops(), originating, on, zone()).arc is None


# --- sealing --------------------------------------------------------------------------------


SEAL_KEY = SigningKey("example.net", "arc", "rsa-sha256", PRIV_2048)


def with_our_field(raw, arc_text):
    return f"Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=bounce@example.com; {arc_text}\r\n" \
        .encode() + raw


def sealed(raw):
    return b"".join(f"{n}: {v}\r\n".encode() for n, v in arcseal.seal(raw, SEAL_KEY, "mx.example.net")) + raw


def test_a_seal_without_a_chain_is_i1_cv_none_and_dkimpy_verifies_it():
    fields = arcseal.seal(with_our_field(MESSAGE, "arc=none"), SEAL_KEY, "mx.example.net")
    assert [n for n, _ in fields] == ["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]
    assert all("\r" not in v and "\n" not in v and len(v) <= header.MAX_CHARS for _, v in fields)
    assert fields[0][1].startswith("i=1; cv=none; a=rsa-sha256; d=example.net; s=arc; t=")
    assert fields[2][1] == "i=1; mx.example.net; spf=pass smtp.mailfrom=bounce@example.com; arc=none"
    raw = sealed(with_our_field(MESSAGE, "arc=none"))
    assert dkim.arc_verify(raw, dnsfunc=dnsfunc)[0] == b"pass"
    assert arc(raw) == ("pass", 1, "")


def test_a_seal_on_a_passing_chain_is_i3_cv_pass():
    raw = sealed(with_our_field(two_hops(), "arc=pass (i=2)"))
    assert raw.startswith(b"ARC-Seal: i=3; cv=pass;")
    cv, sets, why = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    assert (cv, [s["instance"] for s in sets]) == (b"pass", [3, 2, 1]), why
    assert arcverify.verify(raw, zone()) == ArcResult("pass", 3, "example.net")


def test_a_seal_on_a_failed_chain_says_cv_fail():
    broken = two_hops().replace(b"We lost the game.", b"We won the game.")
    raw = sealed(with_our_field(broken, "arc=fail (ARC-Message-Signature i=2: body hash did not verify)"))
    assert raw.startswith(b"ARC-Seal: i=3; cv=fail;")
    assert arc(raw) == ("fail", 3, "ARC-Seal i=3 says cv=fail")


def test_what_cannot_be_sealed_raises_sign_failed():
    with pytest.raises(dkimsign.SignFailed, match="no From"):
        arcseal.seal(with_our_field(MESSAGE.replace(b"From: Joe SixPack <joe@football.example.com>\r\n", b""),
                                    "arc=none"), SEAL_KEY, "mx.example.net")
    with pytest.raises(dkimsign.SignFailed, match="no Authentication-Results field of mx.example.net"):
        arcseal.seal(MESSAGE, SEAL_KEY, "mx.example.net")
    with pytest.raises(dkimsign.SignFailed, match="ParameterError"):   # dkimpy: cv= must be none at i=1
        arcseal.seal(with_our_field(MESSAGE, "arc=pass"), SEAL_KEY, "mx.example.net")


def test_another_hosts_field_dkimpy_cannot_read_is_sign_failed_not_an_exception():
    # dkimpy decodes every Authentication-Results field as UTF-8 before it looks for ours
    raw = b"Authentication-Results: other.example; spf=pass smtp.mailfrom=\xff@x\r\n" + with_our_field(MESSAGE,
                                                                                                      "arc=none")
    with pytest.raises(dkimsign.SignFailed, match="UnicodeDecodeError"):
        arcseal.seal(raw, SEAL_KEY, "mx.example.net")


# --- configuration --------------------------------------------------------------------------


def write_config(tmp_path, text, banks=None):
    (tmp_path / "keys").mkdir(exist_ok=True)
    shutil.copy(os.path.join(DKIMPY, "2048_testkey.key"), tmp_path / "keys" / "k2048.pem")
    shutil.copy(os.path.join(DKIMPY, "rfc8032_7_1.key"), tmp_path / "keys" / "ed.key")
    if banks:
        (tmp_path / "banks").mkdir(exist_ok=True)
        (tmp_path / "banks" / "b.yaml").write_text(banks)
    path = tmp_path / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmyhostname: mx.example.net\n" + textwrap.dedent(text))
    return path


SEALING_YAML = "arc_sealing: {domain: Example.NET, selector: arc, key_file: keys/k2048.pem}\n"


def test_the_sealing_key_loads_relative_to_the_config_file(tmp_path):
    config = load(str(write_config(tmp_path, SEALING_YAML + "policy: {arc_seal: true}\n")))
    key = config["arc_sealing"]
    assert (key.domain, key.selector, key.algorithm) == ("example.net", "arc", "rsa-sha256")
    assert key.private_key == dkimsign.read_key(str(tmp_path / "keys" / "k2048.pem"), "rsa-sha256")
    assert key.oversign == dkimsign.DEFAULT_OVERSIGN
    assert config.default_policy["arc_seal"] is True and config.default_policy["arc_verify"] is False
    assert load(str(write_config(tmp_path, "")))["arc_sealing"] is None


@pytest.mark.parametrize("entry, error", [
    ("{selector: arc, key_file: keys/k2048.pem}", "pymavis.yaml:3: arc_sealing: arc_sealing needs 'domain'"),
    ("{domain: example.net, key_file: keys/k2048.pem}", "a signing key needs 'selector'"),
    ("{domain: example.net, selector: arc, key_file: keys/none.pem}", "pymavis.yaml:3: arc_sealing.key_file: cannot read "),
    ("{domain: example.net, selector: arc, key_file: keys/ed.key}", "not a PEM RSA private key"),
    ("{domain: example.net, selector: arc, key_file: keys/ed.key, algorithm: ed25519-sha256}",
     "expected one of rsa-sha256"),
    ("{domain: example.net, selector: arc, key_file: keys/k2048.pem, selctor: x}", "did you mean 'selector'?"),
    ("{domain: 'exa mple.net', selector: arc, key_file: keys/k2048.pem}", "is not a domain name"),
    ("{domain: example.net, selector: arc, key_file: keys/k2048.pem, headers: [From, Received]}",
     "'received' cannot be signed by an ARC-Message-Signature"),
])
def test_sealing_key_errors_name_file_and_line(tmp_path, entry, error):
    with pytest.raises(ConfigError) as err:
        load(str(write_config(tmp_path, f"arc_sealing: {entry}\n")))
    assert error in str(err.value)


def test_a_key_too_large_for_a_one_line_seal_is_refused(tmp_path):
    big = tmp_path / "keys" / "k3072.pem"
    write_config(tmp_path, "")
    subprocess.run(["openssl", "genrsa", "-out", str(big), "3072"], check=True, capture_output=True)
    with pytest.raises(ConfigError) as err:
        load(str(write_config(tmp_path, SEALING_YAML.replace("k2048.pem", "k3072.pem"))))
    assert "a 3072-bit RSA key is too large here (at most 2048 bits" in str(err.value)


def test_arc_seal_without_a_sealing_key_is_an_error_where_it_is_set(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(str(write_config(tmp_path, "policy:\n  arc_seal: true\n", banks="FWD:\n  arc_seal: true\n")))
    text = str(err.value)
    assert "pymavis.yaml:4: arc_seal: arc_seal needs a key: arc_sealing in the main file is not set" in text
    assert "b.yaml:2: arc_seal: arc_seal needs a key" in text


def test_arc_results_choose_banks(tmp_path):
    config = load(str(write_config(tmp_path, "auth_result_policy: {'arc=pass': FWD}\n", banks="FWD: {}\n")))
    assert list(config["auth_result_policy"]) == ["arc=pass"]


# --- the pipeline ---------------------------------------------------------------------------


FORWARDER = SEALING_YAML + """\
authserv_id: mx.example.net
policy:
  arc_verify: true
  arc_seal: true
  local_domains: [example.net]
"""


def run(tmp_path, monkeypatch, raw, config_text=FORWARDER, z=None, bank=(), banks=None):
    config = load(str(write_config(tmp_path, config_text, banks)))
    from pymavis.auth import resolver
    z = z if z is not None else zone()
    monkeypatch.setattr(resolver, "lookup_for", lambda settings: z)
    txn = txn_of(raw)
    try:
        return pipeline.process(config, merge(config, tuple(bank)), txn)
    finally:
        txn.spool.close()


def our_field(result):
    return [h.value for h in result.outcome.headers if h.name == "Authentication-Results" and h.op == "insert"]


def arc_names(result):
    return [h.name for h in result.outcome.headers if h.name.startswith("ARC-")]


def test_arriving_chain_is_reported_and_sealed_on_top_after_our_edits(tmp_path, monkeypatch):
    raw = b"Authentication-Results: mx.example.net; arc=pass (forged)\r\n" + two_hops()
    result = run(tmp_path, monkeypatch, raw)
    out = result.outcome
    assert out.action is Action.CONTINUE
    assert our_field(result) == ["mx.example.net; arc=pass (i=2)"]
    # inserted one after another at the top: the seal last, so it is first
    assert [h.name for h in out.headers[-4:]] == ["Authentication-Results", "ARC-Authentication-Results",
                                                  "ARC-Message-Signature", "ARC-Seal"]
    delivered = rawmsg.apply_edits(raw, out.headers)
    assert delivered.startswith(b"ARC-Seal: i=3; cv=pass; a=rsa-sha256; d=example.net; s=arc;")
    assert b"ARC-Authentication-Results: i=3; mx.example.net; arc=pass\r\n" in delivered
    assert b"(forged)" not in delivered
    cv, sets, why = dkim.arc_verify(delivered, dnsfunc=dnsfunc)
    assert cv == b"pass" and sets[0]["instance"] == 3, why
    assert arcverify.verify(delivered, zone()) == ArcResult("pass", 3, "example.net")


def test_mail_without_a_chain_gets_i1_cv_none(tmp_path, monkeypatch):
    result = run(tmp_path, monkeypatch, MESSAGE)
    assert our_field(result) == ["mx.example.net; arc=none"]
    delivered = rawmsg.apply_edits(MESSAGE, result.outcome.headers)
    assert delivered.startswith(b"ARC-Seal: i=1; cv=none;")
    assert dkim.arc_verify(delivered, dnsfunc=dnsfunc)[0] == b"pass"


def test_a_failed_chain_is_reported_and_sealed_cv_fail(tmp_path, monkeypatch):
    raw = two_hops().replace(b"We lost the game.", b"We won the game.")
    result = run(tmp_path, monkeypatch, raw)
    assert our_field(result) == ["mx.example.net; arc=fail (ARC-Message-Signature i=2: body hash did not verify)"]
    assert rawmsg.apply_edits(raw, result.outcome.headers).startswith(b"ARC-Seal: i=3; cv=fail;")


def test_a_dns_timeout_is_temperror_and_the_mail_passes_unsealed(tmp_path, monkeypatch):
    result = run(tmp_path, monkeypatch, two_hops(), z=zone(stalled={"*"}))
    assert result.outcome.action is Action.CONTINUE
    assert our_field(result) == ["mx.example.net; arc=temperror (key lookup failed: timeout after 5 s)"]
    assert arc_names(result) == []


def test_verify_only_reports_and_does_not_seal(tmp_path, monkeypatch):
    result = run(tmp_path, monkeypatch, two_hops(), "authserv_id: mx.example.net\npolicy: {arc_verify: true}\n")
    assert our_field(result) == ["mx.example.net; arc=pass (i=2)"] and arc_names(result) == []


def test_off_by_default_no_field_no_lookup(tmp_path, monkeypatch):
    z = zone()
    result = run(tmp_path, monkeypatch, two_hops(), "", z=z)
    assert result.outcome.headers == () and z.asked == []


def test_originating_mail_is_not_sealed(tmp_path, monkeypatch):
    config = FORWARDER + "client_ipaddr_policy:\n  - {ip: [192.0.2.0/24], bank: OUT}\n"
    result = run(tmp_path, monkeypatch, two_hops(), config, bank=("OUT",), banks="OUT:\n  originating: true\n")
    assert arc_names(result) == []


def test_mail_leaving_as_banned_to_a_lover_is_not_sealed(tmp_path, monkeypatch):
    exe = base64.encodebytes(b"MZ" + b"\0" * 200).replace(b"\n", b"\r\n")
    raw = (b"From: joe@example.com\r\nTo: b@example.net\r\nSubject: x\r\nDate: Fri, 11 Jul 2003 21:00:37 -0700\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--b1\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\n"
           b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.exe\"\r\n\r\n"
           + exe + b"--b1--\r\n")
    result = run(tmp_path, monkeypatch, raw, FORWARDER + "  banned_files_lovers: true\n")
    assert [d.main.name for d in result.outcome.decisions] == ["BANNED"]
    assert our_field(result) == ["mx.example.net; arc=none"] and arc_names(result) == []
