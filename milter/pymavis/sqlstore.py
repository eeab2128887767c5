"""The quarantine index and the SQL quarantine, in amavisd-new's schema (README.sql-pg).

Tables, with amavis's names, columns and types, so amavis's example queries and reporting
tools work on our data:

    maddr       one row per address and partition: email (bytes), domain with the labels
                reversed ("com.example.sub"), as amavis writes it
    msgs        one row per message: mail_id, secret_id, time, sender (maddr id), policy
                bank path, size, content letter, the first kept copy's quar_type/quar_loc
    msgrcpt     one row per recipient (rseqnum 1..n in envelope order): content letter,
                delivery status, release status `rs`, spam level, SMTP reply
    quarantine  the message itself for quar_type 'Q', in chunks of 16 KiB (chunk_ind 1..)

and one table of ours, since amavis keeps one quarantine location per message while we keep
one per recipient:

    pymavis_quarantine  one row per kept recipient (its msgrcpt rseqnum): quar_type 'F'
                        (local file; quar_loc relative to the quarantine dir), 'Q' (SQL;
                        quar_loc ''), 'H' (the MTA's hold queue, a letter amavis does not
                        have; quar_loc is the queue id), the queue id, category, reason and
                        who released it when

An entry is a message with at least one such row. Every read and write is confined to this
Database's partition_tag. mail_id and secret_id are ASCII strings here and bytes in the
tables (amavis: bytea); addresses are kept as given (amavis lowercases them) so a release
goes to exactly the address the MTA named. Text taken from the mail (Subject, From,
Message-ID, replies, reasons) is cut to its column's 255 characters, as amavis does; a spam
level is a REAL (single precision on PostgreSQL, FLOAT on MySQL) and comes back rounded to 3
decimals.

MySQL/MariaDB (mysql+pymysql://, tested with MariaDB 10.11): the column types of amavis's
README.sql-mysql (VARBINARY ids and addresses, unsigned and BIGINT numbers, FLOAT levels,
InnoDB tables in utf8mb4) but time_iso, a DATETIME(6) in UTC where amavis has char(16);
transactions are READ COMMITTED, as on PostgreSQL. A value longer than its column there (a
mail_id over 16 bytes, an address over 255) is refused: StoreError. MySQL reads a CHAR ' '
back as '' (msgrcpt.rs before a release); entry() gives ' ' as elsewhere, and SQL's
`rs = ' '` still matches.

Durability: put() is one transaction, committed (fsynced: SQLite synchronous=FULL,
PostgreSQL's and InnoDB's defaults) before it returns, so the milter answers only for stored
mail. SQLite runs in WAL mode; a writing transaction is BEGIN IMMEDIATE, so concurrent
writers (the milter's worker threads) queue for up to SQLITE_BUSY_MS instead of failing on a
lock upgrade, and readers block no one. A batch of entries (put_many, the SQL log's) is one
INSERT of many rows per table there (_RowsInsert), not an executemany.
Failure: every error is a StoreError naming the database (password hidden) and what failed;
nothing of a failed put() is left behind. The caller answers TEMPFAIL.
"""

from __future__ import annotations

import io
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (CHAR, REAL, Column, DateTime, Index, Integer, LargeBinary, MetaData, String, Table,
                        UniqueConstraint, and_, create_engine, delete, event, exists, func, insert, select, update)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

CHUNK = 16 * 1024              # amavis's quarantine chunk size
READ_CHUNKS = 16               # chunks fetched per query by open(): 256 KiB in memory at most
ID_BATCH = 500                 # mail_ids per IN (...), well below SQLite's bound variable limit
SQLITE_BUSY_MS = 5000          # how long a writer waits for another one's transaction
TEXT_MAX = 255

CONTENT_LETTER = {"VIRUS": "V", "BANNED": "B", "UNCHECKED": "U", "SPAM": "S", "SPAMMY": "Y", "BADH": "H",
                  "OVERSIZED": "O", "MTA": "T", "CLEAN": "C"}   # amavis's letters ('M' bad-mime unused)
