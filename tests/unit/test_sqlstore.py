"""The quarantine index and SQL quarantine (sqlstore) on SQLite: round trip, chunks, no
overwrite, nothing half-written, concurrent puts, release marks, delete, expire, errors.

The behaviour tests take a `db` fixture (a fresh, created Database); the PostgreSQL tests
(tests/protocol/test_sqlstore_postgres.py) import them by name from BEHAVIOURS and run them
against a real server with their own `db`.
"""

import dataclasses
import io
import sqlite3
import threading
import time

import pytest
from sqlalchemy import func, select

from pymavis import sqlstore
from pymavis.sqlstore import Database, QEntry, QRcpt, StoreError

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\n" + bytes(range(256)) * 400      # 102 KiB, every byte value


def entry(mail_id="AbCdEf012345", when=1_700_000_000.25, sender="Sender@Sub.Example.ORG", **over) -> QEntry:
    rcpts = (
        QRcpt("bob@example.com", True, "V", "D", quar_type="F", quar_loc="virus/A/virus-" + mail_id,
              category="VIRUS", reason="VIRUS: Eicar-Test-Signature", smtp_resp="250 2.7.0 Ok, discarded",
              bspam_level=5.3),
        QRcpt("ann@example.com", True, "V", "D", quar_type="Q", category="VIRUS", reason="VIRUS: Eicar"),
        QRcpt("held@example.net", False, "B", "D", quar_type="H", quar_loc="4QABC123", category="BANNED",
              reason="BANNED: .exe", bspam_level=-1.5),
        QRcpt("carl@example.com", False, "C", "P", smtp_resp="250 2.0.0 Ok"),
    )
    values = dict(mail_id=mail_id, secret_id="s3cr3tS3cr3t", log_id=mail_id, time=when, sender=sender,
                  size=len(RAW), content="V", rcpts=rcpts, policy="MYNETS,ORIGINATING", client_addr="192.0.2.7",
                  originating=True, queue_id="4QABC123", spam_level=5.3, message_id="<m1@example.org>",
                  from_addr="Sender <sender@sub.example.org>", subject="Grüße", dsn_sent="N", host="mx.example.net")
    return QEntry(**{**values, **over})


def count(db, table, **where) -> int:
    query = select(func.count()).select_from(table).where(*(table.c[k] == v for k, v in where.items()))
    with db.engine.connect() as conn:
        return conn.execute(query).scalar()


TABLES = (sqlstore.maddr, sqlstore.msgs, sqlstore.msgrcpt, sqlstore.quarantine, sqlstore.pymavis_quarantine)


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path}/state/pymavis.db")
    database.create()
    yield database
    database.close()


def test_round_trip_keeps_every_field(db):
    original = entry()
    db.put(original, RAW)
    assert db.entry(original.mail_id) == original
    assert count(db, sqlstore.msgrcpt) == 4 and count(db, sqlstore.pymavis_quarantine) == 3


def test_rows_are_amavis_rows(db):
    db.put(entry(sender=""), RAW)
    with db.engine.connect() as conn:
        addrs = {bytes(r.email): r.domain for r in conn.execute(select(sqlstore.maddr))}
        msg = conn.execute(select(sqlstore.msgs)).one()
        rseq = conn.execute(select(sqlstore.msgrcpt.c.rseqnum, sqlstore.msgrcpt.c.rs)).all()
    assert addrs[b""] == "" and addrs[b"bob@example.com"] == "com.example"
    assert (bytes(msg.mail_id), msg.time_num, msg.quar_type, msg.quar_loc, msg.originating) == \
        (b"AbCdEf012345", 1_700_000_000, "F", "virus/A/virus-AbCdEf012345", "Y")
    assert sorted(rseq) == [(1, " "), (2, " "), (3, " "), (4, " ")]
    db.put(entry("Other1", sender="x@A.B.Example.COM."), RAW)
    assert count(db, sqlstore.maddr, domain="com.example.b.a") == 1


