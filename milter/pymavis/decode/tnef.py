"""TNEF (winmail.dat, application/ms-tnef): what Outlook wraps into one part, read with tnefparse.

`members(data, deadline)` yields, as `Member`s, the message's HTML body and plain-text
body when it has them (no name), then each attachment named by its long file name
(PR_ATTACH_LONG_FILENAME), else its short one (attAttachTitle or PR_ATTACH_FILENAME).
An attached message is a TNEF stream again: libmagic says so and the walker looks into
it like any other part.

XXX: the RTF body is compressed (MS-OXRTFCP, "LZFu") and tnefparse expands it only with
the optional compressed_rtf package, which we do not install: the RTF body is left out.

Limits: TNEF does not compress, so what we yield is already in memory and the walker
counts it against the byte quota as it visits each member. tnefparse's run time, though,
is not bounded by its input: counts read from the data drive its loops (a property
count of 4 billion runs 4 billion times; a multi-value count appends that many values)
and it copies the rest of the stream for every object it reads (quadratic). So it runs
under a trace function (sys.settrace, this thread only, the previous one restored) that
counts its steps - lines executed in tnefparse's own files, and the copying - up to
STEPS_PER_BYTE per input byte plus STEPS_BASE, never more than MAX_STEPS (about a
second), and looks at the walk's deadline every DEADLINE_EVERY steps; attached messages
nested more than MAX_NESTED deep are refused too. Too many steps or levels:
Issue("over limits"); the deadline: Issue("over limits", stops="deadline"), which ends
the walk. Nothing is yielded then.

Failures: any exception from tnefparse (it raises ValueError on a wrong signature,
struct.error on a short object, AttributeError on a property of an unexpected type...) is
Issue("error", "TNEF unreadable: ExcClass: message") and nothing is yielded. Errors it
logs and swallows itself (a block of MAPI properties that does not parse: the
properties after the bad one are lost) become Issue("error", "TNEF: <its message>").
Its logger is otherwise kept quiet: level ERROR and not propagated, so garbage input
cannot flood the mail log with its warnings.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import tnefparse
from tnefparse import mapi, properties, util

from pymavis.decode.archives import Issue, Member
from pymavis.decode.mime import decode_bytes

# Steps tnefparse may take: a step is one line executed in its files, or 4 KiB of the
# rest of the stream it copies for each object (a copy of 4 KiB costs about one traced
# line). Real files need at most 2 steps a byte and 16,000 in all (tnefparse's 19
# example files in the shared corpus, clam.tnef); the densest well-formed file we could
# build (multi-valued short properties) 13 a byte. Garbage that loops past the end of
# its data costs ~7 bytes of memory a step. The trace runs ~2.5 million steps a second,
# so MAX_STEPS stops any input within about a second and ~15 MB.
STEPS_PER_BYTE = 16
STEPS_BASE = 100_000
MAX_STEPS = 2_000_000
COPY_BYTES_PER_STEP = 4096
DEADLINE_EVERY = 1024  # steps between two looks at the clock
# tnefparse parses attached messages as it meets them, recursively (~3 frames a level):
# past this many levels it could meet Python's recursion limit inside our trace function,
# which would switch the trace off. The walker's own max_depth (14) stops well before.
MAX_NESTED = 16

_T = TypeVar("_T")
_OWN_FILES = os.path.dirname(tnefparse.__file__) + os.sep
# util.systime runs its one line under a bare `except:` that would swallow our stop.
_SWALLOWING = {util.systime.__code__}
# TNEF.__init__ hands each object `data[offset:]`, a copy of the rest of the stream.
_COPIED_FOR = tnefparse.TNEFObject.__init__.__code__
_PARSES = tnefparse.TNEF.__init__.__code__
_NAME_PROPERTIES = (properties.MAPI_ATTACH_LONG_FILENAME, properties.MAPI_ATTACH_FILENAME)
_TEXT_TYPES = (mapi.SZMAPI_STRING, mapi.SZMAPI_UNICODE_STRING)


class _Stopped(BaseException):
    """Raised inside tnefparse to stop it; a BaseException so its `except Exception` lets it by."""

    def __init__(self, limit: str):
        super().__init__(limit)
        self.limit = limit  # "steps" | "deadline" | "nesting"


class _Collect(logging.Handler):
    """Keeps what tnefparse logs on this thread while `_local.logged` is a list."""

    def emit(self, record: logging.LogRecord) -> None:
        logged = getattr(_local, "logged", None)
        if logged is not None and len(logged) < 10:
            logged.append(record.getMessage())


_local = threading.local()
_log = logging.getLogger(tnefparse.__name__)
_log.setLevel(logging.ERROR)
_log.propagate = False
_log.addHandler(_Collect())


def members(data: bytes, deadline: float) -> Iterator[Member | Issue]:
    """The bodies and attachments of the TNEF stream `data`; see the module header."""
    max_steps = min(STEPS_PER_BYTE * len(data) + STEPS_BASE, MAX_STEPS)
    logged: list[str] = []
    try:
        found = _bounded(lambda: _parse(data), max_steps, deadline, logged)
    except _Stopped as stop:
        found = [{
            "deadline": Issue("over limits", "TNEF not decoded: decoding time past the deadline", "deadline"),
            "steps": Issue("over limits", f"TNEF not decoded: more than {max_steps} steps for {len(data)} bytes"),
            "nesting": Issue("over limits", f"TNEF not decoded: attached messages nested > {MAX_NESTED} levels"),
        }[stop.limit]]
    except Exception as exc:  # whatever tnefparse raises on bad input (see the module header)
        found = [Issue("error", f"TNEF unreadable: {type(exc).__name__}: {exc}")]
    for message in logged:
        yield Issue("error", f"TNEF: {message}")
    yield from found


def _parse(data: bytes) -> list[Member | Issue]:
    """Everything tnefparse does, attribute lookups included, so the trace counts it all."""
    tnef = tnefparse.TNEF(data, do_checksum=False)
    found: list[Member | Issue] = []
    wanted = [(None, "HTML body", tnef.htmlbody), (None, "body", tnef.body)]
    wanted += [(_name(a, tnef.codepage), "attachment", a.data) for a in tnef.attachments]
    for name, what, value in wanted:
        if isinstance(value, str):  # text properties come decoded
            value = value.encode("utf-8", "surrogateescape")
        if isinstance(value, bytes):
            if value or name:
                found.append(Member(name, value))
        elif value is not None:  # a property of another type under that id: garbage
            label = f"{what} {name}" if name else what
            found.append(Issue("error", f"TNEF: {label} is {type(value).__name__}, not data"))
    return found


def _name(attachment: tnefparse.TNEFAttachment, codepage: str | None) -> str | None:
    """The long file name, else the short one; None when there is neither."""
    for wanted in _NAME_PROPERTIES:
        for prop in attachment.mapi_attrs:
            if prop.name == wanted and prop.attr_type in _TEXT_TYPES and prop.data.strip("\0"):
                return prop.data.strip("\0")
    # XXX: the short name from attAttachTitle is kept raw in a private attribute: the
    # public `name` decodes it as strict UTF-8 (and raises), Outlook writes its code page.
    short = attachment._name
    if isinstance(short, bytes):
        short = decode_bytes(short, codepage)
    if not isinstance(short, str):
        return None
    return short.strip("\0") or None


def _bounded(work: Callable[[], _T], max_steps: int, deadline: float, logged: list[str]) -> _T:
    """work(), stopped with _Stopped past `max_steps` steps of tnefparse or past `deadline`;
    what tnefparse logs meanwhile (ERROR and up, at most 10) goes into `logged`."""
    steps = 0
    next_look = DEADLINE_EVERY  # copies add many steps at once: no `steps % n`

    def on_line(frame, event, arg):
        nonlocal steps, next_look
        steps += 1
        if frame.f_code not in _SWALLOWING:
            if steps > max_steps:
                raise _Stopped("steps")
            if steps >= next_look:
                next_look = steps + DEADLINE_EVERY
                if time.monotonic() > deadline:
                    raise _Stopped("deadline")
        return on_line

    def on_call(frame, event, arg):
        # Only tnefparse's own frames are counted and stopped: never logging's, which
        # holds locks between its lines.
        nonlocal steps
        if not frame.f_code.co_filename.startswith(_OWN_FILES):
            return None
        if frame.f_code is _COPIED_FOR:
            steps += len(frame.f_locals["data"]) // COPY_BYTES_PER_STEP
        elif frame.f_code is _PARSES and _nesting(frame) > MAX_NESTED:
            raise _Stopped("nesting")
        return on_line

    previous = sys.gettrace()
    _local.logged = logged
    sys.settrace(on_call)
    try:
        return work()
    finally:
        sys.settrace(previous)
        _local.logged = None


def _nesting(frame) -> int:
    """How many TNEF streams are being parsed, one inside the other, at `frame`."""
    levels = 0
    while frame is not None:
        levels += frame.f_code is _PARSES
        frame = frame.f_back
    return levels
