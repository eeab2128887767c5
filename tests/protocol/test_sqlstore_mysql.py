"""sqlstore against a real MariaDB (harness/mariadb.py, Debian 12's mariadb-server) through
PyMySQL: every behaviour test of tests/unit/test_sqlstore.py, each in a fresh database, plus
what only MySQL shows: amavis's MySQL column types (README.sql-mysql), utf8mb4 text on a
server whose default is latin1, READ COMMITTED for the address rows, amavis's own CREATE
TABLEs, example queries and housekeeping on our rows, the SQL log writer, and a server that
is not there.

One server for the module (install and start take about two seconds).
"""

import dataclasses
import itertools
import time

import pytest
from sqlalchemy import create_engine, event, insert, select, text

from harness.mariadb import AMAVIS_HOUSEKEEPING, AMAVIS_QUERIES, MariaDBServer
from pymavis import pipeline, sqllog, sqlstore
from pymavis.outcome import Action
from pymavis.policy import merge
from pymavis.sqlstore import Database, StoreError
from unit import test_sqlstore as cases
from unit.test_content_checks import MZ, config_from, message, txn_of

# The behaviour tests, collected here with this module's `db` fixture.
globals().update({name: getattr(cases, name) for name in cases.BEHAVIOURS})
entry, RAW, count = cases.entry, cases.RAW, cases.count

_names = itertools.count(1)


def test_rows_are_amavis_rows(db):
    """The behaviour test of that name, but for MySQL's CHAR, which drops trailing spaces on
    reading: the rs ' ' amavis (and we) write comes back as ''."""
    db.put(entry(sender=""), RAW)
    with db.engine.connect() as conn:
        addrs = {bytes(r.email): r.domain for r in conn.execute(select(sqlstore.maddr))}
        msg = conn.execute(select(sqlstore.msgs)).one()
        rseq = conn.execute(select(sqlstore.msgrcpt.c.rseqnum, sqlstore.msgrcpt.c.rs)).all()
        assert conn.execute(text("SELECT COUNT(*) FROM msgrcpt WHERE rs = ' '")).scalar() == 4
    assert addrs[b""] == "" and addrs[b"bob@example.com"] == "com.example"
    assert (bytes(msg.mail_id), msg.time_num, msg.quar_type, msg.quar_loc, msg.originating) == \
        (b"AbCdEf012345", 1_700_000_000, "F", "virus/A/virus-AbCdEf012345", "Y")
    assert sorted(rseq) == [(1, ""), (2, ""), (3, ""), (4, "")]
    assert db.entry("AbCdEf012345").rcpts[0].rs == " "
    db.put(entry("Other1", sender="x@A.B.Example.COM."), RAW)
    assert count(db, sqlstore.maddr, domain="com.example.b.a") == 1


@pytest.fixture(scope="module")
def mariadb():
    with MariaDBServer() as server:
        yield server


@pytest.fixture
def empty_url(mariadb):
    return mariadb.create_database(f"t{next(_names)}")


@pytest.fixture
def db(empty_url):
    database = Database(empty_url)
    database.create()
    yield database
    database.close()


def columns(db) -> dict:
    with db.engine.connect() as conn:
        return {(t, c): d for t, c, d in conn.execute(text(
            "SELECT table_name, column_name, column_type FROM information_schema.columns "
            "WHERE table_schema = DATABASE()"))}


