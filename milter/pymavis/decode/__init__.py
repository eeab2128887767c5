"""Decoding: one bounded walk over a message's parts (amavisd-new's MIME-tools, @decoders and file(1)).

`walk(raw)` parses the message, visits every entity depth-first in document order and
returns a `Walk`: the parts, numbered p001, p002... in the order visited, each with its
depth path ("1/2/1"), declared name and type, libmagic's type and the decoded size, plus
the `Problem`s met on the way. Containers (multipart, message/rfc822) are parts too, so a
part's ancestors are the parts whose depth paths prefix its own. Leaves are looked into:
an rfc822 message in base64 or a part that libmagic calls mail is parsed as a nested
message (amavis's 'mail' decoder), and so is each message of a text that is an mbox
file (libmagic calls those plain text); uuencoded and BinHex blocks in text (binhex.py),
the attachments and bodies of TNEF (tnef.py, tnefparse) and the members of archives and
compressed files (archives.py, libarchive) become child parts.

Numbering differs from amavis in one way: amavis numbers leaves before their containers
(MIME-tools writes files first); we number in walk order (pre-order), so p001 is always
the message itself.

Limits (`Limits`, amavis's defaults): nesting depth, number of parts, total decoded
bytes (amavis's expansion quota, also handed to the decoders that expand: archives,
BinHex), a wall-clock deadline (looked at between parts, while parsing and while
tnefparse runs), and what libmagic sees. A breach stops that branch - for the global
ones (parts, bytes, time) the whole walk - records Problem("over limits", part, numbers)
and the walk returns what it has. Memory: the message, its parsed tree, and the decoded
content of the part being looked at (and of the leaves that hold it, for nested content);
decoded payloads are never collected by the walk. A caller that wants them (the virus
check's method `parts`) passes `keep`: it is called with (path, bytes) for every part that
has content of its own, once, in walk order, within the quota - leaves, containers with
bytes of their own (archives, TNEF, texts holding uuencoded or BinHex blocks, transfer-
encoded nested messages) and a multipart's preamble and epilogue; decode/contents.py
stores them. A part cut short by a limit is not handed over (the walk's problem says so).

What can fail, and how it shows: nothing raises out of `walk()`. Ambiguous MIME
(two Content-Type fields, two boundary parameters) is Problem("ambiguous"); an
exception while looking at one part is Problem("error", that part, "ExcClass: text") and
the walk goes on with the next part; any other exception ends the walk with
Problem("error", None, ...). Which of these make a message UNCHECKED is the checks'
business, not ours.

`Walk.decoders` says how often each decoder ran (amavisd-agent's OpsDecBy*, counted by
metrics.py): "mime" per message parsed (the message itself and each nested one), "mbox"
per mbox file split, "tnef" per TNEF stream, the archive's short type ("zip", "7z", "gz",
...: archives.ARCHIVES and COMPRESSED, a bounded set) per archive or compressed file
opened, and "uue" / "hqx" per text part in which uuencoded / BinHex blocks were found
(every text part is searched; the search alone is not counted). A dict increment per
container, summed by the caller after the walk.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message

from pymavis.decode import archives, binhex, mime, tnef
from pymavis.decode.types import DEFAULT_TYPE_MAP, TypeMap, detect

# How deep Python's parser may nest however low max_depth is (rspamd's max_nested).
# Its parser recurses about three frames per level (RecursionError near 330 levels),
# so 64 stays far from the interpreter's limit even from a deep call stack.
PARSE_DEPTH = 64

# Short types of text, where uuencoded and BinHex blocks and mbox files are looked for.
_TEXT = ("asc", "txt", "uue", "hqx")

__all__ = ["DEFAULT_TYPE_MAP", "Keep", "Limits", "Part", "Problem", "Walk", "detect", "walk"]

# walk()'s optional hook: (part path, the part's own decoded bytes).
Keep = Callable[[str, bytes], None]


@dataclass(frozen=True)
class Limits:
    """How far a walk may go. Defaults are amavisd-new's where amavis has one."""

    # amavis $MAXLEVELS (Debian's amavisd.conf: 14); the message itself is level 1.
    # Postfix allows 100 MIME levels, rspamd 64: 14 is far past any real mail.
    max_depth: int = 14
    # amavis $MAXFILES (Debian: 1500), counted over MIME entities, uuencoded blocks and
    # (later) archive members; rspamd stops at 10,000 MIME parts.
    max_parts: int = 1500
    # amavis's expansion quota for all decoded bytes of a message:
    #   max(MIN_EXPANSION_QUOTA, size * MIN_EXPANSION_FACTOR,
    #       min(MAX_EXPANSION_QUOTA, size * MAX_EXPANSION_FACTOR))
    # (RELEASE_NOTES 2.2.0; amavisd.conf-default gives the factors 5 and 500). We take
    # it as is: 500x the message, capped at 300 MiB, but never below 5x the message nor
    # below 100 KiB - so ordinary MIME decoding (which only shrinks) never trips it.
    min_expanded_bytes: int = 100 * 1024
    max_expanded_bytes: int = 300 * 1024 * 1024
    min_expansion_factor: int = 5
    expansion_factor: int = 500
    # Per archive member: its decompressed bytes / the bytes of the archive holding it
    # (libarchive does not tell a member's compressed size). Deflate cannot pass ~1032:1,
    # so this stops bzip2/xz/zstd bombs and nested layers early; a single deflate bomb
    # is stopped by the quota above.
    max_member_ratio: int = 1000
    # Wall time for one walk. Well below Postfix's milter_content_timeout (300 s) and
    # the scan deadline, leaving time for clamd and spamd after decoding.
    deadline_s: float = 10.0
    # What libmagic sees of each part: its rules look at the head of a file only, and
    # text classification costs 2-8 ms per 64 KiB (DEPENDENCIES.md).
    magic_bytes: int = 64 * 1024

    def quota(self, message_size: int) -> int:
        """amavis's expansion quota for a message of `message_size` bytes."""
        return max(
            self.min_expanded_bytes,
            message_size * self.min_expansion_factor,
            min(self.max_expanded_bytes, message_size * self.expansion_factor),
        )


