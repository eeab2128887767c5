"""ARC (RFC 8617): the chain of ARC sets on arriving mail, verified with dkimpy: one result.

`verify(message, lookup, min_key_bits=1024)` returns one `ArcResult`. The steps are RFC 8617
5.2's, cheapest first, and the first failure ends the walk: the form of every set is checked
before any key is looked up, then the newest ARC-Message-Signature (AMS), then every
ARC-Seal (AS) from the newest down.

| what happened                                                          | result    | reason (the comment)       |
|------------------------------------------------------------------------|-----------|----------------------------|
| no ARC-Seal, ARC-Message-Signature or ARC-Authentication-Results field | none      |                            |
| the newest AMS and every seal verify                                   | pass      | i=N (how many sets)        |
| more than MAX_INSTANCES sets, a set missing, one lacking a field or    | fail      | what is wrong              |
| holding two, a field without an instance number                        |           |                            |
| the newest seal says cv=fail (an earlier hop found the chain broken)   | fail      | ARC-Seal i=N says cv=fail  |
| cv= of i=1 is not none, or of a later seal not pass                    | fail      | ARC-Seal i=K has cv=...    |
| the newest AMS does not verify: the body or a signed field changed, no | fail      | ARC-Message-Signature i=N: |
| key, a revoked or unparsable key, an RSA key below min_key_bits        |           | why                        |
| a seal does not verify (the same reasons)                              | fail      | ARC-Seal i=K: why          |
| a field dkimpy cannot use (tags, a= not rsa-sha256, t= in the future)  | fail      | ARC set i=K: why           |
| a key lookup timed out or the name server failed                       | temperror | key lookup failed: why     |

A missing key makes the chain fail: RFC 8617 knows only pass, fail and none for a chain.
temperror is RFC 8601's (2.7), so that a DNS problem is never read as fail; arcseal.py
does not seal on it. Older AMSs are not verified: they cover the message as it was before
later hops changed it, and the chain's result does not depend on them (RFC 8617 5.2), so
no header.oldest-pass is reported.

Key lookups go through the one DNS function (keyfetch.KeyFetch, as for DKIM: a timeout
raises DnsTempError out of dkimpy). dkimpy's ARC.verify does the whole walk itself but
verifies every AMS, returns None for a chain a seal said failed, and keeps no reason for a
signature that did not verify; so we walk with its `verify_instance` and a subclass that
skips the older AMSs and notes why each signature failed (`_Chain.verify_sig`).

Limits: MAX_INSTANCES (RFC 8617 4.2.1: i= is 1 to 50), checked before any lookup. Work for
a chain of N sets: one body hash, N + 1 RSA verifications, at most N + 1 key lookups (the
message's resolver.Budget remembers answers: a hop's AMS and seal usually share a key).
CPU: 2.8 ms for a chain of two RSA-2048 sets on a small message here; the caller runs this in the
pipeline's worker.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from .keyfetch import DKIMPY_LOG, DebugOnly, KeyFetch, text, validation
from .resolver import DnsTempError, Lookup

MAX_INSTANCES = 50
MIN_KEY_BITS = 1024

SEAL, SIGNATURE, AAR = "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"
_NAMES = {name.lower().encode("ascii"): name for name in (AAR, SIGNATURE, SEAL)}
_FIELD = re.compile(rb"(?im)^arc-(?:seal|message-signature|authentication-results)[ \t]*:")


@dataclass(frozen=True)
class ArcResult:
    result: str                # pass fail none temperror
    instances: int = 0         # N, the newest set's i= (0: no ARC set)
    domain: str | None = None  # d= of the newest seal: who sealed last
    reason: str = ""


def field_count(message: bytes) -> int:
    """How many ARC fields the header section holds (without parsing it)."""
    return len(_FIELD.findall(re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]))


class _Chain(dkim.ARC):
    """dkimpy's ARC with our walk's two changes (module doc)."""

    def __init__(self, message: bytes, min_key_bits: int):
        super().__init__(message, logger=DebugOnly(), minkey=min_key_bits)
        self.newest = 0      # the instance whose AMS is verified
        self.instance = 0    # the instance verify_instance is verifying
        self.stopped = False  # the newest AMS failed: nothing else is looked up
        self.why: dict[str, str] = {}   # SEAL / SIGNATURE -> why it did not verify

    def verify_sig(self, sig, include_headers, sig_header, dnsfunc):
        kind = SEAL if sig_header[0].lower() == b"arc-seal" else SIGNATURE
        if (kind == SIGNATURE and self.instance != self.newest) or (kind == SEAL and self.stopped):
            return None
        dnsfunc.reset()
        try:
            ok = super().verify_sig(sig, include_headers, sig_header, dnsfunc)
        except dkim.DKIMException as exc:
            DKIMPY_LOG.debug("%s i=%d: %s", kind, self.instance, exc)
            if isinstance(exc, dkim.ValidationError):
                self.why[kind] = validation(str(exc))[1]
            elif isinstance(exc, dkim.KeyFormatError) and "too small" in str(exc):
                self.why[kind] = f"key too small: {self.keysize} bits < {self.minkey}"
            else:   # KeyFormatError after the lookup (digest too large for the modulus), MessageFormatError
                self.why[kind] = "bad key" if isinstance(exc, dkim.KeyFormatError) else "malformed field"
            ok = False
        if not ok:
            self.why.setdefault(kind, dnsfunc.problem() or "signature did not verify")
            self.stopped = self.stopped or kind == SIGNATURE
        return ok


def verify(message: bytes, lookup: Lookup, min_key_bits: int = MIN_KEY_BITS) -> ArcResult:
    """The chain's result (module doc)."""
    if not field_count(message):
        return ArcResult("none")
    try:
        chain = _Chain(message, min_key_bits)
    except (dkim.MessageFormatError, IndexError) as exc:   # IndexError: a continuation line before any field
        DKIMPY_LOG.debug("message not parsed: %s", exc)
        return ArcResult("fail", reason="header section cannot be parsed")
    newest, sets = chain.sorted_arc_headers()
    problem = _form(chain.headers, sets)
    if problem:
        return ArcResult("fail", newest, reason=problem)
    seals = {}
    for i, (name, value) in sets:
        if name.lower() == b"arc-seal":
            try:
                seals[i] = parse_tag_value(value)
            except InvalidTagValueList:
                return ArcResult("fail", newest, reason=f"ARC-Seal i={i} is malformed")
    domain = text(seals[newest].get(b"d"))
    problem = _chain_values(seals, newest)
    if problem:
        return ArcResult("fail", newest, domain, problem)
    fetch = KeyFetch(lookup)
    chain.newest = newest
    for instance in range(newest, 0, -1):
        chain.instance, chain.why = instance, {}
        try:
            out = chain.verify_instance(sets, instance, dnsfunc=fetch)
        except DnsTempError as exc:
            return ArcResult("temperror", newest, domain, f"key lookup failed: {exc.why}")
        except dkim.ValidationError as exc:   # a tag of the AMS or the seal, before any lookup
            DKIMPY_LOG.debug("ARC set i=%d: %s", instance, exc)
            return ArcResult("fail", newest, domain, f"ARC set i={instance}: {validation(str(exc))[1]}")
        except (dkim.DKIMException, IndexError) as exc:   # IndexError: no AMS dkimpy can find by its i=
            DKIMPY_LOG.debug("ARC set i=%d: %s: %s", instance, type(exc).__name__, exc)
            return ArcResult("fail", newest, domain, f"ARC set i={instance}: malformed field")
        if instance == newest and not out["ams-valid"]:
            return ArcResult("fail", newest, domain, f"{SIGNATURE} i={instance}: {chain.why.get(SIGNATURE)}")
        if not out["as-valid"]:
            return ArcResult("fail", newest, domain, f"{SEAL} i={instance}: {chain.why.get(SEAL)}")
    return ArcResult("pass", newest, domain)


