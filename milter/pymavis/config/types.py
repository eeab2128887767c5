"""Value types for configuration settings: each converts a YAML value or says why not.

A type's `convert(value, ctx)` returns the value the running code uses (for lookup
settings, a built `LookupChain`) or raises `SettingError` with a message and the path
inside the value that is wrong, so the loader can point at the right YAML line.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymavis import lookups
from pymavis.spec import SpecError, suggest


class SettingError(SpecError):
    """A setting's value is wrong; .path points inside the value."""


@dataclass(frozen=True)
class ConvertContext:
    base_dir: str  # relative file names in lookups resolve against this
    banned_rule_sets: frozenset = frozenset()  # names banned_filename_maps may use
    arc_sealing: bool = False  # whether the main file has a sealing key: arc_seal needs one


def _type_name(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


class Type:
    nullable = False

    def convert(self, value, ctx: ConvertContext):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Bool(Type):
    def convert(self, value, ctx):
        if isinstance(value, bool):
            return value
        raise SettingError(f"expected true or false, got {_type_name(value)} {value!r}")

    def describe(self):
        return "true or false"


def bool_from_text(value):
    """Booleans as they come from amavis-style files: 1/0, yes/no, true/false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "y", "on"):
        return True
    if text in ("0", "no", "false", "n", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def int_from_text(value, minimum=None):
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"must be at least {minimum}, got {number}")
    return number


@dataclass(frozen=True)
class Int(Type):
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False

    def convert(self, value, ctx):
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingError(f"expected a whole number, got {_type_name(value)} {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise SettingError(f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise SettingError(f"must be at most {self.maximum}, got {value}")
        return value

    def describe(self):
        return "a whole number"


@dataclass(frozen=True)
class Float(Type):
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, value, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingError(f"expected a number, got {_type_name(value)} {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise SettingError(f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise SettingError(f"must be at most {self.maximum}, got {value}")
        return float(value)

    def describe(self):
        return "a number"


@dataclass(frozen=True)
class Str(Type):
    nullable: bool = False
    nonempty: bool = False

    def convert(self, value, ctx):
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SettingError(f"expected a string, got {_type_name(value)} {value!r}")
        value = str(value)
        if self.nonempty and not value:
            raise SettingError("must not be empty")
        return value

    def describe(self):
        return "a string" + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class StrList(Type):
    """A list of non-empty strings (a tuple when converted)."""

    def convert(self, value, ctx):
        if not isinstance(value, list):
            raise SettingError(f"expected a list of strings, got {_type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise SettingError(f"expected a non-empty string, got {item!r}", (i,))
        return tuple(value)

    def describe(self):
        return "a list of strings"


@dataclass(frozen=True)
class Enum(Type):
    choices: tuple

    def convert(self, value, ctx):
        if value not in self.choices:
            raise SettingError(f"expected one of {', '.join(self.choices)}, got {value!r}"
                               + suggest(value, self.choices))
        return value

    def describe(self):
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class StrMap(Type):
    """A mapping whose keys come from `keys` (if given) and whose values are of `value`."""

    value: Type
    keys: tuple | None = None
    key_type: type = str

    def convert(self, value, ctx):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SettingError(f"expected a mapping, got {_type_name(value)}")
        out = {}
        for key, item in value.items():
            if self.keys is not None and key not in self.keys:
                raise SettingError(f"unknown key {key!r}{suggest(key, self.keys)}; known: "
                                   + ", ".join(self.keys), (key,))
            if self.key_type is int:
                if isinstance(key, bool) or not isinstance(key, int):
                    try:
                        key = int(str(key))
                    except ValueError:
                        raise SettingError(f"key {key!r} must be a port number", (key,)) from None
            else:
                key = str(key)
            try:
                out[key] = self.value.convert(item, ctx)
            except SettingError as exc:
                raise SettingError(str(exc), (key,) + exc.path) from None
        return out

    def describe(self):
        return "a mapping"


@dataclass(frozen=True)
class Lookup(Type):
    """A per-recipient (kind 'address') or per-client (kind 'ip') lookup chain.

    `value_check` converts each value found in a table (files give strings)."""

    kind: str = "address"
    value_check: object = None

    def convert(self, value, ctx):
        try:
            return lookups.build_chain(value, kind=self.kind, value_check=self.value_check,
                                       base_dir=ctx.base_dir)
        except lookups.LookupSpecError as exc:
            raise SettingError(str(exc), getattr(exc, "path", ())) from None

    def describe(self):
        return "a lookup (a value, a list, a mapping or a list of tables)"


def rule_set_names(value, known: frozenset) -> tuple[str, ...]:
    """amavis's "NO-EXE,DEFAULT" (or a list of names): the banned rule sets, in order."""
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value]
    else:
        raise ValueError(f"expected rule set names ('NO-EXE,DEFAULT' or a list), got {value!r}")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown banned rule set {name!r}{suggest(name, known)}; "
                             f"defined: {', '.join(sorted(known))}")
    return tuple(names)


@dataclass(frozen=True)
class RuleSetsLookup(Lookup):
    """A per-recipient lookup whose values name banned rule sets, checked against the sets
    defined (shipped plus `banned_rules`) when the configuration is loaded."""

    def convert(self, value, ctx):
        check = lambda v: rule_set_names(v, ctx.banned_rule_sets)  # noqa: E731
        return Lookup(self.kind, check).convert(value, ctx)


def float_from_text(value):
    """A spam level or score boost: a number, or a string holding one ("6.2", "-3")."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def str_from_text(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def location_from_text(value):
    """A quarantine location: '.' or a relative folder name (letters, digits, . _ - @ +, and /
    between parts); never absolute, never '..'."""
    text = str_from_text(value).strip()
    parts = text.split("/")
    if text != "." and (not text or text.startswith("/") or any(
            p in ("", ".", "..") or not all(c.isalnum() or c in "._-@+" for c in p) for p in parts)):
        raise ValueError(f"expected '.' or a relative folder name, got {value!r}")
    return text


BoolLookup = Lookup("address", bool_from_text)
LocationLookup = Lookup("address", location_from_text)
FloatLookup = Lookup("address", float_from_text)
StrLookup = Lookup("address", str_from_text)
SizeLookup = Lookup("address", lambda v: int_from_text(v, minimum=0))
IpLookup = Lookup("ip", bool_from_text)
