"""Policy banks chosen by authentication (author_to_policy_bank, auth_result_policy) and the
DMARC destinies per bank (dmarc_reject_action, dmarc_quarantine_action, dmarc_fail_score):
the pure parts as tables, then the pipeline with the fake DNS of test_auth (and a fake spamd
on loopback where a spam level must be exact). Offline."""

import logging
import textwrap

import pytest

from harness.fakespamd import FakeSpamd
from test_auth import KEYS, MESSAGE, PRIV_1024, PRIV_2048, SPF_ZONE, Zone, signed, txn_of

from pymavis import pipeline
from pymavis.auth import RESULT_KEYS, Results, dmarc, resolver
from pymavis.auth.dkimverify import DkimResult
from pymavis.auth.dmarc import DmarcResult, Record
from pymavis.auth.spfcheck import SpfResult
from pymavis.categories import Ccat
from pymavis.checks import auth as auth_check
from pymavis.config import ConfigError, load
from pymavis.outcome import Action
from pymavis.policy import by_auth, merge

# --- pure: alignment, pct=, result keys ---------------------------------------------------------


@pytest.mark.parametrize("signer, author, expected", [
    pytest.param("paypal.example", "paypal.example", True, id="same"),
    pytest.param("paypal.example", "mail.paypal.example", True, id="parent"),
    pytest.param("PayPal.Example.", "a.b.paypal.example", True, id="case-and-dot"),
    pytest.param("mail.paypal.example", "paypal.example", False, id="child-signs-for-nobody-above"),
    pytest.param("evil.example", "paypal.example", False, id="unrelated"),
    pytest.param("xpaypal.example", "paypal.example", False, id="suffix-is-not-parent"),
    pytest.param("com", "paypal.com", False, id="public-suffix"),
    pytest.param("co.uk", "bank.co.uk", False, id="public-suffix-two-labels"),
    pytest.param("github.io", "x.github.io", False, id="private-registry-suffix"),
    pytest.param("x.github.io", "a.x.github.io", True, id="below-a-private-registry"),
])
def test_author_aligned(signer, author, expected):
    assert dmarc.author_aligned(signer, author) is expected


@pytest.mark.parametrize("policy, pct, sample, expected", [
    ("reject", 100, 99, "reject"),
    ("reject", 20, 19, "reject"),
    ("reject", 20, 20, "quarantine"),
    ("quarantine", 0, 0, "none"),
    ("quarantine", 50, 10, "quarantine"),
])
def test_applied_policy_after_pct(policy, pct, sample, expected):
    result = DmarcResult("fail", "x.example", policy, Record(p=policy, pct=pct))
    assert dmarc.applied_policy(result, sample) == expected


def dk(result, domain, selector="s", bits=2048, reason=""):
    return DkimResult(result, domain, selector, key_bits=bits, reason=reason)


def dmarc_spf(result):
    return SpfResult(result, "mailfrom", "b@example.com", "example.com")


def test_result_keys():
    results = Results(dkim=(dk("pass", "a.example"), dk("fail", "b.example")),
                      spf=dmarc_spf("softfail"), dmarc=DmarcResult("fail", "a.example", "reject"))
    assert results.keys() == {"dkim=pass", "dkim=fail", "spf=softfail", "dmarc=fail"}
    assert Results(dkim=()).keys() == {"dkim=none"}
    assert Results().keys() == frozenset()   # nothing checked: no key, not "none"
    assert set(results.keys()) <= set(RESULT_KEYS)


# --- configuration --------------------------------------------------------------------------

BANKS = """\
WHITELIST:
  spam_lovers: true
  bypass_spam_checks: true
TRUSTED:
  spam_kill_level: 50
SUSPECT:
  spam_kill_level: 3
STRICT:
  dmarc_reject_action: reject
  dmarc_quarantine_action: reject
QUAR:
  dmarc_reject_action: quarantine
SCORE:
  dmarc_reject_action: score
  dmarc_fail_score: 4
"""