def test_message_is_chunked_and_read_back(db):
    db.put(entry(), RAW)
    with db.engine.connect() as conn:
        chunks = conn.execute(select(sqlstore.quarantine.c.chunk_ind, func.length(sqlstore.quarantine.c.mail_text))
                              .order_by(sqlstore.quarantine.c.chunk_ind)).all()
    assert [c for c, _ in chunks] == list(range(1, 8)) and {n for _, n in chunks[:-1]} == {16384}
    with db.open("AbCdEf012345") as fh:
        assert fh.read() == RAW
    with db.open("AbCdEf012345") as fh:
        pieces = iter(lambda: fh.read(1000), b"")
        assert b"".join(pieces) == RAW


def test_source_file_is_read_from_where_it_is(db):
    source = io.BytesIO(b"envelope junk" + RAW)
    source.seek(len(b"envelope junk"))
    db.put(entry(), source)
    with db.open("AbCdEf012345") as fh:
        assert fh.read() == RAW


def test_empty_message_is_one_empty_chunk(db):
    db.put(entry(size=0), b"")
    with db.open("AbCdEf012345") as fh:
        assert fh.read() == b""


def test_second_put_of_a_mail_id_fails_and_keeps_the_first(db):
    db.put(entry(subject="first"), RAW)
    with pytest.raises(StoreError, match="mail_id AbCdEf012345 is already stored"):
        db.put(entry(subject="second", sender="new@example.org"), b"other bytes")
    assert db.entry("AbCdEf012345").subject == "first"
    with db.open("AbCdEf012345") as fh:
        assert fh.read() == RAW
    assert count(db, sqlstore.maddr, email=b"new@example.org") == 0


class BrokenSource(io.RawIOBase):
    """Gives two chunks, then fails like a spool file on a bad disk."""

    def __init__(self):
        self.calls = 0

    def read(self, n=-1):
        self.calls += 1
        if self.calls > 2:
            raise OSError(5, "Input/output error")
        return b"x" * n


def test_failed_put_leaves_nothing(db):
    with pytest.raises(StoreError, match="store mail_id AbCdEf012345: reading the message: .*Input/output error"):
        db.put(entry(), BrokenSource())
    assert [count(db, t) for t in TABLES] == [0] * len(TABLES)
    with pytest.raises(StoreError, match="no quarantined message with mail_id AbCdEf012345"):
        db.entry("AbCdEf012345")


def test_concurrent_puts_share_one_address_row(db):
    start, errors = threading.Barrier(8), []

    def put(n):
        start.wait()
        try:
            db.put(entry(f"Thread{n:06d}", sender="same@example.org"), RAW[:20000])
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert count(db, sqlstore.msgs) == 8
    assert count(db, sqlstore.maddr, email=b"same@example.org") == 1
    assert count(db, sqlstore.maddr, email=b"bob@example.com") == 1


def test_mark_released(db):
    db.put(entry(), RAW)
    db.mark_released("AbCdEf012345", ["ann@example.com", "bob@example.com"], "admin", "250 2.0.0 Ok: queued as X",
                     when=1_700_000_100.9)
    rcpts = {r.addr: r for r in db.entry("AbCdEf012345").rcpts}
    for addr in ("ann@example.com", "bob@example.com"):
        assert (rcpts[addr].rs, rcpts[addr].released_time, rcpts[addr].released_by, rcpts[addr].release_resp) == \
            ("R", 1_700_000_100, "admin", "250 2.0.0 Ok: queued as X")
    assert (rcpts["held@example.net"].rs, rcpts["held@example.net"].released_time) == (" ", None)
    with pytest.raises(StoreError, match="mail_id AbCdEf012345 has no recipient eve@example.com"):
        db.mark_released("AbCdEf012345", ["eve@example.com", "held@example.net"], "admin", "")
    assert {r.addr: r.rs for r in db.entry("AbCdEf012345").rcpts}["held@example.net"] == " "
    with pytest.raises(StoreError, match="no quarantined message with mail_id Nope12"):
        db.mark_released("Nope12", ["bob@example.com"], "admin", "")