# README.sql-mysql's types, but time_iso: amavis's is char(16) ("20231114T221320Z") or a
# TIMESTAMP; ours is DATETIME(6) in UTC (sqlstore.TIME_ISO).
AMAVIS_TYPES = {
    ("maddr", "id"): "bigint(20) unsigned", ("maddr", "email"): "varbinary(255)", ("maddr", "domain"): "varchar(255)",
    ("msgs", "mail_id"): "varbinary(16)", ("msgs", "secret_id"): "varbinary(16)", ("msgs", "am_id"): "varchar(20)",
    ("msgs", "time_num"): "int(10) unsigned", ("msgs", "time_iso"): "datetime(6)",
    ("msgs", "sid"): "bigint(20) unsigned", ("msgs", "size"): "int(10) unsigned", ("msgs", "content"): "char(1)",
    ("msgs", "spam_level"): "float", ("msgs", "subject"): "varchar(255)", ("msgrcpt", "mail_id"): "varbinary(16)",
    ("msgrcpt", "rid"): "bigint(20) unsigned", ("msgrcpt", "bspam_level"): "float",
    ("quarantine", "mail_id"): "varbinary(16)", ("quarantine", "chunk_ind"): "int(10) unsigned",
    ("quarantine", "mail_text"): "blob", ("pymavis_quarantine", "quar_type"): "char(1)"}


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "mariadb+pymysql"])   # SQLAlchemy's two dialect names
def test_columns_have_amavis_types(mariadb, scheme):
    url = mariadb.create_database(f"t{next(_names)}").replace("mysql+pymysql", scheme)
    database = Database(url)
    try:
        database.create()
        assert {key: columns(database).get(key) for key in AMAVIS_TYPES} == AMAVIS_TYPES
        with database.engine.connect() as conn:
            tables = set(conn.execute(text(
                "SELECT table_name, engine, table_collation FROM information_schema.tables "
                "WHERE table_schema = DATABASE()")))
        assert {(name, engine, collation.split("_")[0]) for name, engine, collation in tables} == {
            (name, "InnoDB", "utf8mb4") for name in sqlstore.metadata.tables}
        database.put(entry(), RAW)
        assert database.entry("AbCdEf012345") == entry()
    finally:
        database.close()


def test_text_beyond_latin1_and_the_bmp_round_trips(db, mariadb):
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@character_set_server")
        assert cur.fetchone() == ("latin1",)        # the tables ask for utf8mb4 themselves
    db.put(entry(subject="Grüße 😀 Привет", from_addr="Ünïcode <a@example.org>"), RAW)
    got = db.entry("AbCdEf012345")
    assert (got.subject, got.from_addr) == ("Grüße 😀 Привет", "Ünïcode <a@example.org>")


def test_transactions_are_read_committed(db):
    with db.engine.connect() as conn:
        assert conn.get_isolation_level() == "READ COMMITTED"


def test_an_address_another_put_committed_meanwhile_is_taken(db, empty_url):
    """The IntegrityError path of _addr_ids, made to happen: the sender's row is committed by
    another connection after our SELECT found none and before our INSERT. Under InnoDB's
    REPEATABLE READ the SELECT after the duplicate key would not see it."""
    other = create_engine(empty_url)
    done = []

    def before(conn, cursor, statement, *args):
        if statement.startswith("INSERT INTO maddr") and not done:
            done.append(True)
            with other.begin() as racer:
                racer.execute(insert(sqlstore.maddr).values(partition_tag=0, email=b"same@example.org",
                                                            domain="org.example"))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        db.put(entry(sender="same@example.org"), RAW)
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
        other.dispose()
    assert done and count(db, sqlstore.maddr, email=b"same@example.org") == 1
    assert db.entry("AbCdEf012345").sender == "same@example.org"


def test_a_value_too_long_for_its_column_is_a_store_error(db):
    with pytest.raises(StoreError, match=r"store mail_id ThisIdIsLongerThan16: .*Data too long for column 'mail_id'"):
        db.put(entry("ThisIdIsLongerThan16"), RAW)
    assert count(db, sqlstore.maddr) == 0      # nothing of it is left


