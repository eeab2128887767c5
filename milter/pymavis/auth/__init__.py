"""Mail authentication of arriving mail: DKIM, SPF, DMARC, ARC, and our Authentication-Results.

    authenticate(message, facts, settings, lookup) -> Results

runs, in this order (DMARC needs the other two):
1. DKIM (dkimverify.py): every signature, at most dkimverify.MAX_SIGNATURES;
2. SPF (spfcheck.py): the client address for MAIL FROM (or HELO for the null sender);
3. DMARC (dmarc.py): the From domain's policy, aligned with 1 and 2;
4. ARC (arcverify.py): the chain of ARC sets earlier hops sealed, at most
   arcverify.MAX_INSTANCES of them.
Each runs only when its setting says so (`Settings`, from the policy bank; DMARC brings
DKIM and SPF along, sealing brings ARC); a method not run is None in Results and left out
of the header (header.py). SPF, DMARC and ARC are not run for originating mail (our own
users: SPF of a submission client means nothing, and nobody sealed their mail before us),
DKIM is. Sealing passed mail (arcseal.py) is the pipeline's, after our header edits.

All DNS goes through `lookup` (resolver.py): tests give a dict of records or a function that
raises DnsTempError; the milter gives one on dnspython, wrapped in a resolver.Budget per
message. Nothing here raises for a DNS problem: it is a temperror result.

The results are also lookup keys (`Results.keys()`: "dkim=pass", "spf=fail", "dmarc=fail",
"arc=pass", one per method and result found; RESULT_KEYS are all there can be): the global
`auth_result_policy` loads policy banks by them (policy.py).

Package layout: resolver (the one DNS function), keyfetch (what DKIM and ARC give dkimpy),
dkimverify, spfcheck, dmarc, arcverify, header (the field's text and the authserv-id of an
existing field); dkimsign and arcseal sign passed mail, genkey makes keys. checks/auth.py
is the check that calls this from the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import arcverify, dkimverify, dmarc, spfcheck
from .resolver import Lookup


@dataclass(frozen=True)
class Settings:
    dkim: bool = True
    spf: bool = True
    dmarc: bool = True
    arc: bool = False           # off unless asked: Settings() is "DKIM, SPF and DMARC"
    min_key_bits: int = dkimverify.MIN_KEY_BITS
    receiver: str = "unknown"   # our host name, for SPF's %{r} macro


@dataclass(frozen=True)
class Facts:
    """What the checks need from the SMTP transaction."""

    client_ip: str | None
    helo: str | None
    mail_from: str                 # "" for the null sender
    from_values: tuple[str, ...]   # the values of the message's From fields
    originating: bool = False


# What each method can answer (RFC 8601 2.7); dkim=none: no signature. A method not checked has no key.
RESULTS = {"dkim": ("pass", "fail", "policy", "neutral", "temperror", "permerror", "none"),
           "spf": ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"),
           "dmarc": ("pass", "fail", "none", "temperror", "permerror"),
           "arc": ("pass", "fail", "none", "temperror")}   # arcverify.py: a chain has no permerror
RESULT_KEYS = tuple(f"{method}={result}" for method, results in RESULTS.items() for result in results)


@dataclass(frozen=True)
class Results:
    dkim: tuple[dkimverify.DkimResult, ...] | None = None   # None: not checked; (): no signature
    spf: spfcheck.SpfResult | None = None
    dmarc: dmarc.DmarcResult | None = None
    arc: arcverify.ArcResult | None = None

    def summary(self) -> str:
        """For the log: 'dkim=pass:example.com spf=pass dmarc=pass arc=pass'."""
        parts = []
        if self.dkim is not None:
            parts.append("dkim=" + (",".join(f"{r.result}:{r.domain}" for r in self.dkim) or "none"))
        return " ".join(parts + self._single())

    def keys(self) -> frozenset[str]:
        """"method=result" for every result found: dkim=pass when any signature passed,
        dkim=none when there is none; nothing for a method that was not checked."""
        keys = set()
        if self.dkim is not None:
            keys.update(f"dkim={r.result}" for r in self.dkim)
            if not self.dkim:
                keys.add("dkim=none")
        keys.update(self._single())
        return frozenset(keys)

    def _single(self) -> list[str]:
        """"method=result" of the methods with one result (SPF, DMARC, ARC) that were checked."""
        return [f"{method}={r.result}" for method, r in (("spf", self.spf), ("dmarc", self.dmarc), ("arc", self.arc))
                if r is not None]


def authenticate(message: bytes, facts: Facts, settings: Settings, lookup: Lookup) -> Results:
    """DMARC needs DKIM and SPF: with `dmarc` on they run (and are shown) even when their
    own setting is off."""
    remote = not facts.originating
    dkim_results = spf_result = dmarc_result = arc_result = None
    if settings.dkim or (settings.dmarc and remote):
        dkim_results = dkimverify.verify(message, lookup, settings.min_key_bits)
    if remote and (settings.spf or settings.dmarc):
        spf_result = spfcheck.check(facts.client_ip, facts.mail_from, facts.helo, lookup, settings.receiver)
    if remote and settings.dmarc:
        dmarc_result = dmarc.evaluate(list(facts.from_values), dkim_results, spf_result, lookup)
    if remote and settings.arc:
        arc_result = arcverify.verify(message, lookup, settings.min_key_bits)
    return Results(dkim_results, spf_result, dmarc_result, arc_result)
