"""Choose the policy banks for a transaction and merge them into one frozen Policy.

Selection order (each match appends to the bank path, later banks override earlier ones):
1. `daemon_name_policy[{daemon_name}]`   (the MTA listener's name)
2. `interface_policy[{daemon_port}]`     (the MTA listener's port)
3. `client_ipaddr_policy`: the first entry whose ip lookup matches the client
4. `mynets_bank` when the client address is in `mynetworks` (implies originating)
5. `auth_bank` when the client authenticated (`{auth_authen}` present)
6. `myusers_bank` when the mail is originating and the sender's domain is local

After the authentication check (the pipeline calls `by_auth`, then `extend`), once the
results are known; each match appends, as above:
7. `auth_result_policy[KEY]` for every result key of the message (auth.Results.keys(),
   "dmarc=fail"), in the order the keys are written
8. `author_to_policy_bank` looked up by the author (the one From address, with the address
   keys of every lookup: ".paypal.com" covers paypal.com and its subdomains), loaded only
   when a DKIM signature passed whose d= is the author's domain or a parent of it within
   its organizational domain (auth.dmarc.author_aligned). A pass means the key was at least
   `dkim_min_key_bits` (else the result is `policy`); a failed, too small or unaligned
   signature loads nothing (logged when the lookup would have matched). amavisd-new takes
   only d= equal to the author domain, and also looks up "author/@signer" for third-party
   signatures (not done here).
The author's banks come last, so they override a bank chosen by a result (a verified
paypal.com whose SPF failed through a forwarder is still paypal.com).

Settings that are mappings (smtp_reason_by_ccat) merge key by key unless the bank lists
them under `replace:`. Merged policies are cached per bank path inside the Config snapshot.
A lookup that fails raises `lookups.LookupFailed`; the caller turns it into TEMPFAIL.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from pymavis.auth import dmarc as dmarc_mod
from pymavis.config import Config


@dataclass(frozen=True)
class SelectionFacts:
    """What bank selection looks at, taken from the connection's macros and envelope."""

    daemon_name: str | None = None
    daemon_port: int | None = None
    client_ip: str | None = None
    auth_authen: str | None = None
    sender: str | None = None