def test_delete_removes_the_message_and_keeps_others(db):
    db.put(entry(), RAW)
    db.put(entry("Keep00000001"), RAW)
    db.delete("AbCdEf012345")
    db.delete("AbCdEf012345")                # already gone: nothing to do
    for table in TABLES[1:]:
        assert count(db, table, mail_id=b"AbCdEf012345") == 0
        assert count(db, table, mail_id=b"Keep00000001") > 0
    with pytest.raises(StoreError, match="no SQL-quarantined copy of mail_id AbCdEf012345"):
        db.open("AbCdEf012345")


def test_expire_deletes_what_is_older(db):
    for mail_id, when in (("Old1", 1000.0), ("Old2", 2000.5), ("New1", 3000.0)):
        db.put(entry(mail_id, when=when), RAW)
    assert db.expire(3000.0) == ["Old1", "Old2"]
    assert [e.mail_id for e in db.entries()] == ["New1"]
    assert db.expire(3000.0) == []
    assert count(db, sqlstore.quarantine) == 7


def test_entries_oldest_first_and_only_kept_messages(db):
    not_kept = entry("Clean1", when=500.0, rcpts=(QRcpt("carl@example.com", False, "C", "P"),))
    for e in (entry("Mid1", when=2000.0), entry("Old1", when=1000.0), not_kept, entry("New1", when=3000.0)):
        db.put(e, RAW)
    assert [e.mail_id for e in db.entries()] == ["Old1", "Mid1", "New1"]
    assert [e.mail_id for e in db.entries(limit=2)] == ["Old1", "Mid1"]
    assert [e.mail_id for e in db.entries(older_than=2500)] == ["Old1", "Mid1"]
    assert db.entry("Clean1").rcpts == not_kept.rcpts and db.entry("Clean1").queue_id == ""


def test_create_is_idempotent(db):
    db.create()
    db.put(entry(), RAW)
    db.create()
    assert db.entry("AbCdEf012345") == entry()


def test_refuses_inconsistent_entries(db):
    sql_without_bytes = entry()
    with pytest.raises(StoreError, match="quar_type 'Q' without the message"):
        db.put(sql_without_bytes)
    odd = entry(rcpts=(QRcpt("bob@example.com", True, "V", "D", quar_type="Z"),))
    with pytest.raises(StoreError, match="unknown quar_type for bob@example.com"):
        db.put(odd, RAW)
    with pytest.raises(StoreError, match="mail_id AbCdEf012345: no recipients"):
        db.put(entry(rcpts=()), RAW)
    with pytest.raises(StoreError, match=r"/\S+: read mail_id Grüße: not an ASCII id"):
        db.entry("Grüße")
    assert count(db, sqlstore.msgs) == 0


def test_mail_text_is_cut_to_its_column(db):
    db.put(entry(subject="S" * 300 + "\0", from_addr="a\udcff@example.org"), RAW)
    got = db.entry("AbCdEf012345")
    assert got.subject == "S" * 255 and got.from_addr == "a?@example.org"


def test_clock_time_round_trips_to_the_microsecond(db):
    now = time.time()
    db.put(entry(when=now), RAW)
    assert abs(db.entry("AbCdEf012345").time - now) < 1e-6


def batch_of(n: int = 3) -> list[QEntry]:
    """Entries as the SQL log writes them (no message bytes, so no 'Q' copies), each different."""
    out = []
    for k in range(n):
        e = entry(f"Batch{k:07d}", when=1_700_000_000.25 + k * 3600.5, sender=f"s{k}@example.org",
                  spam_level=None if k == 1 else 5.3 + k, subject=("Grüße", "", "ok " * 80)[k % 3].strip(),
                  originating=bool(k % 2))
        out.append(dataclasses.replace(e, rcpts=tuple(r for r in e.rcpts if r.quar_type != "Q")))
    return out


def test_put_many_reads_back_as_each_entry(db):
    batch = batch_of()
    db.put_many(batch)
    assert [db.entry(e.mail_id) for e in batch] == batch
    assert count(db, sqlstore.msgrcpt) == 3 * len(batch)
    with pytest.raises(StoreError, match="already stored"):   # all or nothing
        db.put_many([batch_of(4)[3], batch[0]])
    assert count(db, sqlstore.msgs) == len(batch)


