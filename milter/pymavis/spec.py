"""What every configuration parser shares: an error that knows where it is, and a hint.

`SpecError(message, path)`: `path` is the tuple of keys and list indexes inside the
parsed YAML value that is wrong, so the config loader can name the file and line.
`suggest(word, choices)`: " (did you mean 'x'?)" for a near miss, else "".
"""

from __future__ import annotations

import difflib


class SpecError(ValueError):
    def __init__(self, message: str, path: tuple = ()):
        super().__init__(message)
        self.message = message
        self.path = tuple(path)

    def __str__(self) -> str:
        return self.message


def suggest(word, choices, cutoff: float = 0.75) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
