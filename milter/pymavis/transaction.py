"""One SMTP transaction as the milter saw it: connection facts, macros, envelope,
headers and the message bytes in a bounded spool.

The adapter fills a `TransactionBuilder` from the callbacks (it only collects) and freezes
it into a `Transaction` at end-of-message; everything after that reads the frozen value.

Spool: the message (header section as received plus the body) is kept in memory up to
`milter.spool_memory_bytes` (100 KiB by default), then in an unlinked temp file under
`state_dir/tmp`. Once the running size passes every recipient's size limit, further body
bytes are counted but not stored (the message is OVERSIZED for all of them anyway).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property

def new_mail_id() -> str:
    """12 URL-safe characters (72 random bits), as amavis's mail_id; never a leading '-' (it
    would read as an option on a command line: `pymavis release -abc`)."""
    while (mail_id := secrets.token_urlsafe(9)).startswith("-"):
        pass
    return mail_id


def new_secret_id() -> str:
    return secrets.token_urlsafe(9)


def strip_brackets(addr: str) -> str:
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    return addr


class Spool:
    """Message bytes: memory first, then a temp file. Not thread-safe; one writer."""

    def __init__(self, memory_limit: int, tmp_dir: str | None):
        self._file = tempfile.SpooledTemporaryFile(max_size=memory_limit, dir=tmp_dir, prefix="pymavis-")
        self.tmp_dir = tmp_dir  # also for what is derived from the message (decode/contents.py)
        self.size = 0          # every byte offered, stored or not
        self.stored = 0        # bytes actually kept
        self.truncated = False  # content checks read this as UNCHECKED, never as clean
        self.body_md5 = None    # hashlib MD5 of the body bytes stored, when asked for (TransactionBuilder)

    def write(self, data: bytes, *, store: bool = True):
        self.size += len(data)
        if store and not self.truncated:
            self._file.write(data)
            self.stored += len(data)
        else:
            self.truncated = True

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self._file, "_rolled", False))

    def read(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def reader(self):
        """The spool as a file object positioned at its start (for streaming it out)."""
        self._file.seek(0)
        return self._file

    def read_head(self, max_bytes: int = 1 << 20) -> bytes:
        """The bytes up to and including the first empty line (the header section), or the
        first `max_bytes` when there is none that early."""
        self._file.seek(0)
        head = b""
        while len(head) < max_bytes:
            chunk = self._file.read(min(64 * 1024, max_bytes - len(head)))
            if not chunk:
                break
            searched_from = max(0, len(head) - 3)
            head += chunk
            ends = [end + len(sep) for sep in (b"\r\n\r\n", b"\n\n")
                    if (end := head.find(sep, searched_from)) >= 0]
            if ends:
                return head[: min(ends)]
        return head

    def fileno(self) -> int:
        """A real file descriptor (rolls the spool to disk if needed)."""
        self._file.rollover()
        self._file.flush()
        return self._file.fileno()

    def close(self):
        self._file.close()


@dataclass(frozen=True)
class Rcpt:
    raw: str              # as given in RCPT TO, with brackets (what delrcpt wants)
    addr: str             # without brackets
    params: tuple = ()


@dataclass(frozen=True)
class Connection:
    conn_id: str
    client_ip: str | None
    client_port: int | None
    client_name: str | None
    helo: str | None
    macros: tuple         # (name, value) pairs seen at connect
    started: float


@dataclass(frozen=True)
class Transaction:
    conn: Connection
    mail_id: str
    secret_id: str
    queue_id: str | None
    mail_from: str                 # without brackets; "" is the null sender
    mail_params: tuple
    rcpts: tuple[Rcpt, ...]
    headers: tuple                 # (name, value) as received
    spool: Spool = field(compare=False)
    size: int = 0
    declared_size: int | None = None
    macros: tuple = ()             # (name, value) from MAIL and end-of-message
    started: float = 0.0           # time of MAIL FROM
    data_done: float = 0.0         # time end-of-message arrived

    def macro(self, name: str) -> str | None:
        return dict(self.macros).get(name) or dict(self.conn.macros).get(name)

    @cached_property
    def header_index(self) -> dict[str, list[str]]:
        """The header values by lower-cased field name, in order (built once, for the checks,
        the SQL log and the JSON event alike)."""
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            index.setdefault(key.lower(), []).append(value)
        return index

    def header(self, name: str) -> str | None:
        """The first field of this name, stripped; None when there is none."""
        values = self.header_index.get(name.lower())
        return values[0].strip() if values else None


class TransactionBuilder:
    """Mutable collector owned by one milter connection."""

    def __init__(self, conn: Connection, mail_from: str, params: tuple, macros: dict,
                 spool_memory: int, tmp_dir: str | None, *, digest_body: bool = False):
        self.conn = conn
        self.mail_id = new_mail_id()
        self.secret_id = new_secret_id()
        self.mail_from = strip_brackets(mail_from)
        self.mail_params = params
        self.macros = dict(macros)
        self.rcpts: list[Rcpt] = []
        self.headers: list[tuple[str, str]] = []
        self.spool = Spool(spool_memory, tmp_dir)
        if digest_body:   # the JSON event's digest_body, hashed as the body arrives (no second read)
            self.spool.body_md5 = hashlib.md5(usedforsecurity=False)
        self.started = time.monotonic()
        self.declared_size = _size_param(params)
        self.store_limit: int | None = None   # stop storing past this many bytes (None: no cap)
        self._limits: list[int] = []          # each recipient's message_size_limit
        self.failed: str | None = None        # an error seen in a no-reply callback
        self.fingerprint: tuple | None = None  # the first recipient's (split_recipients_at_rcpt)
        self.headers_done = False

    def add_rcpt(self, rcpt: Rcpt, size_limit: int):
        """A recipient and its message_size_limit (0: none). Past every recipient's limit the
        message is OVERSIZED for all of them, so further bytes are counted, not stored."""
        self.rcpts.append(rcpt)
        self._limits.append(size_limit)
        self.store_limit = max(self._limits) if all(self._limits) else None

    def add_header(self, name: str, value: str, raw: bytes):
        self.headers.append((name, value))
        self.spool.write(raw, store=self._may_store(len(raw)))

    def end_of_headers(self, eol: bytes = b"\r\n"):
        self.headers_done = True
        self.spool.write(eol, store=self._may_store(len(eol)))

    def add_body(self, chunk: bytes):
        store = self._may_store(len(chunk))
        self.spool.write(chunk, store=store)
        if store and self.spool.body_md5 is not None:
            self.spool.body_md5.update(chunk)

    def _may_store(self, n: int) -> bool:
        return self.store_limit is None or self.spool.size + n <= self.store_limit

    def freeze(self, queue_id: str | None, eom_macros: dict) -> Transaction:
        macros = dict(self.macros)
        macros.update({k: v for k, v in eom_macros.items() if v is not None})
        return Transaction(
            conn=self.conn, mail_id=self.mail_id, secret_id=self.secret_id, queue_id=queue_id,
            mail_from=self.mail_from, mail_params=tuple(self.mail_params), rcpts=tuple(self.rcpts),
            headers=tuple(self.headers), spool=self.spool, size=self.spool.size,
            declared_size=self.declared_size, macros=tuple(sorted(macros.items())),
            started=self.started, data_done=time.monotonic(),
        )

    def close(self):
        self.spool.close()


def _size_param(params) -> int | None:
    for p in params:
        key, _, value = str(p).partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def tmp_dir_for(state_dir: str) -> str | None:
    path = os.path.join(state_dir, "tmp")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None   # fall back to the system temp dir; logged by the caller
    return path
