"""DKIM signing of originating mail, with the key chosen by the author domain (dkimpy).

`dkim_signing_keys` (config/schema.py) maps a domain to a key: `example.com` signs mail
whose From domain is example.com; `.example.com` also signs its subdomains (the exact
entry wins, then the nearest parent). Each key: `selector`, `key_file` (PEM RSA, PKCS#1 or
PKCS#8; for ed25519 the base64 seed that dkimpy's dknewkey writes), `algorithm`
(rsa-sha256 or ed25519-sha256), `headers` to sign (those present, every occurrence), and
`oversign` (signed once more than they occur, so none can be added later: From, Subject,
Date by default, RFC 6376 8.15). Canonicalization relaxed/simple. No l= (a body that
may grow is a body anyone may extend), and t= but no x=. Keys are read and
checked when the configuration loads: a bad key is a load error, not a failure at the
first message.

`signature(message, key)` signs the message as it will leave (after our own header edits,
which the caller applies first) and returns the DKIM-Signature value on one line
(outcome.apply writes single-line values; under relaxed header canonicalization the
folding does not count). The caller inserts it at the top.

CPU: RSA-2048 signing is pure Python in dkimpy: 11 ms of CPU for a small message here
(ed25519: 0.3 ms); it runs in the pipeline's worker. Failure: a message that cannot be signed (no From,
a header dkimpy refuses) raises SignFailed; the pipeline passes it unsigned with a warning,
never a tempfail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dkim

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
DEFAULT_HEADERS = ("from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "mime-version",
                   "content-type", "content-transfer-encoding", "content-id", "content-description",
                   "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
                   "in-reply-to", "references", "list-id", "list-help", "list-unsubscribe", "list-subscribe",
                   "list-post", "list-owner", "list-archive")
DEFAULT_OVERSIGN = ("from", "subject", "date")


class BadKey(ValueError):
    """A signing key that cannot be used (the message says why)."""


class SignFailed(Exception):
    """dkimpy refused to sign this message (no From field, a header that must not be signed)."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str
    private_key: bytes = b""
    headers: tuple[str, ...] = DEFAULT_HEADERS
    oversign: tuple[str, ...] = DEFAULT_OVERSIGN

    def __repr__(self):   # never the key in a log line or a traceback
        return f"SigningKey({self.domain!r}, {self.selector!r}, {self.algorithm!r})"


def read_key(path: str, algorithm: str, max_rsa_bits: int | None = None) -> bytes:
    """The key file's bytes, checked for `algorithm` (and an RSA key's size against
    `max_rsa_bits`, for ARC: config/schema.py). Raises BadKey (and OSError)."""
    with open(path, "rb") as f:
        data = f.read().replace(b"\r\n", b"\n")
    if algorithm == "rsa-sha256":
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key
        try:
            key = parse_pem_private_key(data)
        except UnparsableKeyError as exc:
            raise BadKey(f"{path}: not a PEM RSA private key ({exc})") from None
        bits = key["modulus"].bit_length()
        if bits < 1024:
            raise BadKey(f"{path}: a {bits}-bit RSA key is too small to sign with (RFC 8301: at least 1024)")
        if max_rsa_bits is not None and bits > max_rsa_bits:
            raise BadKey(f"{path}: a {bits}-bit RSA key is too large here (at most {max_rsa_bits} bits: "
                         "its signature must fit a one-line header value)")
        return data
    import nacl.encoding
    import nacl.exceptions
    import nacl.signing
    try:
        nacl.signing.SigningKey(data.strip(), encoder=nacl.encoding.Base64Encoder)
    except (nacl.exceptions.ValueError, nacl.exceptions.TypeError, ValueError) as exc:
        raise BadKey(f"{path}: not a base64 ed25519 private key ({exc})") from None
    return data.strip()


def key_for(keys: dict, author_domain: str | None) -> SigningKey | None:
    """The key for this From domain: the exact entry, else the nearest `.parent` entry."""
    if not author_domain:
        return None
    domain = author_domain.lower().rstrip(".")
    if domain in keys:
        return keys[domain]
    labels = domain.split(".")
    for i in range(len(labels)):
        hit = keys.get("." + ".".join(labels[i:]))
        if hit is not None:
            return hit
    return None


def header_names(message: bytes) -> list[str]:
    """The field names of the header section, in order, lowercased."""
    head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
    return [m.group(1).decode("ascii").lower() for m in re.finditer(rb"(?m)^([\x21-\x39\x3b-\x7e]+)[ \t]*:", head)]


def signed_headers(message: bytes, key: SigningKey) -> list[bytes]:
    """The h= list for `key`: its headers present (every occurrence), then its oversign
    ones once more. Raises SignFailed without a From field. (arcseal.py signs the same.)"""
    present = header_names(message)
    if "from" not in present:
        raise SignFailed("the message has no From field")
    wanted = set(key.headers) | set(key.oversign)
    include = [name for name in present if name in wanted] + [name for name in key.oversign]
    return [name.encode("ascii") for name in include]


def one_line(field: bytes) -> tuple[str, str]:
    """(name, value) of a field dkimpy made, its folding taken out (outcome.apply writes
    single-line values; under relaxed header canonicalization the folding does not count)."""
    name, _, value = field.partition(b":")
    return name.decode("ascii"), re.sub(rb"\r?\n[ \t]+", b" ", value).strip().decode("ascii")


def signature(message: bytes, key: SigningKey) -> str:
    """The DKIM-Signature value (one line) for `message` as it will leave. Raises SignFailed."""
    include = signed_headers(message, key)
    try:
        field = dkim.sign(message, key.selector.encode("ascii"), key.domain.encode("ascii"), key.private_key,
                          signature_algorithm=key.algorithm.encode("ascii"), canonicalize=(b"relaxed", b"simple"),
                          include_headers=include, linesep=b"\r\n")
    except (dkim.DKIMException, IndexError) as exc:   # IndexError: dkimpy's parser on a broken header section
        raise SignFailed(f"{type(exc).__name__}: {exc}") from None
    return one_line(field)[1]
