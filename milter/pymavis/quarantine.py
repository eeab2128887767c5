"""The local file quarantine: a held message's original bytes and a small metadata record,
durable before the milter answers.

Layout under the store's root (amavisd-new's `$QUARANTINEDIR` with
`$quarantine_subdir_levels`): a message `mail_id` of category `virus` lives at

    ROOT/<mail_id[0]>/virus-<mail_id>          the original bytes as the MTA gave them
    ROOT/<mail_id[0]>/virus-<mail_id>.gz       the same, with `gzip: true`
    ROOT/<mail_id[0]>/<mail_id>.json           the record: category, reason, sender,
                                               recipients, size, time, queue id, secret id

with one directory level per character of `subdir_levels` (0: everything in ROOT). The name
prefix is amavis's per category (`virus-`, `banned-`, `spam-`, `badh-`, `unchecked-`,
`clean-`).

Durability: each file is written under ROOT/tmp/ (the same file system), flushed, fsynced,
renamed into place, and the directory fsynced; the message first, its record last. A
message without a record is an interrupted write (`orphans()` names it; nothing was
answered for it, the MTA still has the mail). Any failure raises QuarantineError naming the
path: the caller answers TEMPFAIL, the message stays with the MTA.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHUNK = 64 * 1024
PREFIX = {"virus": "virus", "banned": "banned", "spam": "spam", "spammy": "spam",
          "bad-header": "badh", "unchecked": "unchecked", "clean": "clean"}


class QuarantineError(Exception):
    """A quarantine operation failed; the message names the path and the reason."""


@dataclass(frozen=True)
class Record:
    mail_id: str
    secret_id: str
    category: str
    reason: str
    sender: str
    recipients: tuple[str, ...]
    size: int
    time: float
    queue_id: str = ""
    location: str = ""                      # the message file, relative to the root
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Record":
        try:
            data = json.loads(text)
            data["recipients"] = tuple(data["recipients"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise QuarantineError(f"{where}: corrupt quarantine record: {exc}") from None


def durable_write(tmp: Path, final: Path, source, compress: bool = False) -> None:
    """Write `source` (bytes, or a binary file object read from where it is) to `final`
    durably: into `tmp` (same file system, must not exist), flushed, fsynced, renamed, and
    the directory fsynced. On failure `tmp` is removed and the OSError raised. Also the
    notification outbox's way of queueing a notice."""
    try:
        with open(tmp, "xb") as raw:
            out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
            if isinstance(source, bytes):
                out.write(source)
            else:
                shutil.copyfileobj(source, out, CHUNK)
            if compress:
                out.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_file(path: Path):
    """A quarantined message file's bytes (gunzipped if its name ends in .gz)."""
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise QuarantineError(f"{path}: {exc.strerror}") from None


class FileStore:
    def __init__(self, root: str | os.PathLike, subdir_levels: int = 1, compress: bool = False):
        if not 0 <= subdir_levels <= 3:
            raise ValueError(f"subdir_levels must be 0..3, not {subdir_levels}")
        self.root, self.subdir_levels, self.compress = Path(root), subdir_levels, compress

    def _dir(self, mail_id: str) -> Path:
        return self.root.joinpath(*mail_id[:self.subdir_levels])

    def _check_id(self, mail_id: str) -> None:
        if not mail_id or not all(c.isalnum() or c in "-_" for c in mail_id) or mail_id[0] == "-":
            raise QuarantineError(f"not a mail_id: {mail_id!r}")

    def put(self, record: Record, source) -> Record:
        """Store the bytes read from `source` (a binary file object, read from where it is)
        and `record`; returns the record with its location. Durable when it returns."""
        self._check_id(record.mail_id)
        prefix = PREFIX.get(record.category.lower(), "other")
        name = f"{prefix}-{record.mail_id}" + (".gz" if self.compress else "")
        final_dir = self._dir(record.mail_id)
        tmp_dir = self.root / "tmp"
        try:
            for d in (tmp_dir, final_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o750)
            durable_write(tmp_dir / f"{name}.{os.getpid()}", final_dir / name, source, self.compress)
            rec = Record(**{**asdict(record), "recipients": tuple(record.recipients),
                            "location": str((final_dir / name).relative_to(self.root))})
            durable_write(tmp_dir / f"{record.mail_id}.json.{os.getpid()}", final_dir / f"{record.mail_id}.json",
                          json.dumps(asdict(rec), sort_keys=True).encode())
        except OSError as exc:
            raise QuarantineError(f"quarantine {self.root}: {exc.strerror or exc}"
                                  + (f": {exc.filename}" if exc.filename else "")) from None
        return rec

    def record(self, mail_id: str) -> Record:
        self._check_id(mail_id)
        path = self._dir(mail_id) / f"{mail_id}.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message with mail_id {mail_id}") from None
        except OSError as exc:
            raise QuarantineError(f"{path}: {exc.strerror}") from None
        return Record.from_json(text, str(path))

    def open(self, record: Record):
        """The held message's original bytes as a binary file object (decompressed)."""
        return open_file(self.root / record.location)

    def records(self):
        """Every record, oldest first; a corrupt one raises QuarantineError naming it."""
        found = []
        for path in self._json_files():
            found.append(Record.from_json(path.read_text(), str(path)))
        return sorted(found, key=lambda r: (r.time, r.mail_id))

    def _json_files(self):
        pattern = "/".join(["*"] * self.subdir_levels + ["*.json"])
        return (p for p in self.root.glob(pattern) if p.parent.name != "tmp")

    def delete(self, record: Record) -> None:
        for path in (self.root / record.location, self._dir(record.mail_id) / f"{record.mail_id}.json"):
            path.unlink(missing_ok=True)

    def orphans(self, older_than_s: float = 3600.0) -> list[Path]:
        """Message files without a record and leftover temp files older than `older_than_s`:
        writes interrupted before the milter answered (the MTA kept those messages)."""
        cutoff = time.time() - older_than_s
        have = {r.location for r in self.records()}
        pattern = "/".join(["*"] * self.subdir_levels + ["*-*"])
        out = [p for p in self.root.glob(pattern)
               if p.suffix != ".json" and str(p.relative_to(self.root)) not in have and p.parent.name != "tmp"]
        out += list((self.root / "tmp").glob("*")) if (self.root / "tmp").is_dir() else []
        return sorted(p for p in out if p.stat().st_mtime < cutoff)
