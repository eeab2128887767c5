"""Who is told about a message (notices.py), as the pipeline decides it: the sender's DSN
for recipients refused while others got the mail, admin notices grouped per admin and
category, recipient warnings, NOTIFY=NEVER, and the outbox delivering to a real SMTP
listener."""

import email
import email.policy

import pytest

from harness.sink import SMTPSink
from test_content_checks import MZ, config_from, message, txn_of

from pymavis import notices, pipeline
from pymavis.outcome import Action
from pymavis.policy import merge
from pymavis.transaction import Rcpt

BANNED = message([("run.exe", "application/octet-stream", MZ)], subject="banned one")
POLICY = """
policy:
  local_domains: [example.com]
  final_banned_destiny: bounce
  banned_files_lovers: [lover@example.com]
  banned_admin: {"@example.com": admin@example.com}
  warn_banned_recip: {"warnme@example.com": true}
"""


def decided(tmp_path, rcpts, params=None, text=POLICY, raw=BANNED):
    config = config_from(tmp_path, text)
    policy = merge(config, ())
    txn = txn_of(raw, rcpts)
    if params:
        import dataclasses
        txn = dataclasses.replace(txn, rcpts=tuple(Rcpt(r.raw, r.addr, params.get(r.addr, ())) for r in txn.rcpts))
    result = pipeline.process(config, policy, txn, keep_blocked=False)
    from pymavis.decide import resolve_rcpt
    settings = tuple(resolve_rcpt(policy, r.addr) for r in txn.rcpts)
    return config, policy, txn, result, settings


def kinds(notes):
    return sorted((n.kind, n.rcpts) for n in notes)


def test_partly_refused_mail_gets_the_sender_a_dsn_and_the_admin_one_notice(tmp_path):
    config, policy, txn, result, settings = decided(
        tmp_path, ("lover@example.com", "bob@example.com", "warnme@example.com"))
    assert result.outcome.action is Action.CONTINUE
    notes = notices.notices_for(config, policy, txn, result.outcome, result.findings, settings)
    assert kinds(notes) == [("admin", ("admin@example.com",)), ("dsn", ("a@example.org",)),
                            ("recipient", ("warnme@example.com",))]
    dsn = next(n for n in notes if n.kind == "dsn")
    assert dsn.mail_from == ""
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status").as_string()
    assert "rfc822; bob@example.com" in status and "rfc822; warnme@example.com" in status
    assert "lover@example.com" not in status
    admin = next(n for n in notes if n.kind == "admin")
    body = email.message_from_bytes(admin.data, policy=email.policy.default)
    assert "BANNED" in str(body["Subject"]) and txn.mail_id in admin.data.decode()
    txn.spool.close()


def test_refused_for_everyone_means_no_dsn_the_smtp_reply_says_it(tmp_path):
    config, policy, txn, result, settings = decided(tmp_path, ("bob@example.com",))
    assert result.outcome.action is Action.REJECT
    notes = notices.notices_for(config, policy, txn, result.outcome, result.findings, settings)
    assert kinds(notes) == [("admin", ("admin@example.com",))]
    txn.spool.close()


def test_notify_never_from_every_refused_recipient_suppresses_the_dsn(tmp_path):
    config, policy, txn, result, settings = decided(tmp_path, ("lover@example.com", "bob@example.com"),
                                                    params={"bob@example.com": ("NOTIFY=NEVER",)})
    notes = notices.notices_for(config, policy, txn, result.outcome, result.findings, settings)
    assert "dsn" not in [n.kind for n in notes]
    txn.spool.close()


def test_clean_mail_tells_no_one(tmp_path):
    config, policy, txn, result, settings = decided(tmp_path, ("bob@example.com",), raw=message(subject="ok"))
    assert notices.notices_for(config, policy, txn, result.outcome, result.findings, settings) == []
    txn.spool.close()


def test_the_pipeline_queues_notices_and_the_outbox_delivers_them(tmp_path):
    with SMTPSink() as sink:
        text = POLICY + f"resubmit: {{socket: 'inet:127.0.0.1:{sink.port}'}}\nnotify: {{retry_s: 0.2}}\n"
        config = config_from(tmp_path, text)
        txn = txn_of(BANNED, ("lover@example.com", "bob@example.com"))
        result = pipeline.process(config, merge(config, ()), txn)
        txn.spool.close()
        assert result.outcome.action is Action.CONTINUE and result.outcome.quarantined
        got = sink.wait_for(2)
        assert sorted(m.rcpt_tos for m in got) == [("a@example.org",), ("admin@example.com",)]
        assert notices.outbox(config).flush(10)
    notices.stop_all()


def test_without_a_listener_nothing_is_queued(tmp_path):
    config = config_from(tmp_path, POLICY)
    txn = txn_of(BANNED, ("lover@example.com", "bob@example.com"))
    result = pipeline.process(config, merge(config, ()), txn)
    txn.spool.close()
    assert result.outcome.action is Action.CONTINUE
    assert not (tmp_path / "notify").exists()


@pytest.mark.parametrize("level, kept", [(8.0, True), (25.0, False)])
def test_spam_above_the_quarantine_cutoff_is_not_kept(tmp_path, level, kept):
    from pymavis import keep
    from pymavis.categories import Ccat, Finding
    from pymavis.checks.spam import Judgement, Levels, SpamView
    from pymavis.decide import RcptDecision, resolve_rcpt
    config = config_from(tmp_path, "policy: {final_spam_destiny: discard, spam_quarantine_cutoff_level: 20}\n")
    policy = merge(config, ())
    d = RcptDecision("b@example.com", Ccat.SPAM, 0, Finding("spam", Ccat.SPAM, 0, "x"), "discard")
    view = SpamView(None, (Judgement("b@example.com", level, Ccat.SPAM, levels=Levels(quarantine_cutoff=20.0)),))
    copies, hold = keep.plan(policy, (d,), (resolve_rcpt(policy, d.rcpt),), view)
    assert bool(copies) is kept and not hold
