"""sqlstore against a real PostgreSQL (harness/postgres.py): every behaviour test of
tests/unit/test_sqlstore.py, each in a fresh database, plus what only PostgreSQL shows:
amavis's column types, amavis's own CREATE TABLEs and example queries on our rows, and a
server that is not there.
"""

import itertools
import time

import pytest
from sqlalchemy import text

from harness.postgres import AMAVIS_QUERIES
from pymavis.sqlstore import Database, StoreError
from unit import test_sqlstore as cases

# The behaviour tests, collected here with this module's `db` fixture.
globals().update({name: getattr(cases, name) for name in cases.BEHAVIOURS})
entry, RAW = cases.entry, cases.RAW

_names = itertools.count(1)


@pytest.fixture
def empty_url(postgres):
    return postgres.create_database(f"t{next(_names)}")


@pytest.fixture
def db(empty_url):
    database = Database(empty_url)
    database.create()
    yield database
    database.close()


def test_columns_have_amavis_types(db):
    expected = {("msgs", "mail_id"): "bytea", ("msgs", "secret_id"): "bytea", ("msgs", "time_num"): "integer",
                ("msgs", "time_iso"): "timestamp with time zone", ("msgs", "content"): "character",
                ("msgs", "spam_level"): "real", ("msgs", "subject"): "character varying",
                ("maddr", "email"): "bytea", ("maddr", "id"): "integer", ("msgrcpt", "bspam_level"): "real",
                ("quarantine", "mail_text"): "bytea", ("pymavis_quarantine", "quar_type"): "character"}
    with db.engine.connect() as conn:
        types = {(t, c): d for t, c, d in conn.execute(text(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"))}
    assert {key: types.get(key) for key in expected} == expected


# amavis's own schema, from README.sql-pg (amavisd-new 2.13), comments left out.
AMAVIS_DDL = """
CREATE TABLE maddr (
  id         serial       PRIMARY KEY,
  partition_tag integer   DEFAULT 0,
  email      bytea        NOT NULL,
  domain     varchar(255) NOT NULL,
  CONSTRAINT part_email UNIQUE (partition_tag,email)
);
CREATE TABLE msgs (
  partition_tag integer     DEFAULT 0,
  mail_id     bytea         NOT NULL,
  secret_id   bytea         DEFAULT '',
  am_id       varchar(20)   NOT NULL,
  time_num    integer NOT NULL CHECK (time_num >= 0),
  time_iso timestamp WITH TIME ZONE NOT NULL,
  sid         integer NOT NULL CHECK (sid >= 0),
  policy      varchar(255)  DEFAULT '',
  client_addr varchar(255)  DEFAULT '',
  size        integer NOT NULL CHECK (size >= 0),
  originating char(1) DEFAULT ' ' NOT NULL,
  content     char(1),
  quar_type  char(1),
  quar_loc   varchar(255)  DEFAULT '',
  dsn_sent   char(1),
  spam_level real,
  message_id varchar(255)  DEFAULT '',
  from_addr  varchar(255)  DEFAULT '',
  subject    varchar(255)  DEFAULT '',
  host       varchar(255)  NOT NULL,
  CONSTRAINT msgs_partition_mail UNIQUE (partition_tag,mail_id),
  PRIMARY KEY (partition_tag,mail_id)
);
CREATE INDEX msgs_idx_sid      ON msgs (sid);
CREATE INDEX msgs_idx_mess_id  ON msgs (message_id);
CREATE INDEX msgs_idx_time_iso ON msgs (time_iso);
CREATE INDEX msgs_idx_time_num ON msgs (time_num);
CREATE TABLE msgrcpt (
  partition_tag integer DEFAULT 0,
  mail_id    bytea    NOT NULL,
  rseqnum    integer  DEFAULT 0   NOT NULL,
  rid        integer  NOT NULL,
  is_local   char(1)  DEFAULT ' ' NOT NULL,
  content    char(1)  DEFAULT ' ' NOT NULL,
  ds         char(1)  NOT NULL,
  rs         char(1)  NOT NULL,
  bl         char(1)  DEFAULT ' ',
  wl         char(1)  DEFAULT ' ',
  bspam_level real,
  smtp_resp  varchar(255) DEFAULT '',
  CONSTRAINT msgrcpt_partition_mail_rseq UNIQUE (partition_tag,mail_id,rseqnum),
  PRIMARY KEY (partition_tag,mail_id,rseqnum)
);
CREATE INDEX msgrcpt_idx_mail_id  ON msgrcpt (mail_id);
CREATE INDEX msgrcpt_idx_rid      ON msgrcpt (rid);
CREATE TABLE quarantine (
  partition_tag integer  DEFAULT 0,
  mail_id    bytea   NOT NULL,
  chunk_ind  integer NOT NULL CHECK (chunk_ind >= 0),
  mail_text  bytea   NOT NULL,
  PRIMARY KEY (partition_tag,mail_id,chunk_ind)
);
"""


def test_works_on_tables_amavis_created(empty_url):
    database = Database(empty_url)
    try:
        with database.engine.begin() as conn:
            for statement in filter(str.strip, AMAVIS_DDL.split(";")):
                conn.execute(text(statement))
        database.create()                       # adds only pymavis_quarantine
        database.put(entry(), RAW)
        assert database.entry("AbCdEf012345") == entry()
        with database.open("AbCdEf012345") as fh:
            assert fh.read() == RAW
    finally:
        database.close()


# What each query gives for the rows below: 11 recent messages from sender.sub.example.org.
EXPECTED = {
    "mail from last two minutes": lambda rows: len(rows) == 44 and rows[0].s == "sender@sub.example",
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


# Housekeeping from README.sql-pg: the maddr rows nothing refers to any more.
AMAVIS_MADDR_CLEANUP = """
DELETE FROM maddr
  WHERE NOT EXISTS (SELECT 1 FROM msgs    WHERE sid=id)
    AND NOT EXISTS (SELECT 1 FROM msgrcpt WHERE rid=id)"""


def test_amavis_cleanup_removes_what_delete_left(db):
    db.put(entry(), RAW)
    db.put(entry("Other1", sender="other@example.org"), RAW)
    db.delete("AbCdEf012345")
    with db.engine.begin() as conn:
        assert conn.execute(text(AMAVIS_MADDR_CLEANUP)).rowcount == 1        # the first sender only
    assert db.entry("Other1") == entry("Other1", sender="other@example.org")


def test_server_not_there_is_named_without_password(tmp_path):
    database = Database(f"postgresql+psycopg://vscan:sekrit@/mail_log?host={tmp_path}", connect_timeout_s=2)
    with pytest.raises(StoreError) as failed:
        database.create()
    message = str(failed.value)
    assert message.startswith(f"postgresql+psycopg://vscan:***@/mail_log?host={tmp_path}: create tables: ")
    assert "sekrit" not in message and "No such file or directory" in message
