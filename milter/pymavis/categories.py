"""Content categories (amavisd-new's ccat) and the findings checks report.

The order is amavis's: a higher category wins as the message's main category for a
recipient. Minor codes refine a category (UNCHECKED 1 = encrypted, 2 = over limits, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Ccat(enum.IntEnum):
    CLEAN = 1
    MTA = 2
    OVERSIZED = 3
    BADH = 4
    SPAMMY = 5
    SPAM = 6
    UNCHECKED = 7
    BANNED = 8
    VIRUS = 9


# amavisd-new's content-type names (its %ccat_display_names, major categories), as
# `pymavis scan --json` and the JSON log report them.
CONTENT_TYPE_NAMES = {Ccat.CLEAN: "Clean", Ccat.MTA: "MTA", Ccat.OVERSIZED: "Oversized", Ccat.BADH: "BadHdr",
                      Ccat.SPAMMY: "Spammy", Ccat.SPAM: "Spam", Ccat.UNCHECKED: "Unchecked", Ccat.BANNED: "Banned",
                      Ccat.VIRUS: "Virus"}


@dataclass(frozen=True)
class Finding:
    """What one check found. `rcpts` None means every recipient; else only those listed
    (a size limit, say, is per recipient)."""

    check: str
    ccat: Ccat
    minor: int = 0
    detail: str = ""
    rcpts: frozenset | None = None
    values: tuple = ()  # (name, value) pairs for reply templates, e.g. (("size", 123),)

    def applies_to(self, rcpt: str) -> bool:
        return self.rcpts is None or rcpt in self.rcpts
