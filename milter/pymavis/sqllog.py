"""SQL logging: every message in amavisd-new's `msgs`, `msgrcpt` and `maddr` tables
(sqlstore.py), so amavis's web front ends and reports read pymavis's traffic.

Off the hot path: the pipeline hands the finished entry to a bounded queue and one writer
thread commits what has queued up in LINGER_S, up to BATCH entries in one transaction
(one commit and one fsync for many messages: measured 1.2-1.6 ms of CPU for a transaction
of one row, 0.1 ms per row in batches; an entry the database refuses is found by writing them one
at a time, logged and dropped). When the database is away the entries wait (up to `queue_max`) and are
written once it is back; the log says how many wait, and how many were dropped when the
queue was full (a gap in the log, never a delay or a refusal of mail).

A bank with `sql_log_failure_is_fatal: true` wants the row written before the answer
instead: `write_now` commits in the pipeline's worker and a failure answers TEMPFAIL.

A message that was kept (quarantined) already has its rows, written by keep.py before
the answer; it is not written again here.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time

from . import keep, sqlstore
from .log import log

BATCH = 200      # entries written in one transaction at most
LINGER_S = 0.25  # how long the writer lets a batch gather (a transaction costs ~1.2 ms of CPU, a row ~0.1)


class SqlLog:
    def __init__(self, url: str, partition_tag: int = 0, *, queue_max: int = 10000, retry_s: float = 10.0):
        self.url, self.partition_tag = url, partition_tag
        self.queue_max, self.retry_s = queue_max, retry_s
        self._pending: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._db: sqlstore.Database | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.written = self.dropped = self.failures = 0
        self._down_since: float | None = None

    @property
    def db(self) -> sqlstore.Database:
        if self._db is None:
            db = sqlstore.Database(self.url, self.partition_tag)
            db.create()
            self._db = db
        return self._db

    def submit(self, entry: sqlstore.QEntry) -> bool:
        """Queue `entry` for writing; False (counted, logged) when the queue is full."""
        with self._cond:
            if len(self._pending) >= self.queue_max:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("SQL log: queue full (%d waiting), %d message(s) not logged so far",
                                len(self._pending), self.dropped)
                return False
            self._pending.append(entry)
            if len(self._pending) in (1, BATCH):   # a batch begins or is full: wake the writer, else let it linger
                self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pymavis-sqllog", daemon=True)
                self._thread.start()
        return True

    def write_now(self, entry: sqlstore.QEntry, *, replace: bool = False) -> None:
        """Commit `entry` (`replace`: instead of the rows of its mail_id) before returning.
        Raises sqlstore.StoreError."""
        if replace:
            self.db.replace(entry)
        else:
            self.db.put(entry)
        with self._cond:
            self.written += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                linger = time.monotonic() + LINGER_S   # let a batch gather: one transaction for many
                while len(self._pending) < BATCH and not self._stopping and (left := linger - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch = list(itertools.islice(self._pending, BATCH))
            try:
                self.db.put_many(batch)      # one commit for what queued up meanwhile
            except sqlstore.StoreError:      # away, or it refuses one: go one at a time
                if self._one(batch[0]) is None:
                    with self._cond:
                        self._cond.wait(self.retry_s)
                        if self._stopping:
                            return
                continue
            self._done(len(batch))

    def _one(self, entry) -> bool | None:
        """Write the first pending entry alone: True written, False refused (dropped and
        logged), None the database is away (it stays first)."""
        try:
            self.db.put(entry)
        except sqlstore.StoreError as exc:
            if "already" in str(exc):   # written before (a retry after a lost commit reply)
                self._done(1)
                return True
            if self._reachable():       # the database answers, this entry is what it refuses
                log.error("SQL log: mail_id %s not logged: %s", entry.mail_id, exc)
                self._done(1, written=False)
                return False
            self._outage(exc)
            return None
        self._done(1)
        return True

    def _reachable(self) -> bool:
        try:
            self.db.entries(limit=1)
        except sqlstore.StoreError:
            return False
        return True

    def _done(self, n: int, written: bool = True) -> None:
        with self._cond:
            for _ in range(n):
                self._pending.popleft()
            self.written += n if written else 0
            if self._down_since is not None:
                log.warning("SQL log: database back after %.0f s; %d message(s) still waiting",
                            time.time() - self._down_since, len(self._pending))
                self._down_since = None
            self._cond.notify_all()

    def _outage(self, exc) -> None:
        with self._cond:
            self.failures += 1
            if self._down_since is None:
                self._down_since = time.time()
                log.error("SQL log: cannot write (%s); %d message(s) wait for the database", exc,
                          len(self._pending))

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued entry is written (tests, shutdown); True if it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            if self._pending:
                log.warning("SQL log: stopping with %d message(s) not written", len(self._pending))


_LOGS: dict[tuple, SqlLog] = {}
_LOCK = threading.Lock()


def sql_log(config) -> SqlLog | None:
    """The SQL log of this configuration, or None when `sql_log.enabled` is false."""
    settings = config["sql_log"]
    if not settings["enabled"]:
        return None
    url = settings["database"] or config["quarantine"]["database"] or keep.database_url(config["state_dir"])
    key = (url, config["quarantine"]["partition_tag"], settings["queue_max"], settings["retry_s"])
    with _LOCK:
        if key not in _LOGS:
            _LOGS[key] = SqlLog(url, key[1], queue_max=settings["queue_max"], retry_s=settings["retry_s"])
        return _LOGS[key]


def stop_all(timeout: float = 5.0) -> None:
    with _LOCK:
        logs = list(_LOGS.values())
        _LOGS.clear()
    for one in logs:
        one.stop(timeout)


def entry_for(config, policy, txn, outcome, spam_view=None) -> sqlstore.QEntry:
    return keep.index_entry(txn, policy, outcome, {}, {}, spam_view, config.myhostname)