DS_LETTER = {"pass": "P", "reject": "R", "bounce": "B", "discard": "D", "tempfail": "T"}
QUAR_TYPES = ("F", "Q", "H")

# MySQL and MariaDB (SQLAlchemy names their dialects apart): the types of amavis's
# README.sql-mysql where the generic ones differ. Elsewhere these are the generic types.
MYSQL = ("mysql", "mariadb")
UNSIGNED = Integer().with_variant(mysql.INTEGER(unsigned=True), *MYSQL)
ADDR_ID = Integer().with_variant(mysql.BIGINT(unsigned=True), *MYSQL)      # maddr.id, msgs.sid, msgrcpt.rid
LEVEL = REAL().with_variant(mysql.FLOAT(), *MYSQL)           # REAL is DOUBLE there; amavis: float
# XXX: amavis's MySQL time_iso is char(16) ("20231114T221320Z"), or TIMESTAMP with
# $timestamp_fmt_mysql; we keep a real time type, as on PostgreSQL: DATETIME(6) holding UTC
# (a TIMESTAMP would follow the session's time zone and end in 2038), microseconds kept.
TIME_ISO = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *MYSQL)
# InnoDB for transactions; utf8mb4 since a server's default character set may be latin1.
TABLE_OPTIONS = {f"{dialect}_{key}": value for dialect in MYSQL
                 for key, value in (("engine", "InnoDB"), ("charset", "utf8mb4"))}


def _bytes(length: int):
    """Bytes (amavis: bytea); on MySQL VARBINARY(length) as in amavis's schema: a BLOB cannot
    be part of a key or an index without a prefix length."""
    return LargeBinary().with_variant(mysql.VARBINARY(length), *MYSQL)


def _key(*more: str, kind=Integer) -> list[Column]:
    """partition_tag, mail_id and `more` (integers of `kind`): the primary key of amavis's
    per-message tables."""
    return [Column("partition_tag", Integer, primary_key=True, autoincrement=False, server_default="0"),
            Column("mail_id", _bytes(16), primary_key=True),
            *(Column(name, kind, primary_key=True, autoincrement=False) for name in more)]


def _text(name: str, length: int = TEXT_MAX, **options) -> Column:
    return Column(name, String(length), **{"server_default": "", **options})


def _letter(name: str, **options) -> Column:
    return Column(name, CHAR(1), **options)


def _number(name: str, kind=UNSIGNED) -> Column:
    return Column(name, kind, nullable=False)


metadata = MetaData()
maddr = Table(
    "maddr", metadata, Column("id", ADDR_ID, primary_key=True), Column("partition_tag", Integer, server_default="0"),
    Column("email", _bytes(255), nullable=False), _text("domain", server_default=None, nullable=False),
    UniqueConstraint("partition_tag", "email", name="part_email"), **TABLE_OPTIONS)
msgs = Table(
    "msgs", metadata, *_key(), Column("secret_id", _bytes(16), server_default=""),
    _text("am_id", 20, server_default=None, nullable=False), _number("time_num"),
    Column("time_iso", TIME_ISO, nullable=False), _number("sid", ADDR_ID), _text("policy"),
    _text("client_addr"), _number("size"), _letter("originating", nullable=False, server_default=" "),
    _letter("content"), _letter("quar_type"), _text("quar_loc"), _letter("dsn_sent"), Column("spam_level", LEVEL),
    _text("message_id"), _text("from_addr"), _text("subject"), _text("host", server_default=None, nullable=False),
    Index("msgs_idx_sid", "sid"), Index("msgs_idx_mess_id", "message_id"),
    Index("msgs_idx_time_iso", "time_iso"), Index("msgs_idx_time_num", "time_num"), **TABLE_OPTIONS)
