"""Per-recipient decisions and their collapse into one milter answer, as tables."""

import textwrap

import pytest

from pymavis import policy as policy_mod
from pymavis.categories import Ccat, Finding
from pymavis.config import load
from pymavis.decide import PER_RCPT_SETTINGS, RcptSettings, decide
from pymavis.outcome import Action, HeaderEdit, collapse, parse_reply


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("conf")
    (d / "banks").mkdir()
    (d / "p.yaml").write_text(textwrap.dedent("""\
        policy:
          final_virus_destiny: reject
          final_banned_destiny: discard
          final_spam_destiny: bounce
          final_bad_header_destiny: pass
          final_unchecked_destiny: tempfail
          final_oversized_destiny: bounce
    """))
    return policy_mod.merge(load(str(d / "p.yaml")), ())


def settings(rcpt, **over):
    values = {name: (0 if name == "message_size_limit" else False) for name in PER_RCPT_SETTINGS}
    values.update(over)
    return RcptSettings(rcpt, True, tuple(sorted(values.items())))


V = Finding("virus", Ccat.VIRUS, 0, "Eicar-Signature")
B = Finding("banned", Ccat.BANNED, 0, "P=p001,T=exe-ms")
S = Finding("spam", Ccat.SPAM, 0, "")
H = Finding("header", Ccat.BADH, 2, "8-bit")
U = Finding("virus", Ccat.UNCHECKED, 1, "encrypted")
O_A = Finding("size", Ccat.OVERSIZED, 0, "too big", frozenset({"a@x"}), (("size", 10), ("limit", 5)))
DQ = Finding("dmarc", Ccat.SPAM, 2, "DMARC policy of bank.example: reject")   # a bank's dmarc_*_action quarantine

DECIDE = [
    # id, findings, per-recipient overrides, expected (main, blocking ccat or None, destiny)
    ("clean", (), {}, (Ccat.CLEAN, None, "pass")),
    ("virus-rejects", (V,), {}, (Ccat.VIRUS, Ccat.VIRUS, "reject")),
    ("virus-lover-passes", (V,), {"virus_lovers": True}, (Ccat.VIRUS, None, "pass")),
    ("bypass-acts-as-lover", (V,), {"bypass_virus_checks": True}, (Ccat.VIRUS, None, "pass")),
    ("lover-of-virus-still-banned", (V, B), {"virus_lovers": True}, (Ccat.VIRUS, Ccat.BANNED, "discard")),
    ("highest-wins", (S, B), {}, (Ccat.BANNED, Ccat.BANNED, "discard")),
    ("badh-passes-by-default", (H,), {}, (Ccat.BADH, None, "pass")),
    ("unchecked-tempfails", (U,), {}, (Ccat.UNCHECKED, Ccat.UNCHECKED, "tempfail")),
    ("spam-lover", (S,), {"spam_lovers": True}, (Ccat.SPAM, None, "pass")),
    ("oversized-for-a", (O_A,), {}, (Ccat.OVERSIZED, Ccat.OVERSIZED, "bounce")),
    ("dmarc-quarantine-discards-whatever-spam-destiny", (DQ,), {}, (Ccat.SPAM, Ccat.SPAM, "discard")),
    ("dmarc-quarantine-above-spamd-spam", (S, DQ), {}, (Ccat.SPAM, Ccat.SPAM, "discard")),
    ("dmarc-quarantine-spam-lover", (DQ,), {"spam_lovers": True}, (Ccat.SPAM, None, "pass")),
    ("dmarc-quarantine-bypass-spam", (DQ,), {"bypass_spam_checks": True}, (Ccat.SPAM, None, "pass")),
    ("dmarc-quarantine-lover-still-banned", (DQ, B), {"spam_lovers": True}, (Ccat.BANNED, Ccat.BANNED, "discard")),
]


@pytest.mark.parametrize("findings,over,expected", [c[1:] for c in DECIDE], ids=[c[0] for c in DECIDE])
def test_decide(policy, findings, over, expected):
    d = decide(policy, settings("a@x", **over), findings)
    assert (d.main, d.blocking.ccat if d.blocking else None, d.destiny) == expected


def test_per_recipient_finding_does_not_touch_others(policy):
    d = decide(policy, settings("b@x"), (O_A,))
    assert (d.main, d.destiny) == (Ccat.CLEAN, "pass")


