"""The header section of a raw message as bytes: split it into fields, drop fields, and
apply our header edits to a copy of the message (for a copy re-submitted with other edits
than the ones the MTA applies, see resubmit.py).

Fields keep their exact bytes (continuation lines included); nothing is re-folded or
re-encoded. A header section without an empty line after it is all header. Line ends are
CRLF as the milter hands them to us; a bare LF is accepted when reading.

Limits: none of its own; callers pass a message they already hold in memory.
"""

from __future__ import annotations

from collections.abc import Iterable


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header section without its terminating empty line, the rest from the empty line on)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end >= 0:
            return raw[: end + len(sep) // 2], raw[end + len(sep) // 2:]
    return raw, b""


def fields(head: bytes) -> list[tuple[str, bytes]]:
    """Each header field as (lower-case name, its raw bytes with continuation lines)."""
    out: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line)
        else:
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
            out.append((name, line))
    return out


def without(raw: bytes, drop) -> bytes:
    """The message without the header fields whose lower-case name `drop(name)` is true for."""
    head, rest = split(raw)
    kept = [f for name, f in fields(head) if not drop(name)]
    return b"".join(kept) + rest


def _line(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def apply_edits(raw: bytes, edits: Iterable) -> bytes:
    """The message as the MTA would deliver it after these outcome.HeaderEdit values: insert
    puts a field at the top, add at the end of the header section, change replaces the
    index-th field of that name (1-based) or deletes it when the value is empty."""
    head, rest = split(raw)
    current = fields(head)
    top: list[bytes] = []
    for edit in edits:
        if edit.op == "insert":
            top.insert(0, _line(edit.name, edit.value))
        elif edit.op == "add":
            current.append((edit.name.lower(), _line(edit.name, edit.value)))
        elif edit.op == "change":
            seen = 0
            for i, (name, _) in enumerate(current):
                if name == edit.name.lower():
                    seen += 1
                    if seen == edit.index:
                        if edit.value:
                            current[i] = (name, _line(edit.name, edit.value))
                        else:
                            del current[i]
                        break
            else:
                if edit.value:   # libmilter adds a field that is not there
                    current.append((edit.name.lower(), _line(edit.name, edit.value)))
        else:
            raise ValueError(f"unknown header edit {edit.op!r}")
    if not rest:
        rest = b"\r\n"
    return b"".join(top) + b"".join(f for _, f in current) + rest