msgrcpt = Table(
    "msgrcpt", metadata, *_key("rseqnum"), _number("rid", ADDR_ID),
    _letter("is_local", nullable=False, server_default=" "), _letter("content", nullable=False, server_default=" "),
    _letter("ds", nullable=False),
    _letter("rs", nullable=False), _letter("bl", server_default=" "), _letter("wl", server_default=" "),
    Column("bspam_level", LEVEL), _text("smtp_resp"),
    Index("msgrcpt_idx_mail_id", "mail_id"), Index("msgrcpt_idx_rid", "rid"), **TABLE_OPTIONS)
quarantine = Table(   # mail_text: a BLOB on MySQL (up to 64 KiB, CHUNK is 16)
    "quarantine", metadata, *_key("chunk_ind", kind=UNSIGNED), Column("mail_text", LargeBinary, nullable=False),
    **TABLE_OPTIONS)
pq = pymavis_quarantine = Table(
    "pymavis_quarantine", metadata, *_key("rseqnum"), _letter("quar_type", nullable=False),
    _text("quar_loc", nullable=False), _text("queue_id", 32, nullable=False), _text("category", 20, nullable=False),
    _text("reason", nullable=False), Column("released_time", Integer), _text("released_by", nullable=False),
    _text("release_resp", nullable=False), Index("pymavis_quarantine_idx_mail_id", "mail_id"),
    **TABLE_OPTIONS)


_INSERT = {table: insert(table) for table in (msgs, msgrcpt, quarantine, pq)}   # built once: executemany


class StoreError(Exception):
    """A database operation failed; the message names the database (password hidden) and what failed."""


@dataclass(frozen=True)
class QRcpt:
    addr: str
    is_local: bool
    content: str              # amavis content letter of this recipient: V B U S Y M H O T C
    ds: str                   # delivery status P R B D T
    quar_type: str = ""       # '' (not kept for this recipient) / 'F' / 'Q' / 'H'
    quar_loc: str = ""
    category: str = ""        # "VIRUS", "BANNED", ... ('' if not kept)
    reason: str = ""
    smtp_resp: str = ""
    bspam_level: float | None = None
    rs: str = " "             # release status: ' ' or 'R' released
    released_time: int | None = None
    released_by: str = ""
    release_resp: str = ""


@dataclass(frozen=True)
class QEntry:
    mail_id: str
    secret_id: str
    log_id: str               # msgs.am_id
    time: float               # kept to the microsecond (msgs.time_iso); time_num is its whole seconds
    sender: str               # envelope sender, '' for <>
    size: int
    content: str              # the message's main content letter
    rcpts: tuple[QRcpt, ...]
    policy: str = ""          # bank names joined by ','
    client_addr: str = ""
    originating: bool = False
    queue_id: str = ""        # kept with the pymavis_quarantine rows (msgs has no column for it)
    spam_level: float | None = None
    message_id: str = ""
    from_addr: str = ""
    subject: str = ""
    dsn_sent: str | None = None   # 'Y' 'N' 'q'
    host: str = ""


def redacted(url: str) -> str:
    """`url` with any password (in the authority or a `password=` parameter) replaced by '***'."""
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
    return re.sub(r"^([a-z0-9+.-]+://[^/?#@:]*):[^/?#]*@", r"\1:***@", url, flags=re.I)


def _id(text: str) -> bytes:
    """mail_id / secret_id as stored (amavis: bytea); _text_id() is the way back."""
    if not text.isascii():
        raise ValueError(f"not an ASCII id: {text!r}")
    return text.encode("ascii")


def _text_id(data: bytes) -> str:
    return bytes(data).decode("ascii")


def _email(addr: str) -> bytes:
    return addr.encode("utf-8", "surrogateescape")     # 8-bit envelope addresses survive the round trip


def _domain(addr: str) -> str:
    domain = addr.rpartition("@")[2].strip(".").lower() if "@" in addr else ""
    return _fit(".".join(reversed(domain.split("."))) if domain else "")