# amavis's own schema, from README.sql-mysql (amavisd-new 2.13), comments left out, with the
# time_iso that README offers instead of char(16): TIMESTAMP ($timestamp_fmt_mysql = 1).
AMAVIS_DDL = """
CREATE TABLE maddr (
  partition_tag integer      DEFAULT 0,
  id         bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  email      varbinary(255)  NOT NULL,
  domain     varchar(255)    NOT NULL,
  CONSTRAINT part_email UNIQUE (partition_tag,email)
) ENGINE=InnoDB;
CREATE TABLE msgs (
  partition_tag integer     DEFAULT 0,
  mail_id     varbinary(16) NOT NULL,
  secret_id   varbinary(16) DEFAULT '',
  am_id       varchar(20)   NOT NULL,
  time_num    integer unsigned NOT NULL,
  time_iso    TIMESTAMP NOT NULL DEFAULT 0,
  sid         bigint unsigned NOT NULL,
  policy      varchar(255)  DEFAULT '',
  client_addr varchar(255)  DEFAULT '',
  size        integer unsigned NOT NULL,
  originating char(1) DEFAULT ' ' NOT NULL,
  content     char(1),
  quar_type  char(1),
  quar_loc   varbinary(255) DEFAULT '',
  dsn_sent   char(1),
  spam_level float,
  message_id varchar(255)  DEFAULT '',
  from_addr  varchar(255)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin  DEFAULT '',
  subject    varchar(255)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin  DEFAULT '',
  host       varchar(255)  NOT NULL,
  PRIMARY KEY (partition_tag,mail_id)
) ENGINE=InnoDB;
CREATE INDEX msgs_idx_sid      ON msgs (sid);
CREATE INDEX msgs_idx_mess_id  ON msgs (message_id);
CREATE INDEX msgs_idx_time_num ON msgs (time_num);
CREATE TABLE msgrcpt (
  partition_tag integer    DEFAULT 0,
  mail_id    varbinary(16) NOT NULL,
  rseqnum    integer  DEFAULT 0   NOT NULL,
  rid        bigint unsigned NOT NULL,
  is_local   char(1)  DEFAULT ' ' NOT NULL,
  content    char(1)  DEFAULT ' ' NOT NULL,
  ds         char(1)  NOT NULL,
  rs         char(1)  NOT NULL,
  bl         char(1)  DEFAULT ' ',
  wl         char(1)  DEFAULT ' ',
  bspam_level float,
  smtp_resp  varchar(255)  DEFAULT '',
  PRIMARY KEY (partition_tag,mail_id,rseqnum)
) ENGINE=InnoDB;
CREATE INDEX msgrcpt_idx_mail_id  ON msgrcpt (mail_id);
CREATE INDEX msgrcpt_idx_rid      ON msgrcpt (rid);
CREATE TABLE quarantine (
  partition_tag integer    DEFAULT 0,
  mail_id    varbinary(16) NOT NULL,
  chunk_ind  integer unsigned NOT NULL,
  mail_text  blob          NOT NULL,
  PRIMARY KEY (partition_tag,mail_id,chunk_ind)
) ENGINE=InnoDB;
"""


def test_works_on_tables_amavis_created(empty_url):
    database = Database(empty_url)
    try:
        with database.engine.begin() as conn:
            for statement in filter(str.strip, AMAVIS_DDL.split(";")):
                conn.execute(text(statement))
        database.create()                       # adds pymavis_quarantine (and msgs_idx_time_iso)
        whole = entry(when=1_700_000_000)       # TIMESTAMP keeps whole seconds
        database.put(whole, RAW)
        assert database.entry("AbCdEf012345") == whole
        with database.open("AbCdEf012345") as fh:
            assert fh.read() == RAW
        database.mark_released("AbCdEf012345", ["bob@example.com"], "admin", "250 2.0.0 Ok")
        assert database.entry("AbCdEf012345").rcpts[0].rs == "R"
    finally:
        database.close()


# What each query gives for the rows below: 11 recent messages from sender.sub.example.org.
EXPECTED = {
    "mail from last two minutes": lambda rows: len(rows) == 44 and rows[0].s == b"sender@sub.example",
    "clean messages ordered by count, grouped by domain": lambda rows: [tuple(r)[::2] for r in rows] == [
        (11, "org.example.sub")],
    "top spamy domains with >10 messages": lambda rows: [(r.cnt, r.domain) for r in rows] == [
        (22, "org.example.sub")],
    "sender domains with >100 messages": lambda rows: rows == [],
}


