"""Logging setup: stderr or syslog, with the level from `log:` in the configuration.

Per-message context (connection id, later mail_id) is carried by a LoggerAdapter, so
messages read "(4711-03) Passed CLEAN ..." without each call repeating the id.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE,
          "warning": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("pymavis")


class ContextAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"({self.extra['ctx']}) {msg}", kwargs


def for_context(ctx: str) -> ContextAdapter:
    return ContextAdapter(log, {"ctx": ctx})


def setup(settings: dict, *, force_stderr: bool = False):
    """Configure the 'pymavis' logger from the `log:` settings section."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
    if settings["target"] == "syslog" and not force_stderr:
        try:
            handler = logging.handlers.SysLogHandler(address=settings["syslog_socket"],
                                                     facility=settings["syslog_facility"])
            handler.setFormatter(logging.Formatter("pymavis[%(process)d]: %(message)s"))
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s pymavis[%(process)d] %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.warning("syslog socket %s unusable (%s); logging to stderr", settings["syslog_socket"], exc)
            handler = None
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s pymavis[%(process)d] %(levelname)s %(message)s"))
    if handler is not None:
        log.addHandler(handler)
    log.setLevel(LEVELS[settings["level"]])
    log.propagate = False