def _fit(text: str, limit: int = TEXT_MAX) -> str:
    """Text from the mail, storable anywhere: no NULs, no lone surrogates, at most `limit` characters."""
    return text.replace("\0", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def _level(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


class Database:
    """One database, SQLite or a server; its engine (a pool) is shared by the worker threads."""

    def __init__(self, url: str, partition_tag: int = 0, *, pool_size: int = 4, connect_timeout_s: float = 5.0):
        self.where, self.partition_tag = redacted(url), partition_tag
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"{self.where}: not a database URL: {exc}") from None
        options: dict = {"pool_size": pool_size}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                parent = Path(parsed.database).parent
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"{self.where}: cannot create directory {parent}: {exc.strerror}") from None
                try:   # addresses and subjects are not for every local user (-wal/-shm get this mode too)
                    os.close(os.open(parsed.database, os.O_CREAT | os.O_RDWR, 0o640))
                except OSError as exc:
                    raise StoreError(f"{self.where}: cannot create {parsed.database}: {exc.strerror}") from None
        else:
            options["pool_pre_ping"] = True         # a restarted server costs one retry, not a failed put
            if parsed.get_backend_name() in ("postgresql", *MYSQL):
                options["connect_args"] = {"connect_timeout": max(1, math.ceil(connect_timeout_s))}
            if parsed.get_backend_name() in MYSQL:
                # PostgreSQL's default. InnoDB's REPEATABLE READ would keep _addr_ids from
                # seeing the maddr row a concurrent put committed after our first SELECT.
                options["isolation_level"] = "READ COMMITTED"
        try:
            self.engine = create_engine(parsed, **options)
        except (ArgumentError, ImportError) as exc:
            raise StoreError(f"{self.where}: cannot use this database: {exc}") from None
        self._rows_inserts: dict[Table, _RowsInsert] = {}
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
            self._rows_inserts = {table: _RowsInsert(table, self.engine.dialect) for table in (msgs, msgrcpt, pq)}
        self._reader = self.engine.execution_options(pymavis_read_only=True)

    @contextmanager
    def _transaction(self, what: str, write: bool = True):
        try:
            with (self.engine if write else self._reader).begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.where}: {what}: {_reason(exc)}") from None
        except OSError as exc:
            raise StoreError(f"{self.where}: {what}: reading the message: {exc}") from None
        except ValueError as exc:               # a value the tables cannot hold
            raise StoreError(f"{self.where}: {what}: {exc}") from None

    def _is(self, table: Table, mail_id: str):
        return and_(table.c.partition_tag == self.partition_tag, table.c.mail_id == _id(mail_id))

    def create(self) -> None:
        """Create the tables and indexes that are missing (`pymavis sql init`)."""
        with self._transaction("create tables") as conn:
            metadata.create_all(conn)
            for table in metadata.tables.values():
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

    def put(self, entry: QEntry, source=None) -> None:
        """Store `entry` and, given `source` (bytes or a binary file object, read from where
        it is), the message as quarantine chunks; one transaction, durable when it returns."""
        self._check(entry, source)
        with self._transaction(f"store mail_id {entry.mail_id}") as conn:
            self._put(conn, [entry], source)

    def replace(self, entry: QEntry) -> None:
        """The rows of entry's mail_id (if any) replaced by `entry`'s (no message bytes), in one
        transaction."""
        self._check(entry, None)
        with self._transaction(f"replace mail_id {entry.mail_id}") as conn:
            self._delete(conn, [_id(entry.mail_id)])
            self._put(conn, [entry], None)

    def put_many(self, entries: list[QEntry]) -> None:
        """Store `entries` (no message bytes) in one transaction: all or none (the SQL log's
        batches: one commit, one fsync, one statement per table for what queued up while the
        last batch was written)."""
        for entry in entries:
            self._check(entry, None)
        with self._transaction(f"store {len(entries)} entries") as conn:
            self._put(conn, entries, None)

    def _check(self, entry: QEntry, source) -> None:
        if not entry.rcpts:
            raise StoreError(f"{self.where}: mail_id {entry.mail_id}: no recipients")
        if bad := [r.addr for r in entry.rcpts if r.quar_type and r.quar_type not in QUAR_TYPES]:
            raise StoreError(f"{self.where}: mail_id {entry.mail_id}: unknown quar_type for {', '.join(bad)}")
        if source is None and any(r.quar_type == "Q" for r in entry.rcpts):
            raise StoreError(f"{self.where}: mail_id {entry.mail_id}: quar_type 'Q' without the message")

    def _put(self, conn, entries: list[QEntry], source) -> None:
        """The rows of `entries`, each table in one executemany; `source` (one entry only)
        as quarantine chunks."""
        tag = self.partition_tag
        ids = self._addr_ids(conn, [a for e in entries for a in (e.sender, *(r.addr for r in e.rcpts))])
        msg_rows, rcpt_rows, kept_rows = [], [], []
        for entry in entries:
            mail_id, first = _id(entry.mail_id), next((r for r in entry.rcpts if r.quar_type), None)
            msg_rows.append(dict(
                partition_tag=tag, mail_id=mail_id, secret_id=_id(entry.secret_id), am_id=entry.log_id,
                time_num=int(entry.time), time_iso=datetime.fromtimestamp(entry.time, timezone.utc),
                sid=ids[entry.sender], policy=entry.policy, client_addr=entry.client_addr, size=entry.size,
                originating="Y" if entry.originating else "N", content=entry.content,
                quar_type=first.quar_type if first else " ", quar_loc=first.quar_loc if first else "",
                dsn_sent=entry.dsn_sent, spam_level=entry.spam_level, message_id=_fit(entry.message_id),
                from_addr=_fit(entry.from_addr), subject=_fit(entry.subject), host=entry.host))
            for n, r in enumerate(entry.rcpts, 1):
                rcpt_rows.append(dict(
                    partition_tag=tag, mail_id=mail_id, rseqnum=n, rid=ids[r.addr], is_local="Y" if r.is_local else "N",
                    content=r.content, ds=r.ds, rs=r.rs, bl=" ", wl=" ", bspam_level=r.bspam_level,
                    smtp_resp=_fit(r.smtp_resp)))
                if r.quar_type:
                    kept_rows.append(dict(
                        partition_tag=tag, mail_id=mail_id, rseqnum=n, quar_type=r.quar_type, quar_loc=r.quar_loc,
                        queue_id=entry.queue_id, category=r.category, reason=_fit(r.reason),
                        released_time=r.released_time, released_by=_fit(r.released_by),
                        release_resp=_fit(r.release_resp)))
        try:
            self._insert(conn, msgs, msg_rows)
        except IntegrityError:
            which = entries[0].mail_id if len(entries) == 1 else "of this batch"
            raise StoreError(f"{self.where}: mail_id {which} is already stored") from None
        self._insert(conn, msgrcpt, rcpt_rows)
        if kept_rows:
            self._insert(conn, pq, kept_rows)
        if source is not None:
            mail_id = _id(entries[0].mail_id)
            for n, block in enumerate(_blocks(source), 1):
                conn.execute(_INSERT[quarantine], dict(partition_tag=tag, mail_id=mail_id, chunk_ind=n,
                                                       mail_text=block))

    def _insert(self, conn, table: Table, rows: list[dict]) -> None:
        """`rows` into `table`: on SQLite, many rows in one INSERT (_RowsInsert); elsewhere
        one executemany (psycopg pipelines it, PyMySQL rewrites it into one INSERT)."""
        many = self._rows_inserts.get(table)
        if many is not None and len(rows) > 1:
            many.execute(conn, rows)
        else:
            conn.execute(_INSERT[table], rows)

    def _addr_ids(self, conn, addrs: list[str]) -> dict[str, int]:
        """maddr ids, created where missing: the known ones in one SELECT, the new ones one at a
        time in one order (sorted) for every put, so two puts waiting on each other's new
        address cannot deadlock; a concurrent put that created it first shows as
        IntegrityError, and we take its row."""
        wanted = {_email(a): a for a in addrs}
        ids = {}
        keys = sorted(wanted)
        for i in range(0, len(keys), ID_BATCH):
            rows = conn.execute(select(maddr.c.email, maddr.c.id).where(
                maddr.c.partition_tag == self.partition_tag, maddr.c.email.in_(keys[i:i + ID_BATCH])))
            ids.update({wanted[bytes(email)]: id_ for email, id_ in rows})
        for email in keys:
            addr = wanted[email]
            if addr in ids:
                continue
            row = and_(maddr.c.partition_tag == self.partition_tag, maddr.c.email == email)
            try:
                with conn.begin_nested():
                    ids[addr] = conn.execute(insert(maddr).values(
                        partition_tag=self.partition_tag, email=email, domain=_domain(addr))).inserted_primary_key[0]
            except IntegrityError:
                ids[addr] = conn.execute(select(maddr.c.id).where(row)).scalar_one()
        return ids

    def entry(self, mail_id: str) -> QEntry:
        with self._transaction(f"read mail_id {mail_id}", write=False) as conn:
            found = self._load(conn, [self._is(msgs, mail_id)])
        if not found:
            raise StoreError(f"{self.where}: no quarantined message with mail_id {mail_id}")
        return found[0]

    def entries(self, *, older_than: float | None = None, limit: int | None = None) -> list[QEntry]:
        """The messages with at least one kept recipient, oldest first."""
        where = [msgs.c.partition_tag == self.partition_tag,
                 exists().where(pq.c.partition_tag == msgs.c.partition_tag, pq.c.mail_id == msgs.c.mail_id)]
        if older_than is not None:
            where.append(msgs.c.time_num < older_than)
        with self._transaction("list quarantined messages", write=False) as conn:
            return self._load(conn, where, limit)

    def _load(self, conn, where: list, limit: int | None = None) -> list[QEntry]:
        sender = maddr.alias("sender")
        rows = conn.execute(select(msgs, sender.c.email.label("sender_email"))
                            .outerjoin(sender, msgs.c.sid == sender.c.id).where(*where)
                            .order_by(msgs.c.time_iso, msgs.c.mail_id).limit(limit)).all()
        rcpts: dict[bytes, list] = {}
        ids = [bytes(r.mail_id) for r in rows]
        for i in range(0, len(ids), ID_BATCH):
            query = (select(msgrcpt, maddr.c.email, pq.c.quar_type.label("kept_as"), pq.c.quar_loc, pq.c.queue_id,
                            pq.c.category, pq.c.reason, pq.c.released_time, pq.c.released_by, pq.c.release_resp)
                     .join(maddr, msgrcpt.c.rid == maddr.c.id)
                     .outerjoin(pq, and_(pq.c.partition_tag == msgrcpt.c.partition_tag,
                                         pq.c.mail_id == msgrcpt.c.mail_id, pq.c.rseqnum == msgrcpt.c.rseqnum))
                     .where(msgrcpt.c.partition_tag == self.partition_tag, msgrcpt.c.mail_id.in_(ids[i:i + ID_BATCH]))
                     .order_by(msgrcpt.c.mail_id, msgrcpt.c.rseqnum))
            for r in conn.execute(query):
                rcpts.setdefault(bytes(r.mail_id), []).append(r)
        return [_entry(m, rcpts.get(bytes(m.mail_id), [])) for m in rows]

    def open(self, mail_id: str):
        """The SQL-kept message as a binary file object, read a few chunks at a time."""
        with self._transaction(f"read mail_id {mail_id}", write=False) as conn:
            last = conn.execute(select(func.max(quarantine.c.chunk_ind)).where(self._is(quarantine, mail_id))).scalar()
        if last is None:
            raise StoreError(f"{self.where}: no SQL-quarantined copy of mail_id {mail_id}")
        return io.BufferedReader(_Chunks(self, mail_id, last), CHUNK)

    def _chunks(self, mail_id: str, first: int, last: int) -> bytes:
        with self._transaction(f"read mail_id {mail_id}", write=False) as conn:
            blocks = conn.execute(select(quarantine.c.mail_text).where(
                self._is(quarantine, mail_id), quarantine.c.chunk_ind.between(first, last))
                .order_by(quarantine.c.chunk_ind)).scalars().all()
        if len(blocks) != last - first + 1:
            raise StoreError(f"{self.where}: mail_id {mail_id}: chunks {first}..{last} vanished while reading")
        return b"".join(blocks)

    def mark_released(self, mail_id: str, rcpts: list[str], by: str, resp: str, when: float | None = None) -> None:
        """msgrcpt.rs = 'R' and who/when/reply for these recipients, in one transaction."""
        when = int(time.time() if when is None else when)
        with self._transaction(f"mark mail_id {mail_id} released") as conn:
            have = {bytes(r.email): r.rseqnum for r in conn.execute(
                select(msgrcpt.c.rseqnum, maddr.c.email).join(maddr, msgrcpt.c.rid == maddr.c.id)
                .where(self._is(msgrcpt, mail_id)))}
            if not have:
                raise StoreError(f"{self.where}: no quarantined message with mail_id {mail_id}")
            if missing := [a for a in rcpts if _email(a) not in have]:
                raise StoreError(f"{self.where}: mail_id {mail_id} has no recipient {', '.join(missing)}")
            seqs = [have[_email(a)] for a in rcpts]
            conn.execute(update(msgrcpt).where(self._is(msgrcpt, mail_id), msgrcpt.c.rseqnum.in_(seqs)).values(rs="R"))
            conn.execute(update(pq).where(self._is(pq, mail_id), pq.c.rseqnum.in_(seqs)).values(
                released_time=when, released_by=_fit(by), release_resp=_fit(resp)))

    def delete(self, mail_id: str) -> None:
        """Remove the message's rows (none there: nothing to do). maddr rows stay: amavis's
        housekeeping query (README.sql-pg) removes the unreferenced ones."""
        with self._transaction(f"delete mail_id {mail_id}") as conn:
            self._delete(conn, [_id(mail_id)])

    def _delete(self, conn, ids: list[bytes]) -> None:
        for i in range(0, len(ids), ID_BATCH):
            for table in (quarantine, pq, msgrcpt, msgs):
                conn.execute(delete(table).where(table.c.partition_tag == self.partition_tag,
                                                 table.c.mail_id.in_(ids[i:i + ID_BATCH])))

    def expire(self, older_than: float) -> list[str]:
        """Delete the messages received before `older_than` (msgs.time_num); their mail_ids."""
        with self._transaction(f"expire messages older than {older_than:.0f}") as conn:
            ids = [bytes(b) for b in conn.execute(select(msgs.c.mail_id).where(
                msgs.c.partition_tag == self.partition_tag, msgs.c.time_num < older_than)
                .order_by(msgs.c.time_iso, msgs.c.mail_id)).scalars()]
            self._delete(conn, ids)
        return [_text_id(b) for b in ids]

    def close(self) -> None:
        self.engine.dispose()