HDR = (HeaderEdit("X-Virus-Scanned", "pymavis"),)

COLLAPSE = [
    # id, per-recipient (findings, overrides), expected (action, reply code, del_rcpts, notify)
    ("all-clean", [((), {}), ((), {})], (Action.CONTINUE, None, (), ())),
    ("all-reject", [((V,), {}), ((V,), {})], (Action.REJECT, "554", (), ())),
    ("all-discard", [((B,), {}), ((B,), {})], (Action.DISCARD, None, (), ())),
    ("reject-and-discard-rejects", [((V,), {}), ((B,), {})], (Action.REJECT, "554", (), ())),
    ("any-tempfail-wins", [((U,), {}), ((V,), {})], (Action.TEMPFAIL, "451", (), ())),
    ("mixed-discard", [((B,), {}), ((B,), {"banned_files_lovers": True})], (Action.CONTINUE, None, ("r0@x",), ())),
    ("mixed-reject-becomes-notice", [((V,), {}), ((V,), {"virus_lovers": True})],
     (Action.CONTINUE, None, ("r0@x",), ("r0@x",))),
    ("oversized-all", [((O_A,), {})], (Action.REJECT, "552", (), ())),
]


@pytest.mark.parametrize("rows,expected", [c[1:] for c in COLLAPSE], ids=[c[0] for c in COLLAPSE])
def test_collapse(policy, rows, expected):
    decisions = []
    for i, (findings, over) in enumerate(rows):
        rcpt = "a@x" if findings == (O_A,) else f"r{i}@x"
        decisions.append(decide(policy, settings(rcpt, **over), findings))
    out = collapse(policy, tuple(decisions), "MAILID123456", HDR)
    assert (out.action, out.reply.code if out.reply else None, out.del_rcpts, out.notify_sender) == expected
    assert out.headers == (HDR if out.action is Action.CONTINUE else ())


def test_reject_reply_text(policy):
    d = decide(policy, settings("a@x"), (V,))
    out = collapse(policy, (d,), "MAILID123456")
    assert str(out.reply) == "554 5.7.0 Reject, id=MAILID123456 - INFECTED: Eicar-Signature"


def test_oversized_reply_has_size_and_limit(policy):
    out = collapse(policy, (decide(policy, settings("a@x"), (O_A,)),), "ID")
    assert (out.reply.code, out.reply.xcode) == ("552", "5.3.4")
    assert "(10 bytes)" in out.reply.text and "(5)" in out.reply.text


REPLIES = [
    ("full", "554 5.7.0 Reject, id={mail_id}", ("554", "5.7.0", "Reject, id=ID")),
    ("no-xcode", "550 go away", ("550", "5.7.0", "go away")),
    ("temp-no-xcode", "451 later", ("451", "4.7.0", "later")),
    ("no-code", "just text", ("554", "5.7.0", "just text")),
    ("percent-doubled", "554 5.7.0 100% bad", ("554", "5.7.0", "100%% bad")),
    ("crlf-stripped", "554 5.7.0 a\r\nb", ("554", "5.7.0", "a  b")),
    ("unknown-placeholder-kept", "554 5.7.0 {nope}", ("554", "5.7.0", "{nope}")),
]


@pytest.mark.parametrize("template,expected", [c[1:] for c in REPLIES], ids=[c[0] for c in REPLIES])
def test_parse_reply(template, expected):
    r = parse_reply(template, {"mail_id": "ID"})
    assert (r.code, r.xcode, r.text) == expected


def test_a_failing_lookup_tempfails_the_message(policy):
    """Found / not found / failed: failed is never read as 'no'."""
    from types import SimpleNamespace

    from pymavis import pipeline
    from pymavis.lookups import LookupChain, LookupFailed

    class Broken:
        describe = "broken"

        def lookup_address(self, address, keys):
            raise LookupFailed("backend down")

    broken = policy_mod.Policy(("X",), {**policy._settings, "spam_lovers": LookupChain((Broken(),))})
    txn = SimpleNamespace(mail_id="ID", rcpts=(SimpleNamespace(addr="a@x"),), header=lambda name: None)
    result = pipeline.process(None, broken, txn)
    assert result.outcome.action is Action.TEMPFAIL
    assert str(result.outcome.reply) == "451 4.3.0 Temporary lookup failure, id=ID"
    assert result.outcome.lookup_error == "backend down"
