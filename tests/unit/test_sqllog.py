"""SQL logging of every message (sqllog.py): rows in amavis's tables for clean and blocked
mail, queued off the hot path, a backlog while the database is away, and the bank that
wants the row before the answer (TEMPFAIL when it cannot be written)."""

import os
import subprocess
import sys

from sqlalchemy import create_engine, select

from test_content_checks import MZ, config_from, message, txn_of

from pymavis import pipeline, sqllog, sqlstore
from pymavis.outcome import Action
from pymavis.policy import merge

BANNED = message([("run.exe", "application/octet-stream", MZ)], subject="banned")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(config, raw, rcpts=("b@example.com",)):
    txn = txn_of(raw, rcpts)
    try:
        return txn, pipeline.process(config, merge(config, ()), txn)
    finally:
        txn.spool.close()


def rows(url, table):
    engine = create_engine(url)
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(select(table))]


def test_clean_and_blocked_mail_are_logged_in_amavis_tables(tmp_path):
    config = config_from(tmp_path, "sql_log: {enabled: true}\n")
    clean, result = run(config, message(subject="hello"))
    assert result.outcome.action is Action.CONTINUE
    banned, result = run(config, BANNED)
    assert result.outcome.action is Action.DISCARD and result.outcome.quarantined
    log = sqllog.sql_log(config)
    assert log.flush(10)
    url = f"sqlite:///{tmp_path}/pymavis.db"
    msgs = {bytes(r["mail_id"]).decode(): r for r in rows(url, sqlstore.msgs)}
    assert set(msgs) == {clean.mail_id, banned.mail_id}
    assert msgs[clean.mail_id]["content"] == "C" and msgs[banned.mail_id]["content"] == "B"
    rcpt = {bytes(r["mail_id"]).decode(): r for r in rows(url, sqlstore.msgrcpt)}
    assert rcpt[clean.mail_id]["ds"] == "P" and rcpt[clean.mail_id]["smtp_resp"].startswith("250 2.0.0 Ok")
    assert rcpt[banned.mail_id]["ds"] == "D" and "discarded" in rcpt[banned.mail_id]["smtp_resp"]
    assert log.written == 1      # the banned one was written by the quarantine, before the answer
    sqllog.stop_all()


def test_a_database_away_keeps_a_backlog_and_writes_it_when_back(tmp_path):
    (tmp_path / "db").write_text("not a directory yet")
    url = f"sqlite:///{tmp_path}/db/log.db"
    config = config_from(tmp_path, f"sql_log: {{enabled: true, database: '{url}', retry_s: 0.1}}\n")
    txn, result = run(config, message(subject="while away"))
    assert result.outcome.action is Action.CONTINUE       # mail flows
    log = sqllog.sql_log(config)
    assert not log.flush(0.5) and log.pending() == 1
    (tmp_path / "db").unlink()
    assert log.flush(10)
    assert [bytes(r["mail_id"]).decode() for r in rows(url, sqlstore.msgs)] == [txn.mail_id]
    sqllog.stop_all()


def test_a_bank_that_needs_the_row_first_tempfails_without_the_database(tmp_path):
    (tmp_path / "db").write_text("")
    config = config_from(tmp_path, f"sql_log: {{enabled: true, database: 'sqlite:///{tmp_path}/db/x.db'}}\n"
                                   "policy: {sql_log_failure_is_fatal: true}\n")
    _, result = run(config, message(subject="must be logged"))
    assert result.outcome.action is Action.TEMPFAIL and result.outcome.reply.code == "451"
    sqllog.stop_all()


def test_sql_init_and_expire_commands(tmp_path):
    config = config_from(tmp_path, "sql_log: {enabled: true}\n")
    run(config, message(subject="old"))
    sqllog.sql_log(config).flush(10)
    sqllog.stop_all()
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "milter")}
    cmd = [sys.executable, "-m", "pymavis", "sql"]
    init = subprocess.run(cmd + ["init", "-c", config.path], capture_output=True, text=True, env=env, timeout=60)
    assert init.returncode == 0 and "tables ready" in init.stdout, init.stderr
    keep = subprocess.run(cmd + ["expire", "--days", "1", "-c", config.path], capture_output=True, text=True,
                          env=env, timeout=60)
    assert keep.returncode == 0 and "expired 0 logged" in keep.stdout, keep.stderr
    gone = subprocess.run(cmd + ["expire", "--days", "-1", "-c", config.path], capture_output=True, text=True,
                          env=env, timeout=60)
    assert gone.returncode == 0 and "expired 1 logged" in gone.stdout, gone.stderr


def test_a_batch_with_an_entry_the_database_refuses_loses_only_that_one(tmp_path):
    import dataclasses
    config = config_from(tmp_path, "sql_log: {enabled: true}\n")
    log = sqllog.sql_log(config)
    txns = []
    for i in range(3):
        txn, result = run(config, message(subject=f"batch {i}"))
        txns.append((txn, result))
    assert log.flush(10)
    good = sqllog.entry_for(config, merge(config, ()), txns[0][0], txns[0][1].outcome)
    twice = dataclasses.replace(good)                            # already stored: counted as written
    fresh = dataclasses.replace(good, mail_id="NEWNEWNEW123")
    bad = dataclasses.replace(good, mail_id="BADBADBAD123", rcpts=(dataclasses.replace(good.rcpts[0],
                                                                                        quar_type="X"),))
    with log._cond:
        log._pending.extend([twice, bad, fresh])
        log._cond.notify_all()
    assert log.flush(10)
    url = f"sqlite:///{tmp_path}/pymavis.db"
    ids = {bytes(r["mail_id"]).decode() for r in rows(url, sqlstore.msgs)}
    assert "NEWNEWNEW123" in ids and "BADBADBAD123" not in ids and len(ids) == 4
    sqllog.stop_all()
