"""Blocked mail kept before the answer (keep.py) and released once (release.py, quarcmd.py):
the pipeline with a banned attachment, copies per location, the database index, store
failures answering TEMPFAIL, and releases through a real SMTP listener (the test sink)."""

import os
import subprocess
import sys

import pytest

from harness.sink import SMTPSink
from test_content_checks import MZ, config_from, message, txn_of

from pymavis import keep, pipeline, quarcmd, release
from pymavis.categories import Ccat, Finding
from pymavis.decide import RcptDecision
from pymavis.outcome import Action
from pymavis.policy import merge

BANNED = message([("run.exe", "application/octet-stream", MZ)], subject="banned one")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def process(config, raw, rcpts=("b@example.com",), bank=()):
    txn = txn_of(raw, rcpts)
    try:
        return txn, pipeline.process(config, merge(config, tuple(bank)), txn)
    finally:
        txn.spool.close()


def test_a_banned_message_is_kept_in_a_file_and_indexed_before_the_answer(tmp_path):
    config = config_from(tmp_path)
    txn, result = process(config, BANNED)
    assert result.outcome.action is Action.DISCARD
    assert result.outcome.quarantined == "local:."
    entry = keep.keeper(config).db.entry(txn.mail_id)
    (rcpt,) = entry.rcpts
    assert (rcpt.addr, rcpt.quar_type, rcpt.category, rcpt.ds, rcpt.content) == ("b@example.com", "F", "BANNED",
                                                                                 "D", "B")
    assert rcpt.reason.startswith("BANNED: ")
    assert (tmp_path / "quarantine" / rcpt.quar_loc).read_bytes() == BANNED
    assert rcpt.quar_loc == f"{txn.mail_id[0]}/banned-{txn.mail_id}"
    assert entry.sender == "a@example.org" and entry.secret_id == txn.secret_id and entry.size == len(BANNED)


def test_clean_mail_is_not_kept(tmp_path):
    config = config_from(tmp_path)
    _, result = process(config, message(subject="clean"))
    assert result.outcome.action is Action.CONTINUE and not result.outcome.quarantined
    assert keep.keeper(config).db.entries() == []


def test_copies_are_stored_once_per_location_and_null_means_not_kept(tmp_path):
    config = config_from(tmp_path, """
        policy:
          local_domains: [example.com, example.net]
          banned_quarantine_to: {"@example.com": ".", "@example.net": "net", "nokeep@example.com": null}
    """)
    rcpts = ("a1@example.com", "a2@example.com", "n1@example.net", "nokeep@example.com")
    txn, result = process(config, BANNED, rcpts)
    assert result.outcome.action is Action.DISCARD
    entry = keep.keeper(config).db.entry(txn.mail_id)
    where = {r.addr: (r.quar_type, r.quar_loc) for r in entry.rcpts}
    top = f"{txn.mail_id[0]}/banned-{txn.mail_id}"
    assert where == {"a1@example.com": ("F", top), "a2@example.com": ("F", top),
                     "n1@example.net": ("F", f"net/{top}"), "nokeep@example.com": ("", "")}
    assert (tmp_path / "quarantine" / "net" / top).read_bytes() == BANNED


def test_the_sql_method_keeps_the_bytes_in_the_database(tmp_path):
    config = config_from(tmp_path, "policy: {quarantine_method: {BANNED: sql}}\n")
    txn, result = process(config, BANNED)
    keeper = keep.keeper(config)
    entry = keeper.db.entry(txn.mail_id)
    assert entry.rcpts[0].quar_type == "Q"
    assert release.message_bytes(keeper, entry, entry.rcpts[0]) == BANNED
    assert not (tmp_path / "quarantine").exists()


def test_method_none_keeps_nothing(tmp_path):
    config = config_from(tmp_path, "policy: {quarantine_method: {BANNED: none}}\n")
    _, result = process(config, BANNED)
    assert result.outcome.action is Action.DISCARD and not result.outcome.quarantined


