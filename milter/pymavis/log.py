"""Logging setup: stderr or syslog, with the level from `log:` in the configuration.

Per-message context (connection id, later mail_id) is carried by a LoggerAdapter, so
messages read "(4711-03) Passed CLEAN ..." without each call repeating the id.

Levels: our names (debug, info, notice, warning, error) or amavisd-new's `$log_level`
numbers 0-5, mapped as amavis maps them to syslog priorities (0: notice and above; 1 and
2: info, pymavis has nothing between; 3-5: debug). Python's SysLogHandler knows no NOTICE:
we map it to syslog's notice (it would go out as warning).

One message at debug (`debug_sender`, `debug_recipient`): its ContextAdapter is made with
`debug=True` and the worker thread checking it runs inside `debugging(True)`. While any such
message is in flight (`debug_begin`/`debug_end` count them) the logger's level is debug and
a filter on the handler lets a record below the configured level through only when it comes
from such an adapter or thread; with none in flight nothing below the configured level is
even built. XXX: lines logged by helper threads of the message (spamd's early call runs in a
pool of its own) are not raised.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
import threading

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE,
          "warning": logging.WARNING, "error": logging.ERROR}
# amavisd-new's $log_level -> our level name (amavis: 0 LOG_NOTICE, 1-2 LOG_INFO, 3-5 LOG_DEBUG)
AMAVIS_LEVELS = {0: "notice", 1: "info", 2: "info", 3: "debug", 4: "debug", 5: "debug"}

log = logging.getLogger("pymavis")

_base_level = logging.NOTSET      # the configured level (log.level); before setup() the logger decides
_debugging = 0                    # messages at debug in flight
_debug_lock = threading.Lock()
_thread = threading.local()       # .debug: this thread checks a message at debug


class ContextAdapter(logging.LoggerAdapter):
    def __init__(self, logger, extra, debug: bool = False):
        super().__init__(logger, extra)
        self.at_debug = debug   # this message is logged at debug (not `debug`: that is the method)

    def process(self, msg, kwargs):
        if self.at_debug:
            kwargs["extra"] = {**kwargs.get("extra", {}), "pymavis_debug": True}
        return f"({self.extra['ctx']}) {msg}", kwargs

    def isEnabledFor(self, level):
        if level < _base_level and not self.at_debug:
            return False
        return self.logger.isEnabledFor(level)


def for_context(ctx: str, *, debug: bool = False) -> ContextAdapter:
    return ContextAdapter(log, {"ctx": ctx}, debug)


class _MessageLevelFilter(logging.Filter):
    """On the handler: below the configured level, only the records of messages at debug."""

    def filter(self, record):
        return (record.levelno >= _base_level or getattr(record, "pymavis_debug", False)
                or getattr(_thread, "debug", False))


def debug_begin() -> None:
    """A message at debug starts: records below the configured level are built from now on."""
    global _debugging
    with _debug_lock:
        _debugging += 1
        if _debugging == 1:
            log.setLevel(logging.DEBUG)


def debug_end() -> None:
    global _debugging
    with _debug_lock:
        _debugging = max(0, _debugging - 1)
        if _debugging == 0:
            log.setLevel(_base_level)


@contextlib.contextmanager
def debugging(on: bool):
    """This thread's own log lines (module loggers, no context) at debug while inside, if `on`."""
    before = getattr(_thread, "debug", False)
    _thread.debug = on
    try:
        yield
    finally:
        _thread.debug = before


def setup(settings: dict, *, force_stderr: bool = False):
    """Configure the 'pymavis' logger from the `log:` settings section."""
    global _base_level
    with _debug_lock:
        _base_level = LEVELS[settings["level"]]
        log.setLevel(logging.DEBUG if _debugging else _base_level)
    for handler in list(log.handlers):
        log.removeHandler(handler)
    stderr_format = logging.Formatter("%(asctime)s pymavis[%(process)d] %(levelname)s %(message)s")
    if settings["target"] == "syslog" and not force_stderr:
        try:
            handler = logging.handlers.SysLogHandler(address=settings["syslog_socket"],
                                                     facility=settings["syslog_facility"])
            handler.priority_map = {**handler.priority_map, "NOTICE": "notice"}
            handler.setFormatter(logging.Formatter("pymavis[%(process)d]: %(message)s"))
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(stderr_format)
            handler.addFilter(_MessageLevelFilter())
            log.addHandler(handler)
            log.warning("syslog socket %s unusable (%s); logging to stderr", settings["syslog_socket"], exc)
            handler = None
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(stderr_format)
    if handler is not None:
        handler.addFilter(_MessageLevelFilter())
        log.addHandler(handler)
    log.propagate = False
