"""The decoded bytes of a walk's parts, kept for a scanner that scans them one by one.

    contents = Contents(tmp_dir)
    result = walk(raw, limits, type_map, keep=contents.keep)
    for path, size in contents:            # in walk order: p001, p002, ...
        client.instream(contents.open(path))
    contents.close()

The walk (decode/__init__.py) normally keeps no decoded payload; given `keep`, it hands
over the bytes of every part that has content of its own (leaves, archives and other
containers with their own bytes, texts that hold uuencoded blocks, transfer-encoded nested
messages, a multipart's preamble and epilogue), once each, in walk order. The virus check's
method `parts` (checks/virus.py) streams them to clamd.

Limits, with their reason: up to MEMORY_BYTES in memory, then an unlinked temp file in
`tmp_dir` (the spool's directory): an ordinary message's parts fit in memory, while a
message that decodes up to the walk's expansion quota (Limits.max_expanded_bytes, 300 MiB)
does not sit in memory. What is kept is bounded by that quota: the walk stops at it.

Failures: keep() never raises (an exception would end the walk and hide the parts after
it): an OSError while storing (disk full) stops keeping and sets `failed`; the caller must
then not rely on the contents (the virus check scans the whole message instead).
open() raises KeyError for a path never kept. Not thread-safe: one message, one thread.

Configuration keys: none read here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

# Held in memory before the temp file: ordinary mail (the median is ~50 KB) never touches
# the disk; only the few messages decoding at once (checks.DecodeGate) hold this much.
MEMORY_BYTES = 1024 * 1024


class Contents:
    """(path, offset, size) of each kept part, their bytes in one spooled temp file."""

    def __init__(self, tmp_dir: str | None = None, memory_bytes: int = MEMORY_BYTES):
        self._file = tempfile.SpooledTemporaryFile(max_size=memory_bytes, dir=tmp_dir, prefix="pymavis-parts-")
        self._index: dict[str, tuple[int, int]] = {}
        self._end = 0
        self.failed: str | None = None   # why keeping stopped, if it did

    def keep(self, path: str, data: bytes) -> None:
        """Store `data` as the content of part `path` (the walk's hook). Never raises."""
        if not data or self.failed is not None or path in self._index:
            return   # an empty part has nothing to scan
        try:
            self._file.seek(self._end)
            self._file.write(data)
        except OSError as exc:
            self.failed = f"storing part {path} ({len(data)} bytes) failed: {type(exc).__name__}: {exc}"
            return
        self._index[path] = (self._end, len(data))
        self._end += len(data)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """(path, size) of each kept part, in walk order."""
        return ((path, size) for path, (_, size) in self._index.items())

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size(self) -> int:
        """Bytes kept, all parts together."""
        return self._end

    def open(self, path: str) -> "_Slice":
        """The part's bytes as a file object (read(n) until b"")."""
        offset, size = self._index[path]
        return _Slice(self._file, offset, size)

    def read(self, path: str) -> bytes:
        return self.open(path).read()

    def close(self) -> None:
        self._file.close()


class _Slice:
    """read() over one part of the shared file; seeks before every read, so several slices
    (read one after the other) do not disturb each other."""

    def __init__(self, file, offset: int, size: int):
        self._file, self._pos, self._end = file, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        self._file.seek(self._pos)
        data = self._file.read(n)
        self._pos += len(data)
        return data
