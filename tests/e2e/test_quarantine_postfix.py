"""Quarantine, release and notices behind a real Postfix (contrib/postfix's listeners).

- a banned message is refused, its copy is in the file store and in the SQLite index, and
  `pymavis release` delivers it once, with the original envelope, through the
  re-submission listener (no milter there, so it is not quarantined again); a second
  release delivers nothing; a wrong secret is refused;
- the same with the SQL store in a throwaway PostgreSQL cluster;
- MTA hold: the message is accepted into Postfix's hold queue (postqueue -j says "hold"),
  `quarantine list` shows it, `pymavis release` moves it on (postsuper -H) to the sink;
- a quarantine that cannot be written: 451, the front Postfix keeps the message and
  delivers it once the store works again;
- a banned file for one of two recipients: the other gets it and the sender gets a DSN
  (multipart/report) through the listener; no DSN for the null sender or for bulk mail; a
  subject trying to inject a header into the notice does not add one; the virus admin...
  (banned_admin here) gets a notice.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import subprocess
import sys
import uuid

import pytest

from harness.net import free_port, wait_until
from harness.postfix import PostfixInstance, front_mta
from harness.pymavisd import PymavisProcess
from harness.samples import pe

from pymavis import keep
from pymavis.config import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENDER = "sender@example.org"
BOB, LOVER, ADMIN = "bob@example.net", "lover@example.net", "admin@example.net"


def config(resubmit_port: int, extra: str = "", method: str = "local") -> str:
    return f"""\
mydomain: example.test
resubmit: {{socket: "inet:127.0.0.1:{resubmit_port}"}}
notify: {{retry_s: 1}}
{extra}policy:
  mynetworks: [10.0.0.0/8]        # the loopback test clients count as the Internet
  local_domains: [example.net]
  final_banned_destiny: bounce
  banned_files_lovers: [{LOVER}]
  banned_admin: {ADMIN}
  quarantine_method: {{BANNED: {method}}}