class _Chunks(io.RawIOBase):
    """The quarantine chunks of one message, READ_CHUNKS per query, each in its own short
    transaction (a slow reader holds no connection)."""

    def __init__(self, db: Database, mail_id: str, last: int):
        self._db, self._mail_id, self._last = db, mail_id, last
        self._next, self._buf = 1, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, into) -> int:
        while not self._buf and self._next <= self._last:
            last = min(self._next + READ_CHUNKS - 1, self._last)
            self._buf, self._next = memoryview(self._db._chunks(self._mail_id, self._next, last)), last + 1
        n = min(len(into), len(self._buf))
        into[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


def _blocks(source):
    """CHUNK-sized pieces of bytes or of a binary file object (read from where it is); at least
    one, so an empty message is one empty chunk."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        yield from (bytes(view[i:i + CHUNK]) for i in range(0, max(len(view), 1), CHUNK))
        return
    yield source.read(CHUNK)
    while block := source.read(CHUNK):
        yield block


class _RowsInsert:
    """INSERT INTO t (columns) VALUES (...), (...), ...: many rows in one statement, for
    SQLite, where an executemany steps the statement once per row and Python's sqlite3
    lets go of the GIL for each step (the SQL log's batches: ~2.5 thread switches per
    message in the milter, and SQLAlchemy's per-row parameter handling on top). Values go
    through the dialect's own bind processors (DateTime's storage format), so the rows are
    what conn.execute(insert(t), rows) stores; the statement text is built once per row
    count and column set. At most MAX_PARAMS values per statement (SQLite >= 3.32)."""

    MAX_PARAMS = 32766

    def __init__(self, table: Table, dialect):
        self.table, self.dialect = table, dialect
        self._processors: dict[str, object] = {}
        for column in table.columns:
            self._processors[column.name] = column.type.dialect_impl(dialect).bind_processor(dialect)
        self._texts: dict[tuple, str] = {}

    def _text(self, names: tuple[str, ...], count: int) -> str:
        key = (names, count)
        text = self._texts.get(key)
        if text is None:
            quote = self.dialect.identifier_preparer.quote
            one = "(" + ", ".join("?" * len(names)) + ")"
            text = (f"INSERT INTO {quote(self.table.name)} ({', '.join(quote(n) for n in names)}) VALUES "
                    + ", ".join([one] * count))
            if len(self._texts) > 64:
                self._texts.clear()
            self._texts[key] = text
        return text

    def execute(self, conn, rows: list[dict]) -> None:
        names = tuple(rows[0])
        processors = [(i, self._processors[n]) for i, n in enumerate(names) if self._processors[n] is not None]
        step = max(1, self.MAX_PARAMS // len(names))
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            values = []
            for row in chunk:
                if tuple(row) != names:
                    raise ValueError(f"{self.table.name}: rows of one batch with different columns")
                one = list(row.values())
                for i, process in processors:
                    if one[i] is not None:
                        one[i] = process(one[i])
                values.extend(one)
            conn.exec_driver_sql(self._text(names, len(chunk)), tuple(values))


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None            # we say BEGIN ourselves (_sqlite_begin)
    cursor = dbapi_conn.cursor()
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", f"PRAGMA busy_timeout={SQLITE_BUSY_MS}"):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(conn) -> None:
    """A writer takes the write lock at BEGIN (waiting up to busy_timeout for it), not at its
    first write, where an older read snapshot would make it fail at once; a reader in WAL
    mode blocks no one, so `pymavis quarantine list` never delays the milter's puts."""
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("pymavis_read_only") else "BEGIN IMMEDIATE")


