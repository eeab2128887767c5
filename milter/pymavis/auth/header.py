"""The Authentication-Results field (RFC 8601): our one field's value, and the authserv-id
of a field already in the message.

    mx.example.com; dkim=pass (2048-bit key) header.d=example.com header.i=@example.com
        header.s=sel header.a=rsa-sha256 header.b="AbC/dEf+"; spf=pass smtp.mailfrom=a@example.com;
        dmarc=pass (p=reject dis=none) header.from=example.com; arc=pass (i=2)

(one line: outcome.apply gives the MTA single-line values, of at most 900 characters: past
MAX_CHARS the dkim= entries lose header.i and header.a, then the last ones are left out).
One `dkim=` per signature verified, `dkim=none` for none; `spf=` when SPF was checked, `dmarc=` when DMARC was,
`arc=` when ARC was (pass with the number of sets, fail and temperror with why, none); a
method that was not checked is left out. Every value that came from the message (d=, s=,
i=, the envelope sender, the From domain) is written as an RFC 2045 token when it is one,
else as a quoted-string (`"` and `\\` escaped, anything not printable ASCII as `?`), so a
signature cannot smuggle `; dmarc=pass` into our field. Comments are our own fixed words
(parentheses and backslashes taken out); the DMARC one shows the policy found and what we did
about it (`p=reject dis=quarantine`; checks/auth.py decides). header.b is the first 8
characters of b= (RFC 6008). Our field is also what an ARC seal of ours records
(arcseal.py: its ARC-Authentication-Results, and cv= from our arc=).
"""

from __future__ import annotations

import re

_TSPECIALS = set('()<>@,;:\\"/[]?=')
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?\Z")
HEADER_B_CHARS = 8
MAX_CHARS = 900   # outcome.apply cuts a header value at 900 characters (sanitize.header_text): stay below


def is_token(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) < 127 and c not in _TSPECIALS for c in text)


def quoted(text: str) -> str:
    clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pvalue(text: str) -> str:
    """A property value: a token, local-part@domain (or @domain), else a quoted-string."""
    if is_token(text):
        return text
    local, at, domain = text.rpartition("@")
    if at and _DOMAIN.match(domain) and (local == "" or _ATEXT.match(local)):
        return text
    return quoted(text)


def comment(text: str, limit: int = 80) -> str:
    clean = "".join(c for c in text if 32 <= ord(c) < 127 and c not in "()\\")
    clean = clean.strip()[:limit]
    return f" ({clean})" if clean else ""


def _dkim(r, short: bool = False) -> str:
    if r.result == "pass":
        note = f"{r.key_bits}-bit key" if r.key_bits else ""
    else:
        note = r.reason + (f", {r.key_bits}-bit key" if r.key_bits and "bits" not in r.reason else "")
    out = f"dkim={r.result}{comment(note)}"
    props = (("header.d", r.domain), ("header.i", None if short else r.identity), ("header.s", r.selector),
             ("header.a", None if short else r.algorithm), ("header.b", (r.b or "")[:HEADER_B_CHARS] or None))
    for prop, value in props:
        if value:
            out += f" {prop}={pvalue(value)}"
    return out


def _spf(r) -> str:
    prop = "smtp.mailfrom" if r.identity == "mailfrom" else "smtp.helo"
    note = "DNS error" if r.result == "temperror" else ""
    return f"spf={r.result}{comment(note)} {prop}={pvalue(r.value)}"


def _dmarc(r, disposition: str = "none") -> str:
    if r.policy:
        note = f"p={r.policy} dis={disposition}"
        if r.record is not None and r.record.pct != 100:
            note += f" pct={r.record.pct}"
    else:
        note = r.reason if r.result in ("permerror", "temperror") else ""
    out = f"dmarc={r.result}{comment(note)}"
    return out + (f" header.from={pvalue(r.from_domain)}" if r.from_domain else "")


def _arc(r) -> str:
    note = f"i={r.instances}" if r.result == "pass" else r.reason
    return f"arc={r.result}{comment(note)}"


def value(authserv_id: str, results, dmarc_disposition: str = "none") -> str | None:
    """Our field's value for auth.Results `results`; None when no method was checked.
    `dmarc_disposition` is what we did about the DMARC policy (`dis=`: none, quarantine)."""
    others = []
    if results.spf is not None:
        others.append(_spf(results.spf))
    if results.dmarc is not None:
        others.append(_dmarc(results.dmarc, dmarc_disposition))
    if results.arc is not None:
        others.append(_arc(results.arc))
    if results.dkim is None:
        dkim_parts = []
    elif not results.dkim:
        dkim_parts = ["dkim=none"]
    else:
        # too long for one field (many signatures, a long sender): without header.i and header.a,
        # then as many signatures as fit, in their order
        dkim_parts = [_dkim(r) for r in results.dkim]
        if len(_joined(authserv_id, dkim_parts + others)) > MAX_CHARS:
            dkim_parts = [_dkim(r, short=True) for r in results.dkim]
        while len(dkim_parts) > 1 and len(_joined(authserv_id, dkim_parts + others)) > MAX_CHARS:
            dkim_parts.pop()
    if not dkim_parts and not others:
        return None
    return _joined(authserv_id, dkim_parts + others)


def _joined(authserv_id: str, parts: list[str]) -> str:
    return f"{authserv_id}; " + "; ".join(parts)


def authserv_id_of(field_value: str) -> str | None:
    """The authserv-id an Authentication-Results value starts with (after any comments and
    white space; a token or a quoted-string), lowercased; None when there is none."""
    text, i, n = field_value, 0, len(field_value)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text[i] == "(":
            depth = 0
            while i < n:
                if text[i] == "\\":
                    i += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
                if depth == 0:
                    break
        else:
            break
    if i >= n:
        return None
    if text[i] == '"':
        out, i = [], i + 1
        while i < n and text[i] != '"':
            if text[i] == "\\" and i + 1 < n:
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out).lower() or None
    m = re.match(r"[^\s;()]+", text[i:])
    return m.group(0).lower() if m else None


def claims(field_value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results value claims to be ours (RFC 8601 5: such fields
    in arriving mail are forged or stale and are removed)."""
    return authserv_id_of(field_value) == authserv_id.lower()