MAIN = """\
authserv_id: mx.example.net
author_to_policy_bank:
  .paypal.example: WHITELIST
  shop.example: "TRUSTED, WHITELIST"
  ceo@boss.example: [TRUSTED]
policy:
  dkim_verify: true
  spf_verify: true
  dmarc_verify: true
  local_domains: [example.net]
"""


def load_config(tmp_path, main=MAIN, banks=BANKS, extra=""):
    (tmp_path / "banks").mkdir(exist_ok=True)
    (tmp_path / "banks" / "b.yaml").write_text(textwrap.dedent(banks))
    path = tmp_path / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmyhostname: mx.example.net\n" + textwrap.dedent(extra)
                    + textwrap.dedent(main))
    return load(str(path))


def config_errors(tmp_path, extra, main="policy: {}\n") -> str:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, main=main, extra=extra)
    return str(err.value)


def test_unknown_banks_and_keys_are_load_errors(tmp_path):
    assert ("pymavis.yaml:3: policy bank 'WHITLIST' (author_to_policy_bank entry '@.paypal.example') is not "
            "defined (did you mean 'WHITELIST'?)") in config_errors(
        tmp_path, "author_to_policy_bank: {.paypal.example: WHITLIST}\n")
    assert "policy bank 'NOPE' (author_to_policy_bank entry" in config_errors(
        tmp_path, "author_to_policy_bank: [{regex: [['@x\\.example$', 'TRUSTED,NOPE']]}]\n")
    assert "pymavis.yaml:3: policy bank 'SUSPEKT' is not defined (did you mean 'SUSPECT'?)" in config_errors(
        tmp_path, "auth_result_policy: {dmarc=fail: SUSPEKT}\n")
    assert "unknown key 'dmarc=failed' (did you mean 'dmarc=fail'?)" in config_errors(
        tmp_path, "auth_result_policy: {dmarc=failed: SUSPECT}\n")
    assert "expected policy bank names" in config_errors(tmp_path, "author_to_policy_bank: [.paypal.example]\n")
    assert "dmarc_reject_action: expected one of none, reject, quarantine, score, got 'bounce'" in config_errors(
        tmp_path, "", "policy: {dmarc_reject_action: bounce}\n")


def test_bank_names_forms(tmp_path):
    config = load_config(tmp_path, extra="auth_result_policy: {spf=fail: [SUSPECT], dmarc=fail: 'SUSPECT,STRICT'}\n")
    assert config["auth_result_policy"] == {"spf=fail": ("SUSPECT",), "dmarc=fail": ("SUSPECT", "STRICT")}
    hit = config["author_to_policy_bank"].lookup_address("a@shop.example", is_local=False)
    assert hit.value == ("TRUSTED", "WHITELIST")


# --- by_auth: which banks the results choose ----------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return load_config(tmp_path_factory.mktemp("conf"),
                       extra='auth_result_policy: {"spf=fail": SUSPECT, "dmarc=fail": [STRICT]}\n')