class Policy:
    """The merged settings of the default bank plus the chosen banks. Read-only."""

    __slots__ = ("bank_path", "_settings")

    def __init__(self, bank_path: tuple, settings: dict):
        object.__setattr__(self, "bank_path", bank_path)
        object.__setattr__(self, "_settings", MappingProxyType(settings))

    def __getattr__(self, name):
        try:
            return self._settings[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Policy is read-only")

    @property
    def bank_path_str(self) -> str:
        return "/".join(self.bank_path) or "DEFAULT"

    def is_local(self, address: str) -> bool:
        """Whether the address's domain is one of ours (local_domains)."""
        hit = self.local_domains.lookup_address(address, delimiter=self.recipient_delimiter, is_local=False)
        return bool(hit and hit.value)

    def rcpt_value(self, name: str, address: str, *, is_local: bool | None = None):
        """A per-recipient setting's value for `address`; the setting's default when no table answers."""
        chain = self._settings[name]
        if is_local is None:
            is_local = self.is_local(address)
        hit = chain.lookup_address(address, delimiter=self.recipient_delimiter, is_local=is_local)
        return hit.value if hit is not None else _FALLBACK.get(name, False)


# When no table of a per-recipient lookup answers: bypass/lovers False, these otherwise.
_FALLBACK = {"message_size_limit": 0, "banned_filename_maps": ("DEFAULT",), "score_sender": 0.0,
             **{name: None for name in ("spam_tag_level", "spam_tag2_level", "spam_tag3_level", "spam_kill_level",
                                        "spam_dsn_cutoff_level", "spam_quarantine_cutoff_level", "spam_subject_tag",
                                        "spam_subject_tag2", "spam_subject_tag3", "addr_extension_spam",
                                        "virus_admin", "spam_admin", "banned_admin", "bad_header_admin",
                                        *(f"{w}_quarantine_to" for w in ("virus", "banned", "spam", "bad_header",
                                                                         "unchecked", "oversized")))}}


def merge(config: Config, bank_path: tuple) -> Policy:
    cached = config._merged.get(bank_path)
    if cached is not None:
        return cached
    settings = dict(config.default_policy)
    for name in bank_path:
        bank = config.banks[name]
        for key, value in bank.settings.items():
            if isinstance(value, dict) and key not in bank.replace and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
    policy = Policy(bank_path, settings)
    config._merged[bank_path] = policy
    return policy


def select(config: Config, facts: SelectionFacts) -> Policy:
    """The bank path for these facts, merged. Raises lookups.LookupFailed."""
    path: list[str] = []

    def add(name):
        if name and name not in path:
            path.append(name)

    g = config.settings
    if facts.daemon_name is not None:
        add(g["daemon_name_policy"].get(facts.daemon_name))
    if facts.daemon_port is not None:
        add(g["interface_policy"].get(facts.daemon_port))
    if facts.client_ip:
        for chain, bank in config.client_ipaddr_policy:
            hit = chain.lookup_ip(facts.client_ip)
            if hit is not None and hit.value:
                add(bank)
                break
        if g["mynets_bank"]:
            hit = merge(config, tuple(path)).mynetworks.lookup_ip(facts.client_ip)
            if hit is not None and hit.value:
                add(g["mynets_bank"])
    if facts.auth_authen and g["auth_bank"]:
        add(g["auth_bank"])
    if g["myusers_bank"] and facts.sender:
        current = merge(config, tuple(path))
        if current.originating and current.is_local(facts.sender):
            add(g["myusers_bank"])
    return merge(config, tuple(path))


@dataclass(frozen=True)
class AuthBanks:
    """What the authentication results choose (by_auth): banks to load, each with why."""

    loaded: tuple[tuple[str, str], ...] = ()   # (bank, why), in loading order
    refused: tuple[str, ...] = ()              # author banks not loaded, and why (for the log)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for name, _ in self.loaded))


def auth_may_load_banks(config: Config | None) -> bool:
    """Whether the authentication results can choose a bank in this configuration."""
    return config is not None and bool(config.settings["auth_result_policy"]
                                       or config.settings["author_to_policy_bank"].tables)


def by_auth(config: Config, policy: Policy, results, from_values) -> AuthBanks:
    """The banks that `results` (auth.Results) and the From field values choose (module doc,
    7. and 8.); names not defined (only a regex's $1 can make one) are left out and said
    in `refused`. Raises lookups.LookupFailed."""
    loaded, refused = [], []
    g = config.settings
    keys = results.keys()
    for key, names in g["auth_result_policy"].items():
        if key in keys:
            loaded += [(name, f"auth_result_policy {key}") for name in names]
    author = dmarc_mod.author_address(list(from_values))
    chain = g["author_to_policy_bank"]
    hit = chain.lookup_address(author, delimiter=policy.recipient_delimiter, is_local=False) \
        if author and chain.tables else None
    if hit is not None and hit.value:
        names = ",".join(hit.value)
        domain = author.rpartition("@")[2].lower().rstrip(".")
        sig = next((r for r in results.dkim or () if r.result == "pass" and r.domain
                    and dmarc_mod.author_aligned(r.domain, domain)), None)
        if sig is None:
            seen = "; ".join(f"dkim={r.result} d={r.domain}" + (f" ({r.reason})" if r.reason else "")
                             for r in results.dkim or ()) or ("no signature" if results.dkim is not None
                                                               else "DKIM not verified")
            refused.append(f"author_to_policy_bank {names} for {domain} not loaded: no valid DKIM signature "
                           f"by {domain} or a parent domain ({seen})")
        else:
            bits = f", {sig.key_bits}-bit key" if sig.key_bits else ""
            why = (f"author {domain} (DKIM d={sig.domain} s={sig.selector}{bits}; "
                   f"author_to_policy_bank key {(hit.key or hit.table).lstrip('@')})")
            loaded += [(name, why) for name in hit.value]
    known = [(name, why) for name, why in loaded if name in config.banks]
    refused += [f"policy bank {name!r} ({why}) is not defined: ignored" for name, why in loaded
                if name not in config.banks]
    return AuthBanks(tuple(known), tuple(refused))


def extend(config: Config, policy: Policy, names) -> Policy:
    """`policy` with the banks `names` appended to its path (those already on it are not
    loaded twice), merged."""
    path = list(policy.bank_path)
    path += [n for n in dict.fromkeys(names) if n not in path]
    return merge(config, tuple(path))
