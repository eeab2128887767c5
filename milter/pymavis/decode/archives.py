"""Archive members as child parts, read with libarchive-c's memory_reader only.

`members(data, short_type, name, ...)` yields, one at a time, what an archive or a single
compressed file holds: `Member(name, content)` or `Issue(minor, detail)`. Member names
are only ever data: nothing is written to disk, so `../`, absolute paths and symlinks
are harmless here.

Only `libarchive.memory_reader`: its stream and custom readers call back into Python
from C and segfault on libmilter's threads (DEPENDENCIES.md, pymilter notes).

Limits, counted while iterating `entry.get_blocks()` (declared sizes can lie):
- a member may expand to at most `max_ratio` times the size of the archive holding it
  (XXX: libarchive does not tell a member's compressed size; the archive's size bounds
  it from above, so the ratio we apply is the lenient one);
- all members together may not exceed `room()` bytes, the walk's remaining quota.
A breach ends this archive with an Issue("over limits"); past the quota the Issue says
it `stops` the walk's "bytes" limit. An encrypted member yields its name with no content
and Issue("encrypted"); so does, with Issue("error"), a member libarchive can list but
not decompress (ARCHIVE_FAILED: Deflate64 and Implode zip members in libarchive 3.6), and
the archive goes on. A damaged archive (ARCHIVE_FATAL) ends with Issue("error", the
libarchive message); the members read before it stay. A zip whose central directory
names a member its local headers do not (a name disguised for the reader that goes by
the local headers, as libarchive's streaming reader does) gives Issue("ambiguous") and
that name as a member without content, so banned rules still see it.

`Member` and `Issue` are what every container decoder yields (binhex.py, tnef.py too).
"""

from __future__ import annotations

import ctypes
import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libarchive
from libarchive import ffi

# Short types (types.py) libarchive reads here: Debian's libarchive 3.6 (no ARJ, no
# solid RAR4, no encrypted RAR5 headers).
ARCHIVES = {"zip", "7z", "rar", "cab", "lha", "cpio", "iso", "xar", "ar", "deb", "tar", "rpm", "jar"}
# Single compressed streams: a compressed tar is read as the tar, anything else as 'raw'.
COMPRESSED = {"gz", "bz2", "xz", "lzma", "zst", "lz4", "lz", "Z"}

_entry_is_encrypted = ffi.ffi("entry_is_encrypted", [ffi.c_archive_entry_p], ctypes.c_int)
# libarchive's status for "this entry failed, the archive can go on" (ARCHIVE_FATAL is -30)
ARCHIVE_FAILED = -25


@dataclass(frozen=True)
class Member:
    name: str | None
    content: bytes | None  # None: not readable (encrypted)


@dataclass(frozen=True)
class Issue:
    minor: str  # "encrypted" | "over limits" | "error"
    detail: str
    stops: str | None = None  # a walk-wide limit ran out ("bytes", "deadline"): the whole walk stops


def readable(short_type: str | None) -> bool:
    return short_type in ARCHIVES or short_type in COMPRESSED


def members(
    data: bytes, short_type: str, name: str | None, max_ratio: int, room: Callable[[], int]
) -> Iterator[Member | Issue]:
    """What `data` holds, lazily; see the module header for limits and issues."""
    if short_type in COMPRESSED:
        # a .tar.gz is a tar; anything else fails to open as an archive and is read 'raw'
        yielded = False
        try:
            for item in _read(data, "all", max_ratio, room, None):
                yielded = True
                yield item
            return
        except libarchive.ArchiveError as exc:
            if yielded:
                yield Issue("error", f"archive unreadable: {_message(exc)}")
                return
        yield from _guarded(_read(data, "raw", max_ratio, room, _stem(name)))
        return
    items = _guarded(_read(data, "all", max_ratio, room, None))
    yield from _central_directory_agrees(data, items) if short_type in ("zip", "jar") else items