BY_AUTH = [
    # id, From value, DKIM results, SPF result, DMARC result, banks expected
    ("author-signed", "PayPal <service@paypal.example>", (dk("pass", "paypal.example"),), None, None, ("WHITELIST",)),
    ("subdomain-author-parent-signer", "a@mail.paypal.example", (dk("pass", "paypal.example"),), None, None,
     ("WHITELIST",)),
    ("exact-domain-key", "a@shop.example", (dk("pass", "shop.example"),), None, None, ("TRUSTED", "WHITELIST")),
    ("exact-domain-key-not-subdomains", "a@x.shop.example", (dk("pass", "shop.example"),), None, None, ()),
    ("address-key", "ceo@boss.example", (dk("pass", "boss.example"),), None, None, ("TRUSTED",)),
    ("address-key-other-user", "cfo@boss.example", (dk("pass", "boss.example"),), None, None, ()),
    ("second-signature-aligned", "a@paypal.example", (dk("pass", "esp.example"), dk("pass", "paypal.example")),
     None, None, ("WHITELIST",)),
    ("bad-signature", "a@paypal.example", (dk("fail", "paypal.example"),), None, None, ()),
    ("small-key", "a@paypal.example", (dk("policy", "paypal.example", bits=512, reason="key too small"),),
     None, None, ()),
    ("unaligned", "a@paypal.example", (dk("pass", "evil.example"),), None, None, ()),
    ("child-signer", "a@paypal.example", (dk("pass", "mail.paypal.example"),), None, None, ()),
    ("temperror", "a@paypal.example", (dk("temperror", "paypal.example"),), None, None, ()),
    ("no-signature", "a@paypal.example", (), None, None, ()),
    ("two-authors", "a@paypal.example, b@paypal.example", (dk("pass", "paypal.example"),), None, None, ()),
    ("spf-fail", "a@other.example", (), dmarc_spf("fail"), None, ("SUSPECT",)),
    ("results-then-author", "a@paypal.example", (dk("pass", "paypal.example"),), dmarc_spf("fail"),
     DmarcResult("fail", "paypal.example", "reject"), ("SUSPECT", "STRICT", "WHITELIST")),
]


@pytest.mark.parametrize("from_value, dkim_results, spf, dmarc_result, expected", [c[1:] for c in BY_AUTH],
                         ids=[c[0] for c in BY_AUTH])
def test_by_auth(config, from_value, dkim_results, spf, dmarc_result, expected):
    chosen = by_auth(config, merge(config, ()), Results(dkim_results, spf, dmarc_result), (from_value,))
    assert chosen.names == expected


def test_by_auth_says_why_and_why_not(config):
    policy = merge(config, ())
    chosen = by_auth(config, policy, Results((dk("pass", "paypal.example", "sel"),)), ("a@mail.paypal.example",))
    assert chosen.loaded == (("WHITELIST", "author mail.paypal.example (DKIM d=paypal.example s=sel, 2048-bit key; "
                                           "author_to_policy_bank key .paypal.example)"),)
    small = dk("policy", "paypal.example", reason="key too small: 512 bits < 1024")
    refused = by_auth(config, policy, Results((small,)), ("a@paypal.example",))
    assert refused.refused == ("author_to_policy_bank WHITELIST for paypal.example not loaded: no valid DKIM "
                               "signature by paypal.example or a parent domain (dkim=policy d=paypal.example "
                               "(key too small: 512 bits < 1024))",)
    unverified = by_auth(config, policy, Results(), ("a@paypal.example",))
    assert unverified.names == () and "DKIM not verified" in unverified.refused[0]
    assert by_auth(config, policy, Results(dkim=()), ("a@nobody.example",)) == type(refused)()


# --- the DMARC verdict (pure) ---------------------------------------------------------------------


def test_dmarc_verdict_by_bank(config):
    fail = Results(dmarc=DmarcResult("fail", "bank.example", "reject", Record("reject"), "no aligned DKIM or SPF pass"))
    assert auth_check.dmarc_verdict(merge(config, ()), fail, "m1").action == "none"
    strict = auth_check.dmarc_verdict(merge(config, ("STRICT",)), fail, "m1")
    assert (strict.policy, strict.action, strict.setting) == ("reject", "reject", "dmarc_reject_action")
    assert str(auth_check.dmarc_reply(strict, "m1")) == (
        "554 5.7.1 Reject, id=m1 - DMARC policy of bank.example: reject, no aligned DKIM or SPF pass")
    sampled = Results(dmarc=DmarcResult("fail", "bank.example", "reject", Record("reject", pct=0), "x"))
    v = auth_check.dmarc_verdict(merge(config, ("QUAR",)), sampled, "m1")
    assert (v.policy, v.setting, v.action, v.sampled_out) == ("quarantine", "dmarc_quarantine_action", "none", True)
    for result in (DmarcResult("pass", "bank.example", "reject", Record("reject")),
                   DmarcResult("temperror", "bank.example", "reject", Record("reject")),
                   DmarcResult("fail", "bank.example", "none", Record("none")), None):
        assert auth_check.dmarc_verdict(merge(config, ("STRICT",)), Results(dmarc=result), "m1") is None