@dataclass(frozen=True)
class Part:
    path: str  # "p001", numbered in walk order
    depth_path: str  # "1", "1/2", "1/2/1"
    name: str | None  # declared file name, decoded; control and bidi characters kept
    declared_type: str | None  # Content-Type as declared, lowercased, no parameters
    detected: str | None  # short type from libmagic's description ("exe-ms", "zip", ...)
    magic: str | None  # libmagic's description of the first Limits.magic_bytes
    size: int  # bytes decoded for this part (0 for multipart and plain message/rfc822)

    def part_path(self) -> str:
        """amavis's attribute form, absent fields left out: P=p003,L=1/2,M=...,T=zip,N=docs.zip"""
        fields = [f"P={self.path}", f"L={self.depth_path}"]
        if self.declared_type:
            fields.append(f"M={self.declared_type}")
        if self.detected:
            fields.append(f"T={self.detected}")
        if self.name:
            # one line whatever the name holds; bidi controls stay (rules look for them)
            fields.append("N=" + "".join(ch if ch >= " " and ch != "\x7f" else "?" for ch in self.name))
        return ",".join(fields)


@dataclass(frozen=True)
class Problem:
    minor: str  # "encrypted" | "over limits" | "ambiguous" | "error"
    part: str | None  # the part's path ("p003"), if the problem belongs to one
    detail: str  # for the log and the reply, with the numbers


@dataclass(frozen=True)
class Walk:
    parts: tuple[Part, ...]
    problems: tuple[Problem, ...]
    elapsed_ms: float
    decoders: tuple[tuple[str, int], ...] = ()  # (decoder, times it ran), sorted by name (module doc)


def walk(raw: bytes, limits: Limits = Limits(), type_map: TypeMap = DEFAULT_TYPE_MAP, *,
         keep: Keep | None = None) -> Walk:
    """Every part of `raw` within `limits`; each part's own bytes to `keep`, if given
    (module doc). Never raises (unless `keep` does)."""
    started = time.monotonic()
    walker = _Walker(raw, limits, type_map, started, keep)
    try:
        walker.run()
    except Exception as exc:  # the walk's one catch-all: decoding must never raise out
        walker.problems.append(Problem("error", walker.current, f"{type(exc).__name__}: {exc}"))
    finally:
        walker.close()
    return Walk(tuple(walker.parts), tuple(walker.problems), (time.monotonic() - started) * 1000,
                tuple(sorted(walker.ran.items())))


# --- the traversal -------------------------------------------------------------------


@dataclass
class _Node:
    """Something to visit: a MIME entity, or decoded bytes with the name they came with."""

    entity: Message | None = None
    data: bytes | None = None  # None with no entity: content not readable (encrypted)
    name: str | None = None


@dataclass
class _Frame:
    """The children still to visit under one part."""

    children: Iterator[_Node]
    depth_path: str  # the owner's; "" above the message
    owner: str | None  # the owner's part path
    visited: int = 0