def test_an_unwritable_quarantine_answers_tempfail(tmp_path):
    (tmp_path / "blocker").write_text("a file where the quarantine folder should be")
    config = config_from(tmp_path, f"quarantine: {{dir: {tmp_path / 'blocker' / 'q'}}}\n")
    txn, result = process(config, BANNED)
    assert result.outcome.action is Action.TEMPFAIL
    assert result.outcome.reply.code == "451" and txn.mail_id in result.outcome.reply.text
    assert "blocker" in result.outcome.quarantine_failed


def test_an_unreachable_database_answers_tempfail(tmp_path):
    (tmp_path / "blocker").write_text("")
    config = config_from(tmp_path, f"quarantine: {{database: 'sqlite:///{tmp_path}/blocker/x/q.db'}}\n")
    _, result = process(config, BANNED)
    assert result.outcome.action is Action.TEMPFAIL and result.outcome.quarantine_failed


def _decision(rcpt, ccat=Ccat.BANNED, destiny="discard"):
    finding = Finding("banned", ccat, 0, "x.exe") if destiny != "pass" else None
    return RcptDecision(rcpt, ccat if finding else Ccat.CLEAN, 0, finding, destiny)


def test_hold_takes_whole_messages_only(tmp_path):
    config = config_from(tmp_path, "policy: {quarantine_method: {BANNED: hold}}\n")
    policy = merge(config, ())
    from pymavis.decide import resolve_rcpt
    both = (_decision("a@example.com"), _decision("b@example.com"))
    settings = tuple(resolve_rcpt(policy, d.rcpt) for d in both)
    copies, hold = keep.plan(policy, both, settings)
    assert hold and copies == (keep.Copy("hold", "", ("a@example.com", "b@example.com")),)
    mixed = (_decision("a@example.com"), _decision("b@example.com", destiny="pass"))
    copies, hold = keep.plan(policy, mixed, settings)
    assert not hold and copies == (keep.Copy("local", ".", ("a@example.com",)),)


def test_hold_accepts_into_the_hold_queue_and_indexes_the_queue_id(tmp_path):
    config = config_from(tmp_path, "policy: {quarantine_method: {BANNED: hold}}\n")
    txn, result = process(config, BANNED)
    assert result.outcome.action is Action.CONTINUE
    assert result.outcome.quarantine_reason.startswith(f"pymavis {txn.mail_id}: BANNED")
    entry = keep.keeper(config).db.entry(txn.mail_id)
    assert (entry.rcpts[0].quar_type, entry.rcpts[0].quar_loc, entry.queue_id) == ("H", "QID1", "QID1")


# --- release ------------------------------------------------------------------------------


@pytest.fixture
def sink():
    with SMTPSink() as s:
        yield s


def kept_config(tmp_path, sink, extra=""):
    return config_from(tmp_path, f"resubmit: {{socket: 'inet:127.0.0.1:{sink.port}'}}\n" + extra)


def test_release_delivers_once_with_the_original_envelope(tmp_path, sink):
    config = kept_config(tmp_path, sink)
    txn, _ = process(config, BANNED, ("b@example.com", "c@example.com"))
    done = release.release(config, txn.mail_id, user="root")
    assert done.rcpts == ("b@example.com", "c@example.com") and done.reply.startswith("250")
    (got,) = sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == ("a@example.org", ("b@example.com", "c@example.com"))
    assert got.data == f"X-Quarantine-ID: <{txn.mail_id}>\r\n".encode() + BANNED
    with pytest.raises(release.ReleaseError, match="already released"):
        release.release(config, txn.mail_id, user="root")
    assert len(sink.messages) == 1
    entry = keep.keeper(config).db.entry(txn.mail_id)
    assert {r.rs for r in entry.rcpts} == {"R"} and entry.rcpts[0].released_by == "root"
    release.release(config, txn.mail_id, user="root", force=True)
    assert len(sink.wait_for(2)) == 2


def test_release_to_other_addresses_and_from_the_null_sender(tmp_path, sink):
    config = kept_config(tmp_path, sink, "quarantine: {release_from_null_sender: true}\n")
    txn, _ = process(config, BANNED)
    release.release(config, txn.mail_id, to=["admin@example.com"], user="root")
    (got,) = sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == ("", ("admin@example.com",))
    assert keep.keeper(config).db.entry(txn.mail_id).rcpts[0].released_by == "root to admin@example.com"