BEHAVIOURS = [name for name in dict(globals()) if name.startswith("test_")]


# SQLite only.

def test_sqlite_is_durable_and_in_wal_mode(db, tmp_path):
    assert (tmp_path / "state" / "pymavis.db").is_file()       # the missing directory was made
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2          # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == sqlstore.SQLITE_BUSY_MS


def test_readers_do_not_wait_for_a_writer(db, tmp_path):
    db.put(entry(), RAW)
    writer = sqlite3.connect(tmp_path / "state" / "pymavis.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")   # a reader taking the write lock would fail here (busy timeout)
        assert [e.mail_id for e in db.entries()] == ["AbCdEf012345"]
        with db.open("AbCdEf012345") as fh:
            assert fh.read() == RAW
    finally:
        writer.close()


def test_put_many_stores_the_rows_single_puts_store(tmp_path):
    """SQLite's one INSERT of many rows (sqlstore._RowsInsert) stores the same values,
    in the same storage formats, as one conn.execute(insert(t), rows) per entry."""
    one, many = Database(f"sqlite:///{tmp_path}/one.db"), Database(f"sqlite:///{tmp_path}/many.db")
    batch = batch_of(5)
    try:
        for database in (one, many):
            database.create()
        for e in batch:
            one.put(e)
        many.put_many(batch)
    finally:
        one.close()
        many.close()

    def rows(path, table, id_column):
        columns = [c.name for c in table.columns if c.name != id_column]
        with sqlite3.connect(path) as conn:
            return sorted(conn.execute(f"SELECT {', '.join('t.' + c for c in columns)}, a.email FROM {table.name} t "
                                       f"JOIN maddr a ON a.id = t.{id_column}").fetchall())

    for table, id_column in ((sqlstore.msgs, "sid"), (sqlstore.msgrcpt, "rid")):
        assert rows(tmp_path / "many.db", table, id_column) == rows(tmp_path / "one.db", table, id_column)
    with sqlite3.connect(tmp_path / "many.db") as conn:
        kept = conn.execute("SELECT * FROM pymavis_quarantine ORDER BY mail_id, rseqnum").fetchall()
    with sqlite3.connect(tmp_path / "one.db") as conn:
        assert kept == conn.execute("SELECT * FROM pymavis_quarantine ORDER BY mail_id, rseqnum").fetchall()
    assert len(kept) == 2 * len(batch)


def test_unusable_database_path_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(StoreError, match=f"sqlite:///{tmp_path}/afile/q.db: cannot create directory {tmp_path}/afile"):
        Database(f"sqlite:///{tmp_path}/afile/q.db")
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(StoreError, match=f"sqlite:///{tmp_path}/adir.db: cannot create {tmp_path}/adir.db: "):
        Database(f"sqlite:///{tmp_path}/adir.db")


def test_a_new_sqlite_file_is_not_world_readable(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/new.db")
    db.create()
    assert (tmp_path / "new.db").stat().st_mode & 0o777 == 0o640
    db.close()


def test_bad_url():
    with pytest.raises(StoreError, match="nonsense: not a database URL"):
        Database("nonsense")


@pytest.mark.parametrize("url, shown", [
    ("sqlite:////var/lib/pymavis/pymavis.db", "sqlite:////var/lib/pymavis/pymavis.db"),
    ("postgresql+psycopg://vscan:LK40.gtk@db.example/mail_log", "postgresql+psycopg://vscan:***@db.example/mail_log"),
    ("postgresql://vscan:p@ss:w@localhost:5432/db", "postgresql://vscan:***@localhost:5432/db"),
    ("postgresql://vscan@/db?host=/run/pg&password=sekrit", "postgresql://vscan@/db?host=/run/pg&password=***"),
    ("postgresql://vscan@db.example/db", "postgresql://vscan@db.example/db"),
], ids=["sqlite", "password", "at-in-password", "query-password", "no-password"])
def test_redacted(url, shown):
    assert sqlstore.redacted(url) == shown

