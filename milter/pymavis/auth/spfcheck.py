"""SPF (RFC 7208) of the SMTP client for the envelope sender, with pyspf.

`check(client_ip, mail_from, helo, lookup)` gives one `SpfResult`: pass, fail, softfail,
neutral, none, permerror or temperror (pyspf's words are RFC 8601's). The identity checked
is the MAIL FROM address; for the null sender it is postmaster@HELO (RFC 7208 2.4), shown as
`smtp.helo=` instead of `smtp.mailfrom=`. No client address (a local submission), or a null
sender without HELO: no SPF result at all (None).

Limits are pyspf's, RFC 7208 4.6.4's: 10 mechanisms that need DNS, 2 void lookups, 10 MX or
PTR names; past them permerror. Its own time limit is off: the message's DNS budget
(resolver.Budget) bounds the time, and a lookup past it is temperror like any other DNS
failure.

DNS: pyspf calls its module-level function `spf.DNSLookup` and has no parameter for another
one. XXX: we replace that function once, when this module is imported, by one that asks
the lookup of the query running in this thread (a context variable set by our query
class) and falls back to pyspf's own when none is set (any other user of pyspf in the
process is unchanged). Our DnsTempError becomes pyspf's TempError there, so pyspf answers
temperror.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import spf

from .resolver import DnsTempError, Lookup

_CURRENT: contextvars.ContextVar[Lookup | None] = contextvars.ContextVar("pymavis_spf_lookup", default=None)
_PYSPF_LOOKUP = spf.DNSLookup


def _dispatch(name, qtype, strict=True, timeout=None):
    lookup = _CURRENT.get()
    if lookup is None:
        return _PYSPF_LOOKUP(name, qtype, strict, timeout)
    rdtype = "TXT" if qtype == "SPF" else qtype
    try:
        answers = lookup(str(name), rdtype)
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc.why}") from None
    if qtype == "SPF":   # the SPF record type is gone (RFC 7208 3.1); never ask it
        return []
    if rdtype == "TXT":
        return [((name, qtype), (value,)) for value in answers]
    return [((name, qtype), value) for value in answers]


spf.DNSLookup = _dispatch


class _Query(spf.query):
    def __init__(self, lookup: Lookup, **kwargs):
        super().__init__(**kwargs)
        self._lookup = lookup

    def check(self, spf=None):
        token = _CURRENT.set(self._lookup)
        try:
            return super().check(spf)
        finally:
            _CURRENT.reset(token)


@dataclass(frozen=True)
class SpfResult:
    result: str             # pass fail softfail neutral none permerror temperror
    identity: str           # "mailfrom" or "helo"
    value: str              # the address (mailfrom) or host name (helo) checked
    domain: str             # the domain whose policy was asked (DMARC aligns with it)
    reason: str = ""


def check(client_ip: str | None, mail_from: str, helo: str | None, lookup: Lookup,
          receiver: str = "unknown") -> SpfResult | None:
    """The SPF result for this client and sender (module doc); None when there is nothing to check."""
    if not client_ip or (not mail_from and not helo):
        return None
    identity = "mailfrom" if mail_from else "helo"
    value = mail_from if mail_from else helo
    domain = (mail_from.rpartition("@")[2] if "@" in mail_from else mail_from) if mail_from else helo
    try:
        query = _Query(lookup, i=client_ip, s=mail_from, h=helo or "", receiver=receiver, querytime=0)
    except spf.PermError as exc:   # an address pyspf cannot read
        return SpfResult("permerror", identity, value, domain.lower(), f"bad client address: {exc}")
    result, _code, explanation = query.check()
    return SpfResult(result, identity, value, domain.lower(), explanation if result != "pass" else "")