"""


def subject(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def banned(subj: str, extra_headers: str = "") -> bytes:
    body = base64.encodebytes(pe()).decode().replace("\n", "\r\n")
    return (f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: {subj}\r\nDate: Thu, 3 Dec 2026 07:00:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n{extra_headers}MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
            '--b1\r\nContent-Type: application/octet-stream; name="run.exe"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + body + "--b1--\r\n").encode()


def arrived(sink, match, n=1, timeout=60):
    def found():
        got = [m for m in sink.messages if match(m)]
        return got if len(got) >= n else None
    return wait_until(found, timeout, what=f"{n} deliveries")


def with_subject(subj):
    return lambda m: str(m.message["Subject"] or "").endswith(subj)


def mail_id_of(reply_text: str) -> str:
    return reply_text.split("id=", 1)[1].split()[0]


def logged_mail_id(proc: PymavisProcess, needle: str) -> str:
    """The mail_id on the last main log line containing `needle`."""
    proc.wait_log(needle)
    line = next(l for l in reversed(proc.log_text().splitlines()) if needle in l)
    return line.split("mail_id: ", 1)[1].split(",")[0]


def cli(proc: PymavisProcess, *args):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "milter")}
    return subprocess.run([sys.executable, "-m", "pymavis", *args, "-c", proc.conf],
                          capture_output=True, text=True, env=env, timeout=60)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resubmit_port():
    return free_port()


@pytest.fixture(scope="module")
def pymavis(tmp_path_factory, resubmit_port):
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-quar")), config(resubmit_port)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def postfix(public_tmp, sink, pymavis, resubmit_port):
    with PostfixInstance(public_tmp / "postfix-quar", sink_port=sink.port, milter=pymavis.socket_spec,
                         listeners={"resubmit": resubmit_port}) as pf:
        yield pf


def refused_and_kept(postfix, proc, subj):
    reply = postfix.send("mx", SENDER, [BOB], banned(subj))
    assert reply.code == 554 and "BANNED" in reply.text, reply
    mail_id = mail_id_of(reply.text)
    entry = keep.keeper(load(proc.conf)).db.entry(mail_id)
    return mail_id, entry


# --- release ------------------------------------------------------------------------------------


def test_refused_kept_in_files_and_sqlite_and_released_once(postfix, sink, pymavis):
    subj = subject("banned-release")
    mail_id, entry = refused_and_kept(postfix, pymavis, subj)
    (rcpt,) = entry.rcpts
    assert rcpt.quar_type == "F" and rcpt.category == "BANNED"
    state = os.path.join(pymavis.workdir, "state")
    assert os.path.exists(os.path.join(state, "quarantine", rcpt.quar_loc))
    assert os.path.exists(os.path.join(state, "pymavis.db"))
    listed = cli(pymavis, "quarantine", "list")
    assert mail_id in listed.stdout and "BANNED" in listed.stdout, listed
    wrong = cli(pymavis, "release", mail_id, "--secret", "not-it")
    assert wrong.returncode == 1 and "wrong secret_id" in wrong.stderr
    done = cli(pymavis, "release", mail_id)
    assert done.returncode == 0, done.stderr
    (got,) = arrived(sink, with_subject(subj))
    assert (got.mail_from, got.rcpt_tos) == (SENDER, (BOB,))
    assert got.message["X-Quarantine-ID"] == f"<{mail_id}>"
    again = cli(pymavis, "release", mail_id)
    assert again.returncode == 1 and "already released" in again.stderr
    postfix.wait_for_empty_queue()
    assert len([m for m in sink.messages if with_subject(subj)(m)]) == 1
    assert "released" in cli(pymavis, "quarantine", "list").stdout


@pytest.fixture(scope="module")
def pg_pymavis(tmp_path_factory, postgres, resubmit_port):
    extra = f'quarantine: {{database: "{postgres.create_database("quar")}"}}\nsql_log: {{enabled: true}}\n'
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-pg")), config(resubmit_port, extra, "sql")).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def pg_postfix(public_tmp, sink, pg_pymavis):
    with PostfixInstance(public_tmp / "postfix-pg", sink_port=sink.port, milter=pg_pymavis.socket_spec) as pf:
        yield pf


def test_the_postgresql_store_keeps_and_releases_once(pg_postfix, postfix, sink, pg_pymavis):
    subj = subject("banned-pg")
    mail_id, entry = refused_and_kept(pg_postfix, pg_pymavis, subj)
    assert entry.rcpts[0].quar_type == "Q"
    assert cli(pg_pymavis, "release", mail_id).returncode == 0   # through `postfix`'s listener
    (got,) = arrived(sink, with_subject(subj))
    assert got.rcpt_tos == (BOB,)
    assert cli(pg_pymavis, "release", mail_id).returncode == 1
    postfix.wait_for_empty_queue()
    assert len([m for m in sink.messages if with_subject(subj)(m)]) == 1


def test_sql_log_rows_in_postgresql_answer_amavis_queries(pg_postfix, sink, pg_pymavis):
    """Every message in msgs/msgrcpt (the clean one through the SQL log's thread, the banned one
    with its quarantine entry), and amavis's own example query from README.sql-pg over them."""
    from sqlalchemy import create_engine, text
    from harness.postgres import AMAVIS_QUERIES
    subj = subject("clean-pg")
    clean = (f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: {subj}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
             "\r\nhello\r\n").encode()
    assert pg_postfix.send("mx", SENDER, [BOB], clean).code == 250
    arrived(sink, with_subject(subj))
    mail_id = logged_mail_id(pg_pymavis, "Passed CLEAN")
    banned_id, _ = refused_and_kept(pg_postfix, pg_pymavis, subject("banned-pg-log"))
    url = load(pg_pymavis.conf)["quarantine"]["database"]
    engine = create_engine(url)
    try:
        def logged():
            with engine.connect() as conn:
                got = dict(conn.execute(text(
                    "SELECT convert_from(msgs.mail_id, 'UTF8'), msgrcpt.ds FROM msgs JOIN msgrcpt "
                    "ON msgs.mail_id = msgrcpt.mail_id")).all())
            return got if mail_id in got and banned_id in got else None
        got = wait_until(logged, 30, what="both messages in msgs/msgrcpt")
        assert (got[mail_id], got[banned_id]) == ("P", "R")
        with engine.connect() as conn:
            recent = conn.execute(text(AMAVIS_QUERIES["mail from last two minutes"])).all()
        assert {r.c for r in recent} >= {"C", "B"}
    finally:
        engine.dispose()


# --- MTA hold ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hold_postfix_dir(public_tmp):
    return public_tmp / "postfix-hold"


@pytest.fixture(scope="module")
def hold_pymavis(tmp_path_factory, resubmit_port, hold_postfix_dir):
    extra = f'quarantine: {{postfix_config_dir: "{hold_postfix_dir / "etc"}"}}\n'
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-hold")), config(resubmit_port, extra, "hold")).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def hold_postfix(hold_postfix_dir, sink, hold_pymavis):
    with PostfixInstance(hold_postfix_dir, sink_port=sink.port, milter=hold_pymavis.socket_spec) as pf:
        yield pf


def test_mta_hold_shows_in_the_hold_queue_and_release_moves_it_on(hold_postfix, sink, hold_pymavis):
    subj = subject("banned-hold")
    reply = hold_postfix.send("mx", SENDER, [BOB], banned(subj))
    assert reply.code == 250, reply
    held = wait_until(lambda: next((q for q in hold_postfix.queue() if q["queue_name"] == "hold"), None), 30,
                      what="a message in the hold queue")
    mail_id = logged_mail_id(hold_pymavis, f"Blocked BANNED {{HeldInbound}}")
    listed = cli(hold_pymavis, "quarantine", "list")
    assert mail_id in listed.stdout and f"hold:{held['queue_id']}" in listed.stdout, listed.stdout
    done = cli(hold_pymavis, "release", mail_id)
    assert done.returncode == 0, done.stderr
    (got,) = arrived(sink, with_subject(subj))
    assert got.rcpt_tos == (BOB,)
    hold_postfix.wait_for_empty_queue()
    assert cli(hold_pymavis, "release", mail_id).returncode == 1