def _entry(m, rcpts: list) -> QEntry:
    # MySQL strips a CHAR's trailing spaces on reading: its rs ' ' (not released) comes back as ''.
    time_iso = m.time_iso if m.time_iso.tzinfo else m.time_iso.replace(tzinfo=timezone.utc)   # SQLite, MySQL: naive
    return QEntry(
        mail_id=_text_id(m.mail_id), secret_id=_text_id(m.secret_id or b""), log_id=m.am_id, time=time_iso.timestamp(),
        sender=bytes(m.sender_email or b"").decode("utf-8", "surrogateescape"), size=m.size, content=m.content,
        rcpts=tuple(QRcpt(
            bytes(r.email).decode("utf-8", "surrogateescape"), r.is_local == "Y", r.content, r.ds,
            quar_type=r.kept_as or "", quar_loc=r.quar_loc or "", category=r.category or "", reason=r.reason or "",
            smtp_resp=r.smtp_resp or "", bspam_level=_level(r.bspam_level), rs=r.rs or " ",
            released_time=r.released_time, released_by=r.released_by or "", release_resp=r.release_resp or "")
            for r in rcpts),
        policy=m.policy or "", client_addr=m.client_addr or "", originating=m.originating == "Y",
        queue_id=next((r.queue_id for r in rcpts if r.kept_as), ""), spam_level=_level(m.spam_level),
        message_id=m.message_id or "", from_addr=m.from_addr or "", subject=m.subject or "",
        dsn_sent=m.dsn_sent, host=m.host)