@dataclass
class _Walker:
    raw: bytes
    limits: Limits
    type_map: TypeMap
    started: float
    keep: Keep | None = None
    parts: list[Part] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    current: str | None = None  # the part being looked at, for the catch-all
    expanded: int = 0
    stopped: bool = False
    stack: list[_Frame] = field(default_factory=list)
    stops_reported: set[str] = field(default_factory=set)
    ran: dict[str, int] = field(default_factory=dict)  # decoder -> times it ran (Walk.decoders)

    def __post_init__(self) -> None:
        self.deadline = self.started + self.limits.deadline_s
        self.quota = self.limits.quota(len(self.raw))

    def run(self) -> None:
        root = self._parse(self.raw, base_depth=0, owner=None)
        self.raw = b""  # the tree holds what is left to look at (our caller may still hold raw)
        if root is None:
            return
        self.stack.append(_Frame(iter([_Node(entity=root)]), "", None))
        while self.stack and not self.stopped:
            frame = self.stack[-1]
            node = next(frame.children, None)
            if node is None:
                self._pop()
                continue
            frame.visited += 1
            depth_path = f"{frame.depth_path}/{frame.visited}" if frame.depth_path else "1"
            if not self._may_visit(frame, depth_path):
                continue
            path = f"p{len(self.parts) + 1:03d}"
            self.current = path
            try:
                children = self._visit(node, path, depth_path)
            except Exception as exc:  # one bad part must not hide the parts after it
                self.problems.append(Problem("error", path, f"{type(exc).__name__}: {exc}"))
                children = None
            if children is not None:
                self.stack.append(_Frame(children, depth_path, path))
        self.current = None

    def _may_visit(self, frame: _Frame, depth_path: str) -> bool:
        """Check the limits before a new part; False skips it (and ends its branch or the walk)."""
        limits = self.limits
        elapsed = time.monotonic() - self.started
        if elapsed > limits.deadline_s:
            self._over("deadline", frame.owner, f"decoding time {elapsed:.1f} s > limit {limits.deadline_s:g} s")
            self.stopped = True
            return False
        if len(self.parts) >= limits.max_parts:
            self._over("parts", frame.owner, f"parts {len(self.parts) + 1} > limit {limits.max_parts}")
            self.stopped = True
            return False
        depth = depth_path.count("/") + 1
        if depth > limits.max_depth:
            self.problems.append(
                Problem("over limits", frame.owner, f"nesting depth {depth} > limit {limits.max_depth}")
            )
            self._pop()  # its siblings are as deep: the branch ends here
            return False
        return True

    def _visit(self, node: _Node, path: str, depth_path: str) -> Iterator[_Node] | None:
        """Record the part; return the children to visit under it, if any."""
        if node.entity is None and node.data is None:
            self.parts.append(Part(path, depth_path, node.name, None, None, None, 0))
            return None
        if node.entity is None:
            return self._leaf(path, depth_path, node.name, None, node.data)
        entity = node.entity
        declared = mime.declared_type(entity)
        name = mime.declared_name(entity)
        for detail in mime.ambiguities(entity):
            self.problems.append(Problem("ambiguous", path, detail))
        subs = mime.children(entity)
        if subs is not None:
            self.parts.append(Part(path, depth_path, name, declared, None, None, 0))
            if self.keep is not None and (outside := mime.outside_parts(entity)):
                self.keep(path, outside)
            return (_Node(entity=sub) for sub in subs)
        data = mime.content(entity)
        entity.set_payload(None)  # the encoded text is not needed again: free it before the children
        if mime.encoded_message(entity):
            self.parts.append(Part(path, depth_path, name, declared, None, None, len(data)))
            if not self._spend(path, len(data)):
                return None
            if self.keep is not None:
                self.keep(path, data)
            return self._nested(data, path, depth_path)
        return self._leaf(path, depth_path, name, declared, data)

    def _leaf(self, path: str, depth_path: str, name: str | None, declared: str | None, data: bytes):
        short, description = detect(data, self.type_map, self.limits.magic_bytes)
        self.parts.append(Part(path, depth_path, name, declared, short, description, len(data)))
        if not self._spend(path, len(data)):
            return None
        if self.keep is not None:
            self.keep(path, data)
        text = short in _TEXT or (declared or "").startswith("text/")
        if short == "mail":
            nested = self._nested(data, path, depth_path)
            if nested is not None:
                return nested
        elif text and mime.mbox_starts(data):
            return self._mbox(data, path, depth_path)
        if archives.readable(short):
            self._ran(short)
            items = archives.members(data, short, name, self.limits.max_member_ratio, self._room)
            return self._members(items, path)
        if short == "tnef":
            self._ran("tnef")
            return self._members(tnef.members(data, self.deadline), path)
        if text:
            blocks = self._counted("uue", mime.uu_blocks(data))
            uu = (_Node(data=content, name=uu_name) for uu_name, content in blocks)
            return itertools.chain(uu, self._members(self._counted("hqx", binhex.members(data, self._room)), path))
        return None

    def _ran(self, decoder: str) -> None:
        self.ran[decoder] = self.ran.get(decoder, 0) + 1

    def _counted(self, decoder: str, items: Iterator):
        """`items`, counting one run of `decoder` when the first of them comes."""
        first = True
        for item in items:
            if first:
                self._ran(decoder)
                first = False
            yield item

    def _room(self) -> int:
        """Bytes the walk may still decode."""
        return max(0, self.quota - self.expanded)

    def _members(self, items: Iterator[archives.Member | archives.Issue], path: str) -> Iterator[_Node]:
        """What a container at `path` holds (archive, TNEF, BinHex), one at a time; its Issues as Problems."""
        for item in items:
            if isinstance(item, archives.Issue):
                if item.stops:
                    self._over(item.stops, path, item.detail)
                    self.stopped = True
                else:
                    self.problems.append(Problem(item.minor, path, item.detail))
            else:
                yield _Node(data=item.content, name=item.name)

    def _mbox(self, data: bytes, path: str, depth_path: str) -> Iterator[_Node]:
        """Each message of an mbox file, one level below `path`."""
        self._ran("mbox")
        for message in mime.mbox_messages(data):
            nested = self._nested(message, path, depth_path)
            if nested is not None:
                yield from nested

    def _nested(self, data: bytes, path: str, depth_path: str) -> Iterator[_Node] | None:
        """`data` as a message one level below `path`, if it is one."""
        base_depth = depth_path.count("/") + 1
        self._ran("mime")
        try:
            root = mime.nested_message(data, *self._parse_caps(base_depth), self.deadline)
        except mime.ParseStopped as stop:
            self._parse_stopped(stop, path)
            root = stop.root
        return iter([_Node(entity=root)]) if root is not None else None

    def _parse(self, raw: bytes, base_depth: int, owner: str | None) -> Message | None:
        self._ran("mime")
        try:
            return mime.parse(raw, *self._parse_caps(base_depth), self.deadline)
        except mime.ParseStopped as stop:
            self._parse_stopped(stop, owner)
            return stop.root

    def _parse_caps(self, base_depth: int) -> tuple[int, int]:
        """(nesting, entities) the parser may build below `base_depth`.

        One past each limit, so that the walk itself meets the breach and says where;
        the parser nests at least PARSE_DEPTH levels so that one branch over max_depth
        does not cost its siblings (past that, the rest of the message is not parsed).
        """
        nesting = max(self.limits.max_depth, PARSE_DEPTH) - base_depth + 1
        entities = self.limits.max_parts - len(self.parts) + 1
        return max(1, nesting), max(1, entities)

    def _parse_stopped(self, stop: mime.ParseStopped, owner: str | None) -> None:
        limits = self.limits
        detail = {
            "depth": f"MIME nesting > {max(limits.max_depth, PARSE_DEPTH)} levels, rest of message not parsed",
            "parts": f"MIME parts > limit {limits.max_parts}, rest of message not parsed",
            "deadline": f"decoding time > limit {limits.deadline_s:g} s while parsing",
        }[stop.limit]
        self._over(stop.limit, owner, detail)

    def _spend(self, path: str, size: int) -> bool:
        """Count decoded bytes against the quota; False (and the walk stops) past it."""
        self.expanded += size
        if self.expanded <= self.quota:
            return True
        self._over("bytes", path, f"expanded {_size(self.expanded, self.quota)} > limit {_size(self.quota, self.expanded)}")
        self.stopped = True
        return False

    def _over(self, limit: str, part: str | None, detail: str) -> None:
        """One 'over limits' problem per global limit (parts, bytes, deadline)."""
        if limit == "depth" or limit not in self.stops_reported:
            self.stops_reported.add(limit)
            self.problems.append(Problem("over limits", part, detail))

    def _pop(self) -> None:
        frame = self.stack.pop()
        close = getattr(frame.children, "close", None)
        if close is not None:  # generators may hold resources (archive readers)
            close()

    def close(self) -> None:
        while self.stack:
            self._pop()


def _size(n: int, other: int) -> str:
    """`n` bytes for a reader: 310 MB, 150 KB; exact when rounding would hide the difference from `other`."""
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= 10 * scale:
            if n // scale == other // scale:
                break
            return f"{n // scale} {unit}"
    return f"{n} bytes"
