"""DKIM: every DKIM-Signature of a message verified with dkimpy, one result each.

`verify(message, lookup, min_key_bits=1024)` returns one `DkimResult` per signature, top
down, at most MAX_SIGNATURES of them (RFC 6376 6.1 lets a verifier limit the work; rspamd's
default is 5 too: a message with 50 signatures is 50 key lookups and 50 body hashes).

| what happened                                                   | result    | reason          |
|-----------------------------------------------------------------|-----------|-----------------|
| signature verified, key big enough, not rsa-sha1                 | pass      |                 |
| verified with an RSA key below `min_key_bits` (ed25519 is 256)   | policy    | key too small   |
| verified, a=rsa-sha1 (RFC 8301: MUST NOT be considered valid)    | policy    | rsa-sha1        |
| the body hash or the signature does not match                    | fail      | body hash / signature did not verify |
| no key record, revoked key (p=), a key that cannot be parsed     | permerror | no key / key revoked / bad key |
| the signature field is malformed, expired, from the future       | permerror | what is wrong   |
| the key lookup timed out or the name server failed               | temperror | DNS error       |

Key lookups go through the one DNS function (auth/resolver.py), by keyfetch.KeyFetch: a
timeout raises DnsTempError out of dkimpy (temperror, never fail), and it tells a missing
key from one that does not parse. dkimpy's own key size check is off (minkey=0): a small key
is `policy`, which we decide here.

The reasons are our own fixed words (they go into the Authentication-Results comment;
keyfetch.validation reads dkimpy's ValidationError); dkimpy's messages, which quote the
signature's bytes, are only logged at debug level.
CPU: dkimpy hashes in C (hashlib) and verifies RSA in pure Python: 1.2 ms of CPU for one
RSA-2048 signature on a small message here, 1.8 ms with SPF and DMARC too (fake DNS); the
caller runs this in the pipeline's worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from .keyfetch import DKIMPY_LOG, DebugOnly, KeyFetch, text, validation
from .resolver import DnsTempError, Lookup

MAX_SIGNATURES = 5
MIN_KEY_BITS = 1024    # RFC 8301 3.2: verifiers MUST NOT consider smaller RSA keys valid

_SIG_NAME = b"dkim-signature"


@dataclass(frozen=True)
class DkimResult:
    result: str                  # pass fail policy neutral temperror permerror (RFC 8601 2.7.1)
    domain: str | None = None    # d=
    selector: str | None = None  # s=
    identity: str | None = None  # i=
    algorithm: str | None = None  # a=
    b: str | None = None         # the signature's b= (whitespace removed); header.b shows its start
    key_bits: int | None = None
    reason: str = ""


def signature_count(message: bytes) -> int:
    """How many DKIM-Signature fields the header section holds (without parsing it)."""
    head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
    return len(re.findall(rb"(?im)^dkim-signature[ \t]*:", head))


def verify(message: bytes, lookup: Lookup, min_key_bits: int = MIN_KEY_BITS,
           max_signatures: int = MAX_SIGNATURES) -> tuple[DkimResult, ...]:
    """One DkimResult per signature (module doc); () when the message has none."""
    try:
        d = dkim.DKIM(message, logger=DebugOnly(), minkey=0)
    except (dkim.MessageFormatError, IndexError) as exc:   # IndexError: a continuation line before any field
        DKIMPY_LOG.debug("message not parsed: %s", exc)
        count = min(signature_count(message), max_signatures)
        return tuple(DkimResult("permerror", reason="header section cannot be parsed") for _ in range(count))
    sigs = [value for name, value in d.headers if name.lower() == _SIG_NAME]
    fetch = KeyFetch(lookup)
    return tuple(_one(d, i, value, fetch, min_key_bits) for i, value in enumerate(sigs[:max_signatures]))


def _one(d: dkim.DKIM, idx: int, value: bytes, fetch: KeyFetch, min_key_bits: int) -> DkimResult:
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList:
        return DkimResult("permerror", reason="malformed signature")
    fields = dict(domain=text(tags.get(b"d")), selector=text(tags.get(b"s")), identity=text(tags.get(b"i")),
                  algorithm=text(tags.get(b"a")), b=text(tags.get(b"b")))
    fetch.reset()
    try:
        ok = d.verify(idx, dnsfunc=fetch)
    except DnsTempError as exc:
        return DkimResult("temperror", **fields, reason=f"key lookup failed: {exc.why}")
    except dkim.ValidationError as exc:
        DKIMPY_LOG.debug("signature %d: %s", idx, exc)
        result, reason = validation(str(exc))
        return DkimResult(result, **fields, reason=reason)
    except dkim.KeyFormatError as exc:   # raised after the lookup: digest too large for the modulus
        DKIMPY_LOG.debug("signature %d: %s", idx, exc)
        return DkimResult("permerror", **fields, reason="bad key")
    except dkim.DKIMException as exc:    # MessageFormatError, UnknownKeyTypeError, ...
        DKIMPY_LOG.debug("signature %d: %s: %s", idx, type(exc).__name__, exc)
        return DkimResult("permerror", **fields, reason="malformed signature")
    if fetch.problem():
        return DkimResult("permerror", **fields, reason=fetch.problem())
    bits = (d.keysize or None) if fetch.found else None
    if not ok:
        return DkimResult("fail", **fields, key_bits=bits, reason="signature did not verify")
    if d.ktag == b"rsa" and bits is not None and bits < min_key_bits:
        return DkimResult("policy", **fields, key_bits=bits, reason=f"key too small: {bits} bits < {min_key_bits}")
    if fields["algorithm"] == "rsa-sha1":
        return DkimResult("policy", **fields, key_bits=bits, reason="rsa-sha1 is not accepted (RFC 8301)")
    return DkimResult("pass", **fields, key_bits=bits)