def test_secrets_and_admins(tmp_path, sink):
    config = kept_config(tmp_path, sink)
    txn, _ = process(config, BANNED)
    with pytest.raises(release.ReleaseError, match="not in quarantine.admins"):
        release.release(config, txn.mail_id, user="mallory")
    with pytest.raises(release.ReleaseError, match="wrong secret_id"):
        release.release(config, txn.mail_id, secret="guess", user="mallory")
    assert sink.messages == []
    release.release(config, txn.mail_id, secret=txn.secret_id, user="mallory")
    assert len(sink.wait_for(1)) == 1


def test_a_refusing_mta_records_nothing_and_a_retry_delivers(tmp_path, sink):
    config = kept_config(tmp_path, sink)
    txn, _ = process(config, BANNED)
    sink.set_reply("451 4.3.0 not now", count=1, stage="eom")
    with pytest.raises(release.ReleaseError, match="451"):
        release.release(config, txn.mail_id, user="root")
    assert keep.keeper(config).db.entry(txn.mail_id).rcpts[0].rs == " "
    release.release(config, txn.mail_id, user="root")
    assert len(sink.wait_for(1)) == 1


def test_unknown_mail_id_and_missing_listener(tmp_path, sink):
    with pytest.raises(release.ReleaseError, match="no quarantined message"):
        release.release(kept_config(tmp_path, sink), "AAAAAAAAAAAA", user="root")
    (tmp_path / "other").mkdir()
    config = config_from(tmp_path / "other")
    txn, _ = process(config, BANNED)
    with pytest.raises(release.ReleaseError, match="resubmit.socket is not set"):
        release.release(config, txn.mail_id, user="root")


def test_a_missing_file_is_a_clear_error(tmp_path, sink):
    config = kept_config(tmp_path, sink)
    txn, _ = process(config, BANNED)
    entry = keep.keeper(config).db.entry(txn.mail_id)
    (tmp_path / "quarantine" / entry.rcpts[0].quar_loc).unlink()
    with pytest.raises(Exception, match="No such file"):
        release.release(config, txn.mail_id, user="root")
    assert keep.keeper(config).db.entry(txn.mail_id).rcpts[0].rs == " "


# --- the commands -------------------------------------------------------------------------


def pymavis(config, *args):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "milter")}
    return subprocess.run([sys.executable, "-m", "pymavis", *args, "-c", config.path],
                          capture_output=True, text=True, env=env, timeout=60)


def test_quarantine_list_show_release_delete(tmp_path, sink):
    config = kept_config(tmp_path, sink)
    txn, _ = process(config, BANNED)
    out = pymavis(config, "quarantine", "list")
    assert out.returncode == 0, out.stderr
    assert txn.mail_id in out.stdout and "BANNED" in out.stdout and "<a@example.org> -> <b@example.com>" in out.stdout
    shown = pymavis(config, "quarantine", "show", txn.mail_id)
    assert shown.returncode == 0 and "Subject: banned one" in shown.stdout and "ds=D kept (file:" in shown.stdout
    done = pymavis(config, "release", txn.mail_id)
    assert done.returncode == 0, done.stderr
    again = pymavis(config, "release", txn.mail_id)
    assert again.returncode == 1 and "already released" in again.stderr
    assert len(sink.wait_for(1)) == 1
    assert pymavis(config, "quarantine", "delete", txn.mail_id).returncode == 0
    assert pymavis(config, "quarantine", "show", txn.mail_id).returncode == 1
    assert not list((tmp_path / "quarantine").glob("*/banned-*"))


def test_expire_removes_old_entries_only(tmp_path):
    config = config_from(tmp_path)
    txn, _ = process(config, BANNED)
    args = type("A", (), {"days": 1.0})
    assert quarcmd.cmd_expire(config, args) == 0
    assert keep.keeper(config).db.entry(txn.mail_id)
    args.days = -1.0
    assert quarcmd.cmd_expire(config, args) == 0
    assert keep.keeper(config).db.entries() == []


