"""Load and validate the configuration: the main file plus the policy bank files.

Every problem is collected (not just the first) as "FILE:LINE: message", so
`pymavis check-config` can print them all; `load()` raises `ConfigError` holding the list.
Unknown keys are errors with a near-miss suggestion; a bank named by a selector but
defined nowhere is an error. The result is a frozen `Config` snapshot: a reload builds a
new one and the running one stays in use until the new one is complete and valid.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
from dataclasses import dataclass, field
from types import MappingProxyType

from pymavis.spec import suggest

from . import yamlsrc
from .schema import BUILTIN_BANKS, GLOBAL_SETTINGS, POLICY_SETTINGS, bank_names_in
from .types import ConvertContext, IpLookup, SettingError


class ConfigError(Exception):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Bank:
    name: str
    file: str
    settings: MappingProxyType  # only what the bank sets, converted
    replace: frozenset = frozenset()  # mapping settings this bank replaces instead of merging


@dataclass(frozen=True)
class Config:
    path: str
    settings: MappingProxyType          # global settings, converted
    default_policy: MappingProxyType    # every policy setting, converted (the default bank)
    banks: MappingProxyType             # name -> Bank
    client_ipaddr_policy: tuple         # ((LookupChain, bank name), ...)
    myhostname: str
    mydomain: str
    _merged: dict = field(default_factory=dict, compare=False, repr=False)

    def __getitem__(self, name):
        return self.settings[name]


class _Collector:
    def __init__(self):
        self.errors: list[str] = []

    def add(self, src: yamlsrc.Source, path: tuple, message: str):
        self.errors.append(f"{src.file}:{src.line_of(path)}: {message}")


def _convert_settings(src, mapping, path, schema, ctx, errors, what) -> dict:
    out = {}
    for key, value in mapping.items():
        setting = schema.get(key)
        if setting is None:
            errors.add(src, path + (key,), f"unknown key {key!r} in {what}{suggest(key, schema)}")
            continue
        try:
            out[key] = setting.type.convert(value, ctx)
        except SettingError as exc:
            errors.add(src, path + (key,) + exc.path, f"{_dotted(key, exc)}: {exc}")
    return out


def _dotted(key: str, exc: SettingError) -> str:
    """The setting an error is about: `milter.workers`, `av_scanners[0].socket` (an unknown
    key is named by its message, so the name stops at the mapping that holds it)."""
    parts = exc.path[:-1] if str(exc).startswith("unknown key") else exc.path
    return key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if str(p).isidentifier() else f"[{p!r}]"
                         for p in parts)


def _policy_defaults(ctx) -> dict:
    return {name: s.type.convert(s.default, ctx) for name, s in POLICY_SETTINGS.items()}


def load(path: str) -> Config:
    path = os.path.abspath(path)
    errors = _Collector()
    try:
        src = yamlsrc.load_file(path)
    except yamlsrc.YamlError as exc:
        raise ConfigError([str(exc)]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    data = src.data if src.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: the main file must be a mapping of settings"])
    base_dir = os.path.dirname(path)
    ctx = ConvertContext(base_dir=base_dir)

    raw_globals = {k: v for k, v in data.items() if k not in ("policy", "client_ipaddr_policy")}
    g = {name: s.type.convert(s.default, ctx) for name, s in GLOBAL_SETTINGS.items()
         if name != "client_ipaddr_policy"}
    schema = dict(GLOBAL_SETTINGS, policy=None)
    for key in raw_globals:
        if key not in schema:
            errors.add(src, (key,), f"unknown key {key!r}{suggest(key, schema)}")
    g.update(_convert_settings(src, {k: v for k, v in raw_globals.items() if k in GLOBAL_SETTINGS},
                               (), GLOBAL_SETTINGS, ctx, errors, "the main file"))

    # banned_filename_maps values are checked against the rule sets defined, arc_seal against arc_sealing
    ctx = dataclasses.replace(ctx, banned_rule_sets=frozenset(g["banned_rules"]),
                              arc_sealing=g["arc_sealing"] is not None)
    policy = _policy_defaults(ctx)
    raw_policy = data.get("policy") or {}
    if not isinstance(raw_policy, dict):
        errors.add(src, ("policy",), "policy: expected a mapping of policy settings")
    else:
        policy.update(_convert_settings(src, raw_policy, ("policy",), POLICY_SETTINGS, ctx, errors,
                                        "policy"))

    ip_policy = []
    raw_ip = data.get("client_ipaddr_policy") or []
    if not isinstance(raw_ip, list):
        errors.add(src, ("client_ipaddr_policy",), "client_ipaddr_policy: expected a list of {ip: ..., bank: NAME}")
        raw_ip = []
    for i, item in enumerate(raw_ip):
        where = ("client_ipaddr_policy", i)
        if not isinstance(item, dict) or set(item) != {"ip", "bank"}:
            extra = set(item) - {"ip", "bank"} if isinstance(item, dict) else set()
            hint = "".join(f"; unknown key {k!r}{suggest(k, ('ip', 'bank'))}" for k in sorted(extra, key=str))
            errors.add(src, where, f"client_ipaddr_policy[{i}]: expected {{ip: LOOKUP, bank: NAME}}{hint}")
            continue
        try:
            ip_policy.append((IpLookup.convert(item["ip"], ctx), str(item["bank"])))
        except SettingError as exc:
            errors.add(src, where + ("ip",) + exc.path, f"client_ipaddr_policy[{i}].ip: {exc}")

    banks = _load_banks(g.get("policy_banks_dir"), base_dir, ctx, errors,
                        required="policy_banks_dir" in raw_globals)
    _check_bank_references(src, g, ip_policy, banks, errors)

    if errors.errors:
        raise ConfigError(errors.errors)
    myhostname = g["myhostname"] or socket.getfqdn()
    mydomain = g["mydomain"] or (myhostname.split(".", 1)[1] if "." in myhostname else myhostname)
    return Config(path=path, settings=MappingProxyType(g), default_policy=MappingProxyType(policy),
                  banks=MappingProxyType(banks), client_ipaddr_policy=tuple(ip_policy),
                  myhostname=myhostname, mydomain=mydomain)


def _load_banks(banks_dir, base_dir, ctx, errors, *, required: bool) -> dict[str, Bank]:
    banks: dict[str, Bank] = {}
    for name, implied in BUILTIN_BANKS.items():
        banks[name] = Bank(name, "<built-in>", MappingProxyType(dict(implied)))
    defined_in: dict[str, str] = {}
    if not banks_dir:
        return banks
    directory = os.path.join(base_dir, banks_dir)
    if not os.path.isdir(directory):
        if required:
            errors.errors.append(f"{directory}: policy_banks_dir is not a directory")
        return banks
    for file in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        try:
            src = yamlsrc.load_file(file)
        except yamlsrc.YamlError as exc:
            errors.errors.append(str(exc))
            continue
        except OSError as exc:
            errors.errors.append(f"{file}: cannot read: {exc.strerror}")
            continue
        if src.data is None:
            continue
        if not isinstance(src.data, dict):
            errors.add(src, (), "a bank file must map bank names to their settings")
            continue
        for bank_name, body in src.data.items():
            bank_name = str(bank_name)
            if bank_name in defined_in:
                errors.add(src, (bank_name,), f"bank {bank_name!r} is already defined in {defined_in[bank_name]}")
                continue
            defined_in[bank_name] = f"{src.file}:{src.line_of((bank_name,))}"
            body = body or {}
            if not isinstance(body, dict):
                errors.add(src, (bank_name,), f"bank {bank_name!r}: expected a mapping of policy settings")
                continue
            replace = body.get("replace", [])
            if not isinstance(replace, list) or not all(r in POLICY_SETTINGS for r in replace):
                errors.add(src, (bank_name, "replace"),
                           f"bank {bank_name!r}: replace: expected a list of policy setting names")
                replace = []
            settings = dict(BUILTIN_BANKS.get(bank_name, {}))
            settings.update(_convert_settings(src, {k: v for k, v in body.items() if k != "replace"},
                                              (bank_name,), POLICY_SETTINGS, ctx, errors,
                                              f"bank {bank_name!r}"))
            banks[bank_name] = Bank(bank_name, src.file, MappingProxyType(settings), frozenset(replace))
    return banks


def _check_bank_references(src, g, ip_policy, banks, errors):
    refs = [(("daemon_name_policy", k), v) for k, v in g["daemon_name_policy"].items()]
    refs += [(("interface_policy", k), v) for k, v in g["interface_policy"].items()]
    refs += [(("client_ipaddr_policy", i, "bank"), name) for i, (_, name) in enumerate(ip_policy)]
    refs += [((key,), g[key]) for key in ("mynets_bank", "auth_bank", "myusers_bank") if g[key]]
    refs += [(("auth_result_policy", k), name) for k, names in g["auth_result_policy"].items() for name in names]
    where = {}   # author_to_policy_bank: its keys are normalised, so the setting's line and the entry
    for entry, name in bank_names_in(g["author_to_policy_bank"]):
        refs.append((("author_to_policy_bank",), name))
        where.setdefault(name, f" (author_to_policy_bank entry {entry!r})")
    for path, name in refs:
        if name not in banks:
            shown = where.get(name, "") if path == ("author_to_policy_bank",) else ""
            errors.add(src, path, f"policy bank {name!r}{shown} is not defined{suggest(name, banks)}; "
                                  f"define it in a file under policy_banks_dir")