@pytest.mark.parametrize("name", AMAVIS_QUERIES)
def test_amavis_example_queries(db, name):
    for n in range(11):
        db.put(entry(f"Recent{n:06d}", when=time.time() - 30, sender="sender@sub.example.org"), RAW)
    with db.engine.connect() as conn:
        rows = conn.execute(text(AMAVIS_QUERIES[name])).all()
    assert EXPECTED[name](rows), rows


def test_amavis_housekeeping_removes_what_is_old(db):
    db.put(entry("Old1", when=time.time() - 30 * 86400, sender="old@example.org"), RAW)
    db.put(entry("New1", when=time.time() - 60), RAW)
    with db.engine.begin() as conn:
        removed = [conn.execute(text(statement)).rowcount for statement in AMAVIS_HOUSEKEEPING]
    assert removed == [1, 4, 7, 1]              # the message, its recipients and chunks, its sender
    assert [e.mail_id for e in db.entries()] == ["New1"]
    assert count(db, sqlstore.maddr, email=b"old@example.org") == 0


def test_sql_log_writes_clean_and_blocked_mail(tmp_path, empty_url):
    config = config_from(tmp_path, f"sql_log: {{enabled: true, database: '{empty_url}'}}\n"
                                   f"quarantine: {{database: '{empty_url}'}}\n")
    results = []
    for raw in (message(subject="hello"), message([("run.exe", "application/octet-stream", MZ)], subject="x")):
        txn = txn_of(raw, ("b@example.com",))
        try:
            results.append((txn, pipeline.process(config, merge(config, ()), txn)))
        finally:
            txn.spool.close()
    (clean, passed), (banned, kept) = results
    assert passed.outcome.action is Action.CONTINUE
    assert kept.outcome.action is Action.DISCARD and kept.outcome.quarantined
    log = sqllog.sql_log(config)
    try:
        assert log.flush(10)
        assert log.written == 1                  # the banned one was written by the quarantine
        # A batch with an entry MySQL refuses (mail_id too long): only that one is lost.
        good = sqllog.entry_for(config, merge(config, ()), clean, passed.outcome)
        fresh, bad = (dataclasses.replace(good, mail_id=m) for m in ("Fresh0000001", "MuchTooLongForMySQL1"))
        for one in (fresh, bad, dataclasses.replace(good, mail_id="Fresh0000002")):
            log.submit(one)
        assert log.flush(10)
    finally:
        sqllog.stop_all()
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            msgs = {bytes(r.mail_id).decode(): r for r in conn.execute(select(sqlstore.msgs))}
            rcpts = {bytes(r.mail_id).decode(): r for r in conn.execute(select(sqlstore.msgrcpt))}
    finally:
        engine.dispose()
    assert set(msgs) == {clean.mail_id, banned.mail_id, "Fresh0000001", "Fresh0000002"}
    assert msgs[clean.mail_id].content == "C" and msgs[banned.mail_id].content == "B"
    assert rcpts[clean.mail_id].ds == "P" and rcpts[clean.mail_id].smtp_resp.startswith("250 2.0.0 Ok")
    assert rcpts[banned.mail_id].ds == "D" and "discarded" in rcpts[banned.mail_id].smtp_resp


def test_server_not_there_is_named_without_password(tmp_path):
    url = f"mysql+pymysql://vscan:sekrit@localhost/mail_log?unix_socket={tmp_path}/mysqld.sock"
    database = Database(url, connect_timeout_s=2)
    with pytest.raises(StoreError) as failed:
        database.create()
    message_ = str(failed.value)
    assert message_.startswith(f"mysql+pymysql://vscan:***@localhost/mail_log?unix_socket={tmp_path}/mysqld.sock: "
                               "create tables: ")
    assert "sekrit" not in message_ and "No such file or directory" in message_
