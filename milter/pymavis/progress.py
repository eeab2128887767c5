"""What each milter connection is doing now, for `pymavis status` (amavisd-nanny's view).

The adapter opens an Entry per connection and appends a letter to its trail at each step;
the pipeline names the check it enters (`entering`), and a worker thread checking a message
passes that on to the message's entry (`checking`). The letters are amavisd-nanny's:

  A accepted   m MAIL FROM   r RCPT   d DATA   = checking started   D decoding
  V virus scan   S spam check (the wait for spamd)   Q quarantine and notices   . done

A letter repeated in a row is kept once (a hundred RCPTs are one `r`); an abort (RSET, or a
message refused before its end) ends the message without `.`. Only the newest TRAIL_MAX
letters are kept. `snapshot` gives each entry's age (since the connection opened), its busy
time (since MAIL FROM of the message not yet answered; None when idle) and the time since
its last letter.

Outside the milter (`pymavis scan`, tests) no entry is set and `entering` does nothing.
A worker still running after the scan deadline answered TEMPFAIL marks nothing any more:
its marks carry the message's serial number.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

# Letters kept per connection: about eight messages' worth, and one status line.
TRAIL_MAX = 60

QUARANTINE = "quarantine"   # what the pipeline names before keeping blocked copies and notices

_thread = threading.local()   # .mark: the letter sink of the message this thread checks
_LETTERS: dict = {}


def _letter(stage) -> str | None:
    if not _LETTERS:
        from .checks import content, spam, virus
        _LETTERS.update({content.check: "D", virus.check: "V", spam.check: "S", QUARANTINE: "Q"})
    return _LETTERS.get(stage)


def entering(stage) -> None:
    """The pipeline enters `stage` (a check function, or QUARANTINE) for this thread's message."""
    mark = getattr(_thread, "mark", None)
    if mark is not None:
        letter = _letter(stage)
        if letter is not None:
            mark(letter)


@dataclass
class Entry:
    conn_id: str
    client: str
    opened: float = field(default_factory=time.monotonic)
    log_id: str = ""
    mail_id: str = ""
    queue_id: str = ""
    trail: str = "A"
    changed: float = field(default_factory=time.monotonic)
    busy_since: float | None = None   # MAIL FROM of the message not yet answered
    serial: int = 0                    # messages begun on this connection


class Board:
    """The entries of the open connections (thread-safe: libmilter's threads and our workers)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}

    def open(self, conn_id: str, client: str | None) -> Entry:
        entry = Entry(conn_id, client or "", log_id=conn_id)
        with self._lock:
            self._entries[conn_id] = entry
        return entry

    def close(self, entry: Entry | None) -> None:
        if entry is not None:
            with self._lock:
                self._entries.pop(entry.conn_id, None)

    def _add(self, entry: Entry, letter: str) -> None:
        if not entry.trail.endswith(letter):
            entry.trail = (entry.trail + letter)[-TRAIL_MAX:]
        entry.changed = time.monotonic()

    def begin(self, entry: Entry | None, log_id: str, mail_id: str) -> int:
        """MAIL FROM: a new message (its serial number)."""
        if entry is None:
            return 0
        with self._lock:
            entry.serial += 1
            entry.log_id, entry.mail_id, entry.queue_id = log_id, mail_id, ""
            entry.busy_since = time.monotonic()
            self._add(entry, "m")
            return entry.serial

    def mark(self, entry: Entry | None, letter: str, serial: int | None = None, *, queue_id: str | None = None) -> None:
        """One step of the current message; ignored when `serial` names an earlier one or
        the message was answered."""
        if entry is None:
            return
        with self._lock:
            if serial is not None and (serial != entry.serial or entry.busy_since is None):
                return
            if queue_id:
                entry.queue_id = queue_id
            self._add(entry, letter)

    def done(self, entry: Entry | None) -> None:
        """The message was answered."""
        if entry is None:
            return
        with self._lock:
            entry.busy_since = None
            self._add(entry, ".")

    def idle(self, entry: Entry | None) -> None:
        """The message was aborted (no letter: the next `m` or the closed connection shows it)."""
        if entry is not None:
            with self._lock:
                entry.busy_since = None

    @contextlib.contextmanager
    def checking(self, entry: Entry | None, serial: int):
        """Inside: this (worker) thread's `entering` marks this message; `=` first."""
        self.mark(entry, "=", serial)
        before = getattr(_thread, "mark", None)
        _thread.mark = (lambda letter: self.mark(entry, letter, serial)) if entry is not None else None
        try:
            yield
        finally:
            _thread.mark = before

    def snapshot(self) -> list[dict]:
        """Each open connection, oldest first, with ages in seconds."""
        now = time.monotonic()
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.opened)
            return [{"log_id": e.log_id, "conn_id": e.conn_id, "client": e.client, "mail_id": e.mail_id,
                     "queue_id": e.queue_id, "trail": e.trail, "age_s": round(now - e.opened, 3),
                     "busy_s": round(now - e.busy_since, 3) if e.busy_since is not None else None,
                     "state_s": round(now - e.changed, 3)}
                    for e in entries]