# --- the pipeline ---------------------------------------------------------------------------------

ZONE_TXT = {
    **KEYS,
    "k2048._domainkey.paypal.example": KEYS["k2048._domainkey.example.com"],
    "k1024._domainkey.paypal.example": KEYS["k1024._domainkey.example.com"],
    "k2048._domainkey.mail.paypal.example": KEYS["k2048._domainkey.example.com"],
    "k2048._domainkey.evil.example": KEYS["k2048._domainkey.example.com"],
    "_dmarc.paypal.example": b"v=DMARC1; p=reject",
    "_dmarc.bank.example": b"v=DMARC1; p=reject",
    "_dmarc.quar.example": b"v=DMARC1; p=quarantine",
    "_dmarc.pct0.example": b"v=DMARC1; p=reject; pct=0",
    "_dmarc.none.example": b"v=DMARC1; p=none",
}
BOB, ANN, LOVER = "bob@example.net", "ann@example.net", "postmaster@example.net"


def zone(**stalled):
    return Zone(SPF_ZONE, txt=ZONE_TXT, stalled=set(stalled))


def from_(address: str, message=MESSAGE) -> bytes:
    return message.replace(b"joe@football.example.com", address.encode())


def run(tmp_path, monkeypatch, raw, extra="", main=MAIN, rcpts=(BOB,), the_zone=None, **txn_args):
    config = load_config(tmp_path, main=main, extra=extra)
    the_zone = the_zone if the_zone is not None else zone()
    monkeypatch.setattr(resolver, "lookup_for", lambda settings: the_zone)
    txn = txn_of(raw, rcpts=rcpts, **txn_args)
    try:
        return pipeline.process(config, merge(config, ()), txn)
    finally:
        txn.spool.close()


def field(result) -> str:
    [value] = [h.value for h in result.outcome.headers if h.name == "Authentication-Results"]
    return value


def spamd(score: float) -> FakeSpamd:
    return FakeSpamd(f"SPAMD/1.1 0 EX_OK\r\nSpam: True ; {score} / 5.0\r\n\r\nRULE_A".encode())


def spam_config(fake, **policy) -> str:
    lines = "".join(f"  {k}: {v}\n" for k, v in policy.items())
    return (f'spam_scanners: [{{name: s, socket: "{fake.socket_spec}"}}]\nspam_cache: {{ttl_s: 0}}\n'
            + MAIN + "  final_spam_destiny: reject\n" + lines)


def test_author_bank_is_loaded_before_the_spam_check_and_spamd_is_not_asked(tmp_path, monkeypatch, caplog):
    raw = signed(from_("service@paypal.example"), domain=b"paypal.example")
    with spamd(30) as fake, caplog.at_level(logging.INFO, logger="pymavis"):
        result = run(tmp_path, monkeypatch, raw, main=spam_config(fake))
        assert fake.requests == []   # the bank bypasses spam checks: the early spamd call waited for it
    assert result.policy.bank_path == ("WHITELIST",)
    assert result.outcome.action is Action.CONTINUE and not result.findings
    assert "dkim=pass (2048-bit key) header.d=paypal.example" in field(result)
    assert ("policy bank WHITELIST loaded by author paypal.example (DKIM d=paypal.example s=k2048, 2048-bit key; "
            "author_to_policy_bank key .paypal.example); bank path WHITELIST") in caplog.text