def test_a_failed_keep_re_submits_nothing(tmp_path, sink):
    """Copies are kept before the passed recipients' re-submission: when keeping fails the
    answer is TEMPFAIL and nothing went out, so the MTA's retry delivers nothing twice."""
    (tmp_path / "blocker").write_text("")
    config = kept_config(tmp_path, sink, f"""quarantine: {{dir: {tmp_path / 'blocker' / 'q'}}}
policy:
  final_banned_destiny: bounce
  banned_files_lovers: [lover@example.com]
  banned_filename_maps: {{"allowed@example.com": "ALLOW_EXE,DEFAULT", ".": DEFAULT}}
""")
    txn, result = process(config, BANNED, ("lover@example.com", "allowed@example.com", "bob@example.com"))
    assert result.outcome.action is Action.TEMPFAIL and result.outcome.quarantine_failed
    assert sink.messages == []
    (tmp_path / "ok").mkdir()
    config = kept_config(tmp_path / "ok", sink, """policy:
  final_banned_destiny: bounce
  banned_files_lovers: [lover@example.com]
  banned_filename_maps: {"allowed@example.com": "ALLOW_EXE,DEFAULT", ".": DEFAULT}
""")
    txn, result = process(config, BANNED, ("lover@example.com", "allowed@example.com", "bob@example.com"))
    assert result.outcome.action is Action.CONTINUE and result.outcome.quarantined == "local:."
    got = sink.wait_for(1)                     # the minority group, re-submitted once the copy was kept
    assert [m.rcpt_tos for m in got if m.mail_from == "a@example.org"] == [("allowed@example.com",)]


SPLIT_POLICY = """policy:
  final_banned_destiny: bounce
  banned_files_lovers: [lover@example.com]
  banned_filename_maps: {"allowed@example.com": "ALLOW_EXE,DEFAULT", ".": DEFAULT}
"""
SPLIT_RCPTS = ("lover@example.com", "allowed@example.com", "bob@example.com")


def test_a_failed_re_submission_removes_the_kept_copy_and_logs_tempfail(tmp_path, sink):
    """Nothing went out and the MTA offers the message again under a new mail_id: the copy
    kept for this attempt would be a second one, so it goes; the SQL log row says TEMPFAIL."""
    from pymavis import sqllog, sqlstore
    config = kept_config(tmp_path, sink, "sql_log: {enabled: true}\n" + SPLIT_POLICY)
    sink.set_reply("451 4.3.0 not now", count=1, stage="eom")
    txn, result = process(config, BANNED, SPLIT_RCPTS)
    assert result.outcome.action is Action.TEMPFAIL and not result.outcome.quarantined
    assert [m for m in sink.messages if m.mail_from == "a@example.org"] == []
    with pytest.raises(sqlstore.StoreError, match="no quarantined message"):
        keep.keeper(config).db.entry(txn.mail_id)
    assert not [p for p in (tmp_path / "quarantine").rglob("*") if p.is_file()]
    assert sqllog.sql_log(config).flush(10)
    logged = sqllog.sql_log(config).db
    with logged.engine.connect() as conn:
        ds = {r.ds for r in conn.execute(sqlstore.msgrcpt.select())}
    assert ds == {"T"}
    sqllog.stop_all()


def test_a_row_that_must_be_written_first_is_written_before_re_submission(tmp_path, sink):
    """sql_log_failure_is_fatal: the row is written before anything is re-submitted, so a
    database that is away answers TEMPFAIL with nothing sent (the retry sends nothing twice)."""
    from pymavis import sqllog
    (tmp_path / "db").write_text("")
    config = kept_config(tmp_path, sink, f"sql_log: {{enabled: true, database: 'sqlite:///{tmp_path}/db/x.db'}}\n"
                         + SPLIT_POLICY.replace("policy:\n", "policy:\n  sql_log_failure_is_fatal: true\n"
                                                "  quarantine_method: {BANNED: none}\n"))
    txn, result = process(config, BANNED, SPLIT_RCPTS)
    assert result.outcome.action is Action.TEMPFAIL and result.outcome.reply.code == "451"
    assert sink.messages == []
    sqllog.stop_all()
