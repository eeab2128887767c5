"""DMARC (RFC 7489): our own small evaluator over the DKIM and SPF results.

1. The author domain: the domain of the one address in the one From field. No From, more
   than one, or no domain: permerror (RFC 7489 6.6.1 leaves such mail to local policy).
2. The policy: the TXT record at `_dmarc.<author domain>`, else at `_dmarc.<organizational
   domain>` (6.6.3). Only records starting `v=DMARC1`; more than one there: none. `p` must
   be none, quarantine or reject (a bad or missing p with an `rua` reads as none, 6.6.3;
   without one the record is unusable: permerror). `sp` applies when the record was found at
   the organizational domain for a subdomain author; `adkim`/`aspf` r or s; `pct` is shown.
3. Alignment (3.1): a DKIM pass whose d= is the author domain (strict) or has its
   organizational domain (relaxed); an SPF pass whose domain does the same.
4. The result: pass when one is aligned; else temperror when a lookup for the record failed,
   or an aligned-by-domain DKIM or SPF result was temperror (a pass was possible: never
   fail on a DNS timeout); else fail. No record: none.

The organizational domain is the public suffix plus one label (publicsuffixlist, with the
Public Suffix List it ships: nothing is fetched at run time). What a DMARC failure does to
the message (reject, quarantine, a score) is not decided here but by the policy bank
(checks/auth.py, `dmarc_verdict`); `applied_policy` says which of p=reject / p=quarantine
applies to one message once `pct=` has sampled it (RFC 7489 6.6.4).

`author_aligned` is the alignment of a DKIM signature used to choose a policy bank by the
author (policy.py, amavisd-new's author domain signature): d= is the author domain or a
parent of it, within its organizational domain.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from email.utils import getaddresses

from .resolver import DnsTempError, Lookup

POLICIES = ("none", "quarantine", "reject")

_PSL = None
_PSL_LOCK = threading.Lock()


def org_domain(domain: str) -> str:
    """The organizational domain (RFC 7489 3.2): example.co.uk for a.b.example.co.uk; a
    public suffix itself, or a name the list does not know, stays as it is."""
    global _PSL
    with _PSL_LOCK:
        if _PSL is None:
            from publicsuffixlist import PublicSuffixList
            _PSL = PublicSuffixList()   # ~0.1 s: once per process
    domain = domain.lower().rstrip(".")
    return _PSL.privatesuffix(domain) or domain


def aligned(domain: str, author: str, mode: str) -> bool:
    domain, author = domain.lower().rstrip("."), author.lower().rstrip(".")
    if mode == "s":
        return domain == author
    return org_domain(domain) == org_domain(author)


@dataclass(frozen=True)
class Record:
    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True)
class DmarcResult:
    result: str                     # pass fail none temperror permerror
    from_domain: str | None = None
    policy: str | None = None       # the p (or sp) that applies
    record: Record | None = None
    reason: str = ""


def parse_record(text: bytes) -> Record | None:
    """A DMARC record's tags; None when it is unusable (module doc, 2.)."""
    try:
        body = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    tags = {}
    for part in body.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    pct = tags.get("pct", "100")
    return Record(p=p, sp=sp if sp in POLICIES else None,
                  adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
                  aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
                  pct=max(0, min(100, int(pct))) if pct.isdigit() else 100)


def _is_dmarc(text: bytes) -> bool:
    return text.lstrip()[:8] == b"v=DMARC1" and text.lstrip()[8:9] in (b"", b";", b" ", b"\t")


def author_address(from_values: list[str]) -> str | None:
    """The single From address (with a domain of two labels or more); None when there is
    not exactly one."""
    if len(from_values) != 1:
        return None
    addresses = [addr for _, addr in getaddresses(from_values) if addr]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
    if not (domain and "." in domain and all(label for label in domain.split("."))):
        return None
    return addresses[0].strip()


def author_domain(from_values: list[str]) -> str | None:
    """The domain of the single From address; None when there is not exactly one."""
    address = author_address(from_values)
    return address.rpartition("@")[2].strip().lower().rstrip(".") if address else None


def author_aligned(signer: str, author: str) -> bool:
    """Whether a signature by d=`signer` speaks for `author`'s domain: the same domain or a
    parent of it, never a public suffix (d=com or d=co.uk speaks for nobody) and never
    above the author's organizational domain."""
    signer, author = signer.lower().rstrip("."), author.lower().rstrip(".")
    if not (signer == author or author.endswith("." + signer)):
        return False
    return org_domain(signer) == org_domain(author) and not _is_public(signer)


def _is_public(domain: str) -> bool:
    org_domain(domain)   # loads the list
    return _PSL.is_public(domain)


# pct= sampled out (RFC 7489 6.6.4): the next less strict policy applies.
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def applied_policy(result: DmarcResult, sample: int) -> str:
    """The policy that applies to a failing message: its p (or sp), or the next weaker one
    when `sample` (0..99, the message's draw) is not below the record's pct."""
    policy = result.policy or "none"
    pct = result.record.pct if result.record is not None else 100
    return policy if sample < pct else _WEAKER[policy]


def find_record(domain: str, lookup: Lookup) -> tuple[Record | None, str | None, str]:
    """(record, where it was found, problem): problem is '' (none found or one found),
    'multiple', 'unusable'. Raises DnsTempError."""
    org = org_domain(domain)
    for where in (domain, org) if org != domain else (domain,):
        records = [t for t in lookup(f"_dmarc.{where}", "TXT") if _is_dmarc(t)]
        if len(records) > 1:
            return None, where, "multiple"
        if records:
            record = parse_record(records[0])
            return record, where, "" if record else "unusable"
    return None, None, ""


def evaluate(from_values: list[str], dkim_results, spf_result, lookup: Lookup) -> DmarcResult:
    """The DMARC result for a message (module doc): `from_values` are its From fields'
    values, `dkim_results` DkimResult values, `spf_result` an SpfResult or None."""
    author = author_domain(from_values)
    if author is None:
        return DmarcResult("permerror", reason="not exactly one From address with a domain")
    try:
        record, where, problem = find_record(author, lookup)
    except DnsTempError as exc:
        return DmarcResult("temperror", author, reason=f"policy lookup failed: {exc.why}")
    if problem == "multiple":
        return DmarcResult("none", author, reason=f"more than one DMARC record at _dmarc.{where}")
    if problem == "unusable":
        return DmarcResult("permerror", author, reason=f"bad DMARC record at _dmarc.{where}")
    if record is None:
        return DmarcResult("none", author)
    policy = record.sp if where != author and record.sp else record.p
    dkim_ok = [r for r in dkim_results if r.domain and aligned(r.domain, author, record.adkim)]
    spf_ok = spf_result is not None and aligned(spf_result.domain, author, record.aspf)
    if any(r.result == "pass" for r in dkim_ok) or (spf_ok and spf_result.result == "pass"):
        return DmarcResult("pass", author, policy, record)
    if any(r.result == "temperror" for r in dkim_ok) or (spf_ok and spf_result.result == "temperror"):
        return DmarcResult("temperror", author, policy, record, "an aligned DKIM or SPF check failed temporarily")
    return DmarcResult("fail", author, policy, record, "no aligned DKIM or SPF pass")