def _form(headers, sets) -> str:
    """What is wrong with the form of the sets (RFC 8617 5.2 step 2), "" when nothing;
    `sets` is dkimpy's sorted_arc_headers: [(i, (name, value)), ...]."""
    fields = sum(1 for name, _ in headers if name.lower() in _NAMES)
    if len(sets) < fields:
        return "an ARC field without an instance number"
    instances = {i for i, _ in sets}
    if min(instances) < 1:
        return "an ARC field with i=0"
    newest = max(instances)
    if newest > MAX_INSTANCES:
        return f"i={newest}: more than {MAX_INSTANCES} ARC sets"
    counts = Counter((i, name.lower()) for i, (name, _) in sets)
    for i in range(1, newest + 1):
        for key, name in _NAMES.items():
            if counts[(i, key)] != 1:
                return f"ARC set i={i} has {counts[(i, key)]} {name} fields"
    return ""


def _chain_values(seals: dict, newest: int) -> str:
    """What is wrong with the seals' cv= values (RFC 8617 5.2 steps 3 and 4), "" when nothing."""
    cv = seals[newest].get(b"cv", b"")
    if cv == b"fail":
        return f"{SEAL} i={newest} says cv=fail"
    for i in range(newest, 0, -1):
        cv = seals[i].get(b"cv", b"")
        if cv != (b"none" if i == 1 else b"pass"):   # the comment shows only our words, not the message's
            return f"{SEAL} i={i} has " + (f"cv={cv.decode()}" if cv in (b"pass", b"fail", b"none") else "a bad cv=")
    return ""