# --- store failure ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("broken") / "quarantine"


@pytest.fixture(scope="module")
def broken_pymavis(tmp_path_factory, resubmit_port, broken_dir):
    extra = f'quarantine: {{dir: "{broken_dir}"}}\n'
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis-broken")), config(resubmit_port, extra)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def broken_postfix(public_tmp, sink, broken_pymavis):
    with PostfixInstance(public_tmp / "postfix-broken", sink_port=sink.port, milter=broken_pymavis.socket_spec,
                         extra_main={"myhostname": "filter.test"}) as pf:
        yield pf


def test_a_store_that_fails_tempfails_and_the_front_delivers_later(broken_postfix, sink, broken_pymavis,
                                                                   broken_dir, public_tmp):
    broken_dir.write_text("a file where the quarantine folder should be")
    with front_mta(public_tmp / "front-quar", broken_postfix, sink.port) as front:
        subj = subject("banned-broken")
        accepted = front.send("mx", SENDER, [BOB, LOVER], banned(subj))
        assert accepted.code == 250
        wait_until(lambda: next((q for q in front.queue() if q["queue_id"] == accepted.queue_id and any(
            "451 4.3.0 Temporary failure keeping the message" in r.get("delay_reason", "")
            for r in q["recipients"])), None), 60, what="the front to defer with the quarantine failure")
        broken_pymavis.wait_log("QUARANTINE FAILED")
        broken_dir.unlink()
        front.flush()
        (got,) = arrived(sink, with_subject(subj))
        assert got.rcpt_tos == (LOVER,)
        front.wait_for_empty_queue()


# --- notices ------------------------------------------------------------------------------------


def test_a_partly_refused_banned_file_gets_the_sender_a_dsn_and_the_admin_a_notice(postfix, sink, pymavis):
    subj = subject("banned-dsn")
    reply = postfix.send("mx", SENDER, [BOB, LOVER], banned(subj))
    assert reply.code == 250
    (got,) = arrived(sink, with_subject(subj))
    assert got.rcpt_tos == (LOVER,)
    dsn = arrived(sink, lambda m: m.rcpt_tos == (SENDER,) and subj in m.data.decode("utf-8", "replace"))[0]
    assert dsn.mail_from == ""
    msg = dsn.message
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert f"rfc822; {BOB}" in text and "Action: failed" in text and "Status: 5.7.0" in text
    notice = arrived(sink, lambda m: m.rcpt_tos == (ADMIN,) and subj in m.data.decode("utf-8", "replace"))[0]
    assert "BANNED" in str(notice.message["Subject"])


@pytest.mark.parametrize("sender, extra, why", [
    ("", "", "null sender"),
    (SENDER, "Precedence: bulk\r\n", "bulk"),
])
def test_no_dsn_for_the_null_sender_or_bulk_mail(postfix, sink, pymavis, sender, extra, why):
    subj = subject("banned-nodsn")
    reply = postfix.send("mx", sender, [BOB, LOVER], banned(subj, extra))
    assert reply.code == 250
    arrived(sink, with_subject(subj))
    line = pymavis.wait_log(f"no DSN to <{sender}>")
    assert why in line
    arrived(sink, lambda m: m.rcpt_tos == (ADMIN,) and subj in m.data.decode("utf-8", "replace"))
    assert not [m for m in sink.messages if m.mail_from == "" and m.rcpt_tos == (sender,)
                and subj in m.data.decode("utf-8", "replace")]


def test_a_subject_cannot_inject_a_header_into_a_notice(postfix, sink, pymavis):
    tag = uuid.uuid4().hex[:10]
    evil = f"=?utf-8?q?hi_{tag}=0D=0ABcc:_victim@example.com?="
    reply = postfix.send("mx", SENDER, [BOB, LOVER], banned(evil))
    assert reply.code == 250
    notices = arrived(sink, lambda m: m.mail_from == "" and tag in m.data.decode("utf-8", "replace")
                      or m.rcpt_tos == (ADMIN,) and tag in m.data.decode("utf-8", "replace"), n=2)
    for m in notices:
        parsed = email.message_from_bytes(m.data, policy=email.policy.default)
        assert "Bcc" not in parsed and "victim@example.com" not in m.rcpt_tos
        head = m.data.split(b"\r\n\r\n", 1)[0]
        assert not any(line.lower().startswith(b"bcc:") for line in head.split(b"\r\n"))