@pytest.mark.parametrize("raw, extra, why", [
    pytest.param(signed(from_("service@paypal.example"), domain=b"paypal.example").replace(b"hungry", b"thirsty"),
                 "", "dkim=fail d=paypal.example (body hash did not verify)", id="bad-signature"),
    pytest.param(signed(from_("service@paypal.example"), selector=b"k1024", domain=b"paypal.example", key=PRIV_1024),
                 "  dkim_min_key_bits: 2048\n", "dkim=policy d=paypal.example (key too small: 1024 bits < 2048)",
                 id="small-key"),
    pytest.param(signed(from_("service@paypal.example"), domain=b"evil.example"), "",
                 "dkim=pass d=evil.example", id="unaligned"),
    pytest.param(signed(from_("service@paypal.example"), domain=b"mail.paypal.example"), "",
                 "dkim=pass d=mail.paypal.example", id="child-domain"),
    pytest.param(from_("service@paypal.example"), "", "no signature", id="unsigned"),
])
def test_author_bank_is_not_loaded_without_a_valid_aligned_signature(tmp_path, monkeypatch, caplog, raw, extra, why):
    with spamd(30) as fake, caplog.at_level(logging.INFO, logger="pymavis"):
        result = run(tmp_path, monkeypatch, raw, main=spam_config(fake) + extra)
        assert len(fake.requests) == 1
    assert result.policy.bank_path == ()
    assert result.outcome.action is Action.REJECT   # spam, and no WHITELIST bank to let it through
    assert f"author_to_policy_bank WHITELIST for paypal.example not loaded: no valid DKIM signature by " \
           f"paypal.example or a parent domain ({why})" in caplog.text


def test_subdomain_author_with_a_parent_signature_loads_the_bank(tmp_path, monkeypatch):
    raw = signed(from_("news@mail.paypal.example"), domain=b"paypal.example", key=PRIV_2048)
    result = run(tmp_path, monkeypatch, raw)
    assert result.policy.bank_path == ("WHITELIST",)
    assert "dmarc=pass (p=reject dis=none) header.from=mail.paypal.example" in field(result)


BANK_FROM = "alerts@bank.example"   # p=reject; signed by example.com (unaligned), SPF passes for example.com


def bank_mail(address=BANK_FROM) -> bytes:
    return signed(from_(address))


def test_dmarc_reject_policy_is_only_reported_by_default(tmp_path, monkeypatch):
    result = run(tmp_path, monkeypatch, bank_mail())
    assert result.outcome.action is Action.CONTINUE and not result.findings
    assert field(result).endswith("dmarc=fail (p=reject dis=none) header.from=bank.example")


def test_dmarc_reject_action_reject_answers_554_before_the_other_checks(tmp_path, monkeypatch):
    result = run(tmp_path, monkeypatch, bank_mail(), main=MAIN + "  dmarc_reject_action: reject\n", rcpts=(BOB, LOVER))
    out = result.outcome
    assert out.action is Action.REJECT
    assert str(out.reply).startswith("554 5.7.1 Reject, id=") and str(out.reply).endswith(
        " - DMARC policy of bank.example: reject, no aligned DKIM or SPF pass")
    assert [r.name for r in result.checks] == ["size", "header", "auth"]   # no decoding, no scanners
    assert [(d.rcpt, d.main, d.main_minor, d.destiny) for d in out.decisions] == [
        (BOB, Ccat.SPAM, 2, "reject"), (LOVER, Ccat.SPAM, 2, "reject")]
    assert out.quarantined   # kept, like other rejected categories


def test_dmarc_quarantine_blocks_all_but_spam_lovers_and_says_dis_quarantine(tmp_path, monkeypatch):
    main = MAIN + "  dmarc_reject_action: quarantine\n  spam_lovers: [postmaster@example.net]\n"
    result = run(tmp_path, monkeypatch, bank_mail(), main=main, rcpts=(BOB, LOVER))
    out = result.outcome
    assert out.action is Action.CONTINUE and out.del_rcpts == (BOB,) and out.quarantined
    assert [(d.rcpt, d.destiny) for d in out.decisions] == [(BOB, "discard"), (LOVER, "pass")]
    assert [(f.check, f.ccat, f.minor) for f in result.findings] == [("dmarc", Ccat.SPAM, 2)]
    assert field(result).endswith("dmarc=fail (p=reject dis=quarantine) header.from=bank.example")
    alone = run(tmp_path, monkeypatch, bank_mail(), main=main, rcpts=(BOB,))
    assert alone.outcome.action is Action.DISCARD and alone.outcome.quarantined


