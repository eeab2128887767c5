"""ARC sealing (RFC 8617) of passed mail, for hosts that forward it (mailing lists, forwarders).

`seal(message, key, authserv_id)` adds our ARC set to the message as it will leave (after our
own header edits, our Authentication-Results and a DKIM-Signature of ours, which the caller
applies first) and returns its three fields as (name, one-line value), ARC-Seal first; the
caller inserts them at the top in reverse, so the seal ends up on top:

| field                      | what it holds                                                    |
|----------------------------|------------------------------------------------------------------|
| ARC-Seal                   | i=N+1, cv= (the arc= result in our field), a signature over the  |
|                            | ARC sets (only ours when cv=fail)                                |
| ARC-Message-Signature      | i=N+1, a DKIM-like signature (relaxed/relaxed) of the body and   |
|                            | of the key's headers, chosen as dkimsign does (signed_headers)   |
| ARC-Authentication-Results | i=N+1 and our Authentication-Results (the field with our          |
|                            | authserv-id, as dkimpy re-writes it: comments dropped)           |

dkimpy takes N, the newest instance, from the message and cv= from the `arc=` entry of our
Authentication-Results field, which must be there: the caller seals only when ARC was
verified with a result of pass, fail or none (never temperror: cv= has no such value). The
key is `arc_sealing` (config/schema.py): a dkimsign.SigningKey, RSA only (RFC 8617 allows only
rsa-sha256, and dkimpy signs ARC with nothing else).

Failure: dkimpy refusing (no From field, i= would pass 50, a field it cannot parse) or a
field longer than header.MAX_CHARS (outcome.apply would cut it, breaking the seal) raises
dkimsign.SignFailed; the pipeline passes the mail unsealed with a warning, as for DKIM.
CPU: two RSA signatures in pure Python (dkimpy): about 20 ms for RSA-2048 here; it runs in
the pipeline's worker.
"""

from __future__ import annotations

import authres
import dkim

from .dkimsign import SignFailed, SigningKey, one_line, signed_headers
from .header import MAX_CHARS
from .keyfetch import DebugOnly

SEALABLE = ("pass", "fail", "none")   # arc= results a seal's cv= can carry
# Fields an ARC-Message-Signature may not sign: dkimpy refuses its SHOULD_NOT list (Received,
# Return-Path, DKIM-Signature, ...) and Authentication-Results; the ARC fields are the seal's.
NOT_SIGNED = frozenset({name.decode("ascii") for name in dkim.DKIM.SHOULD_NOT}
                       | {"authentication-results", "arc-seal", "arc-message-signature", "arc-authentication-results"})


def seal(message: bytes, key: SigningKey, authserv_id: str) -> tuple[tuple[str, str], ...]:
    """The new ARC set (module doc). Raises SignFailed."""
    include = signed_headers(message, key)
    try:
        fields = dkim.ARC(message, logger=DebugOnly(), signature_algorithm=b"rsa-sha256", linesep=b"\r\n").sign(
            key.selector.encode("ascii"), key.domain.encode("ascii"), key.private_key,
            authserv_id.encode("ascii"), include_headers=include)
    except (dkim.DKIMException, IndexError, ValueError, authres.core.AuthResError) as exc:
        # IndexError: dkimpy's parser on a broken header section; ValueError: an
        # Authentication-Results field of another host that is not UTF-8, or that authres rejects
        raise SignFailed(f"{type(exc).__name__}: {exc}") from None
    if not fields:
        raise SignFailed(f"dkimpy found no Authentication-Results field of {authserv_id} with arc= to seal")
    out = tuple(one_line(field) for field in fields)
    for name, value in out:
        if len(value) > MAX_CHARS:
            raise SignFailed(f"{name} would be {len(value)} characters, more than the {MAX_CHARS} "
                             "a header value may have here")
    return out
