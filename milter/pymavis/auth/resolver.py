"""Every DNS lookup of the authentication checks goes through one function: `Lookup`.

    lookup(name, rdtype) -> tuple of answers   (() when the name or the record type does not exist)

| rdtype      | one answer                                                        |
|-------------|-------------------------------------------------------------------|
| TXT         | bytes: one record, its character-strings joined (RFC 6376 3.6.2.2, RFC 7208 3.3) |
| A, AAAA     | str: an address                                                   |
| MX          | (preference: int, exchange: str)                                  |
| PTR         | str: a host name, without the final dot                           |

A lookup that could not be answered (timeout, SERVFAIL, no name server reachable, no
resolver configured) raises `DnsTempError`: the checks turn it into `temperror`, never into
"no record" and never into `fail`. Tests give the checks a function of their own (a dict of
records, one that raises); nothing here is needed for that.

`lookup_for(settings)` builds the running one on dnspython from the `dns:` settings:
`resolver` (addresses of the name servers to ask; null: /etc/resolv.conf) and `timeout_s`
(one lookup, retries included). It is one per configuration value (a reload that keeps
them keeps the resolver and its cache of `CACHE_ENTRIES` answers).

`Budget` wraps a lookup for one message: answers are remembered (SPF and DMARC may ask the
same name twice) and the message's lookups together stop after `deadline_s` seconds (the
`dns:` setting): a lookup asked after that raises DnsTempError("deadline") without asking,
so a message with many signatures on slow domains cannot hold a worker for minutes (the
lookup running when the deadline passes may still take up to `timeout_s`). It also counts
the lookups.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

Lookup = Callable[[str, str], tuple]

RDTYPES = ("TXT", "A", "AAAA", "MX", "PTR")
CACHE_ENTRIES = 10000   # answers kept by the running resolver (dnspython's LRU cache)


class DnsTempError(Exception):
    """A lookup that could not be answered now: the result is temperror."""

    def __init__(self, name: str, rdtype: str, why: str):
        super().__init__(f"{rdtype} {name}: {why}")
        self.name, self.rdtype, self.why = name, rdtype, why


def parse_server(spec: str) -> tuple[str, int]:
    """'192.0.2.53', '192.0.2.53:5353', '2001:db8::53', '[2001:db8::53]:5353' -> (address, port).
    Raises ValueError."""
    spec = spec.strip()
    port = 53
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{spec!r}: expected [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], spec)
    elif spec.count(":") == 1:
        host, _, text = spec.partition(":")
        port = _port(text, spec)
    else:
        host = spec
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{spec!r}: a name server is given by its IP address") from None
    return host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{spec!r}: bad port {text!r}")
    return int(text)


def dnspython_lookup(servers: tuple[tuple[str, int], ...] = (), timeout_s: float = 5.0) -> Lookup:
    """A Lookup on dnspython: `servers` ((address, port), ...; empty: /etc/resolv.conf)."""
    import dns.exception
    import dns.name
    import dns.nameserver
    import dns.resolver

    state: dict = {}
    lock = threading.Lock()

    def resolver() -> dns.resolver.Resolver:
        with lock:
            if "resolver" not in state:
                if servers:
                    r = dns.resolver.Resolver(configure=False)
                    r.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
                else:
                    r = dns.resolver.Resolver()   # raises NoResolverConfiguration without resolv.conf
                r.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
                state["resolver"] = r
            return state["resolver"]

    def lookup(name: str, rdtype: str) -> tuple:
        if rdtype not in RDTYPES:
            raise ValueError(f"unsupported record type {rdtype!r}")
        try:
            qname = dns.name.from_text(name.rstrip(".") + ".")
        except (dns.exception.DNSException, UnicodeError):
            return ()   # not a name that can exist (too long, empty label, bad IDNA)
        try:
            answer = resolver().resolve(qname, rdtype, lifetime=timeout_s, raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except dns.resolver.NoResolverConfiguration:
            raise DnsTempError(name, rdtype, "no resolver configured (/etc/resolv.conf)") from None
        except dns.exception.Timeout:
            raise DnsTempError(name, rdtype, f"timeout after {timeout_s:g} s") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(name, rdtype, f"no name server answered ({exc})") from None
        if answer.rrset is None:
            return ()
        return tuple(_value(rdtype, rdata) for rdata in answer.rrset)

    return lookup


def _value(rdtype: str, rdata):
    if rdtype == "TXT":
        return b"".join(rdata.strings)
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    return rdata.target.to_text(omit_final_dot=True)


_LOOKUPS: dict[tuple, Lookup] = {}
_LOOKUPS_LOCK = threading.Lock()


def lookup_for(settings: dict) -> Lookup:
    """The process-wide lookup for these `dns:` settings (config/schema.py)."""
    key = (settings["resolver"], settings["timeout_s"])
    with _LOOKUPS_LOCK:
        if key not in _LOOKUPS:
            _LOOKUPS[key] = dnspython_lookup(settings["resolver"] or (), settings["timeout_s"])
        return _LOOKUPS[key]


class Budget:
    """One message's lookups: remembered, counted, and stopped at a deadline (module doc)."""

    def __init__(self, lookup: Lookup, deadline_s: float, clock=time.monotonic):
        self._lookup = lookup
        self._clock = clock
        self._ends = clock() + deadline_s
        self.deadline_s = deadline_s
        self.asked = 0
        self.failed: list[DnsTempError] = []
        self._memo: dict[tuple[str, str], tuple | DnsTempError] = {}

    def __call__(self, name: str, rdtype: str) -> tuple:
        key = (name.lower().rstrip("."), rdtype)
        if key in self._memo:
            hit = self._memo[key]
            if isinstance(hit, DnsTempError):
                raise hit
            return hit
        if self._clock() >= self._ends:
            exc = DnsTempError(name, rdtype, f"deadline: this message's DNS lookups took {self.deadline_s:g} s")
            self.failed.append(exc)
            raise exc
        self.asked += 1
        try:
            answers = tuple(self._lookup(key[0], rdtype))
        except DnsTempError as exc:
            self._memo[key] = exc
            self.failed.append(exc)
            raise
        self._memo[key] = answers
        return answers