def test_dmarc_score_adds_dmarc_fail_score_to_the_spam_level(tmp_path, monkeypatch):
    with spamd(4) as fake:
        result = run(tmp_path, monkeypatch, bank_mail(),
                     main=spam_config(fake, dmarc_reject_action="score", dmarc_fail_score=3.5))
        passed = run(tmp_path, monkeypatch, bank_mail(), main=spam_config(fake, spam_kill_level=10))
    assert result.outcome.action is Action.REJECT   # 4 + 3.5 >= 6.9
    [finding] = result.findings
    assert finding.check == "spam" and finding.detail.startswith("score=7.5 tests=[PYMAVIS_DMARC_FAIL=3.5, RULE_A]")
    assert passed.outcome.action is Action.CONTINUE
    assert dict((h.name, h.value) for h in passed.outcome.headers)["X-Spam-Score"] == "4"


def test_dmarc_actions_are_per_bank_and_a_result_can_choose_the_bank(tmp_path, monkeypatch):
    # the bank chosen by the result "dmarc=fail" rejects; the author's own bank is loaded after it
    result = run(tmp_path, monkeypatch, bank_mail(), extra='auth_result_policy: {"dmarc=fail": STRICT}\n')
    assert result.outcome.action is Action.REJECT and result.policy.bank_path == ("STRICT",)
    quar = run(tmp_path, monkeypatch, bank_mail("a@quar.example"), extra='auth_result_policy: {"dmarc=fail": STRICT}\n')
    assert quar.outcome.action is Action.REJECT   # STRICT rejects p=quarantine too
    other = run(tmp_path, monkeypatch, bank_mail("a@quar.example"), extra='auth_result_policy: {"dmarc=fail": QUAR}\n')
    assert other.outcome.action is Action.CONTINUE   # QUAR quarantines p=reject only
    assert field(other).endswith("dmarc=fail (p=quarantine dis=none) header.from=quar.example")


def test_pct_sampled_out_p_reject_gets_the_quarantine_action(tmp_path, monkeypatch):
    main = MAIN + "  dmarc_reject_action: reject\n  dmarc_quarantine_action: quarantine\n"
    result = run(tmp_path, monkeypatch, bank_mail("a@pct0.example"), main=main)
    assert result.outcome.action is Action.DISCARD
    assert "p=reject, sampled out by pct=" in result.findings[0].detail


@pytest.mark.parametrize("address, stalled", [
    pytest.param("a@none.example", (), id="p-none"),
    pytest.param(BANK_FROM, ("_dmarc.bank.example",), id="policy-lookup-timeout"),
])
def test_no_action_without_a_fail_under_reject_or_quarantine(tmp_path, monkeypatch, address, stalled):
    main = MAIN + "  dmarc_reject_action: reject\n  dmarc_quarantine_action: reject\n"
    result = run(tmp_path, monkeypatch, bank_mail(address), main=main,
                 the_zone=zone(**{name: True for name in stalled}))
    assert result.outcome.action is Action.CONTINUE and not result.findings


def test_an_spf_result_bank_applies_to_per_recipient_settings(tmp_path, monkeypatch):
    # SUSPECT lowers spam_kill_level to 3: a spam level of 4 is SPAM only after SPF failed
    raw = from_("a@other.example")
    with spamd(4) as fake:
        extra = 'auth_result_policy: {"spf=fail": SUSPECT}\n'
        failed = run(tmp_path, monkeypatch, raw, main=spam_config(fake), extra=extra,
                     the_zone=Zone({**SPF_ZONE, ("other.example", "TXT"): (b"v=spf1 -all",)}, txt=ZONE_TXT),
                     mail_from="<bounce@other.example>")
        passed = run(tmp_path, monkeypatch, raw, main=spam_config(fake), extra=extra)
    assert failed.policy.bank_path == ("SUSPECT",) and failed.outcome.action is Action.REJECT
    assert passed.policy.bank_path == () and passed.outcome.action is Action.CONTINUE