def _central_directory_agrees(data: bytes, items: Iterator[Member | Issue]) -> Iterator[Member | Issue]:
    """libarchive reads a zip front to back by its local headers; Windows, and most unzip
    tools, list it by its central directory. A name only the central directory has (a local
    header saying `a.txt` where Explorer shows `a.vbs`) is a disguise: it becomes a part of its
    own, with no content, so the banned rules see it, and the zip is ambiguous."""
    local, complete = set(), True
    for item in items:
        if isinstance(item, Member):
            local.add(item.name)
        elif item.minor in ("over limits", "error"):
            complete = False
        yield item
    if not complete:
        return
    hidden = [name for name in _central_names(data) if name not in local]
    if hidden:
        shown = ", ".join(hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        yield Issue("ambiguous", f"{shown}: in the zip's central directory, not in its local headers")
        yield from (Member(name, None) for name in hidden)


def _central_names(data: bytes) -> list[str]:
    """The member names of a zip's central directory (Python's zipfile reads only that here);
    [] when it cannot be read: libarchive has said what it could."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except Exception:  # zipfile raises many kinds on damaged input; the names are a cross-check only
        return []
    names = []
    for info in infos:
        if info.is_dir():
            continue
        raw = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "surrogateescape")
        names.append(_text(raw))
    return names


def _guarded(items: Iterator[Member | Issue]) -> Iterator[Member | Issue]:
    try:
        yield from items
    except libarchive.ArchiveError as exc:
        yield Issue("error", f"archive unreadable: {_message(exc)}")


def _read(data: bytes, fmt: str, max_ratio: int, room: Callable[[], int], raw_name: str | None):
    cap = max_ratio * max(len(data), 1)
    with libarchive.memory_reader(data, format_name=fmt, filter_name="all") as archive:
        for entry in archive:
            if entry.isdir:
                continue
            member_name = raw_name if fmt == "raw" else _text(entry.pathname)
            if _entry_is_encrypted(entry._entry_p):
                yield Issue("encrypted", f"{member_name}: encrypted archive member")
                yield Member(member_name, None)
                continue
            try:
                content = _content(entry, member_name, min(cap, room()), cap, max_ratio)
            except libarchive.ArchiveError as exc:
                if exc.retcode != ARCHIVE_FAILED:
                    raise
                yield Issue("error", f"archive unreadable: {member_name}: {_message(exc)}")
                yield Member(member_name, None)
                continue
            if isinstance(content, Issue):
                yield content
                return
            yield Member(member_name, content)


def _content(entry, member_name: str | None, limit: int, cap: int, max_ratio: int) -> bytes | Issue:
    """One member's bytes, or the Issue that ends the archive when it grows past `limit`."""
    chunks, size = [], 0
    for block in entry.get_blocks():
        size += len(block)
        if size > limit:
            if limit == cap:
                return Issue("over limits", f"{member_name}: expands > {max_ratio}x the archive "
                             f"({size} > {cap} bytes), archive not read further")
            return Issue("over limits", f"{member_name}: expanded bytes > quota left ({limit} bytes)", "bytes")
        chunks.append(block)
    return b"".join(chunks)


def _text(name: str | bytes | None) -> str | None:
    """libarchive-c gives bytes for a name it cannot decode: a zip without its UTF-8 flag
    holds the sender's DOS code page, which cp437 at least maps byte for byte."""
    if isinstance(name, bytes):
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            return name.decode("cp437")
    return name


def _message(exc: libarchive.ArchiveError) -> str:
    """libarchive's own words, without the pointer and codes libarchive-c appends."""
    return " ".join(str(getattr(exc, "msg", None) or exc).split())


def _stem(name: str | None) -> str | None:
    """The name of what a single compressed file holds: "a.txt.gz" -> "a.txt"."""
    if not name or "." not in name:
        return None
    return name.rsplit(".", 1)[0]
