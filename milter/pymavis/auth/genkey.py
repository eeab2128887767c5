"""`pymavis dkim genkey DOMAIN SELECTOR`: a signing key and the DNS record that publishes it.

Keys come from dkimpy's own generator (dkim.dknewkey: RSA 2048 through openssl, ed25519
through PyNaCl), in the form dkimsign.read_key reads: PEM for RSA, dknewkey's base64
seed for ed25519. The key file is `DIR/DOMAIN.SELECTOR.key`, mode 0600, never
overwritten without `--force`. What is printed: the TXT record in zone-file form (split
into 255-character strings, as DNS needs for RSA keys) and the `dkim_signing_keys` entry
for the configuration.
"""

from __future__ import annotations

import os
import re
import tempfile

from dkim import dknewkey

from .dkimsign import read_key

ALGORITHM = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class GenKeyError(Exception):
    pass


def _check_name(name: str, what: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name or not all(_LABEL.match(label) for label in name.split(".")):
        raise GenKeyError(f"not a DNS name for the {what}: {name!r}")
    return name


def genkey(domain: str, selector: str, directory: str, key_type: str = "rsa", force: bool = False) -> tuple[str, str]:
    """(the key file written, the TXT record's value). Raises GenKeyError."""
    domain, selector = _check_name(domain, "domain"), _check_name(selector, "selector")
    os.makedirs(directory, mode=0o750, exist_ok=True)
    path = os.path.join(directory, f"{domain}.{selector}.key")
    if os.path.exists(path) and not force:
        raise GenKeyError(f"{path} exists; --force replaces it (and every signature made with it stops verifying "
                          "once its DNS record changes)")
    with tempfile.TemporaryDirectory(dir=directory) as work:
        key, dns = os.path.join(work, "new.key"), os.path.join(work, "new.dns")
        old_umask = os.umask(0o077)
        try:
            if key_type == "rsa":
                dknewkey.GenRSAKeys(key, verbose=False)
                dknewkey.ExtractRSADnsPublicKey(key, dns, verbose=False)
            else:
                dknewkey.ExtractEd25519PublicKey(dns, dknewkey.GenEd25519Keys(key, verbose=False), verbose=False)
        except Exception as exc:   # openssl missing or failing (CalledProcessError), PyNaCl missing
            raise GenKeyError(f"generating a {key_type} key failed: {exc}") from None
        finally:
            os.umask(old_umask)
        read_key(key, ALGORITHM[key_type])     # what the configuration will load
        with open(dns) as fh:
            record = fh.read().strip()
        os.chmod(key, 0o600)
        os.replace(key, path)
    return path, record


def zone_lines(domain: str, selector: str, record: str) -> str:
    """The record in zone-file form: strings of at most 255 characters."""
    chunks = [record[i:i + 255] for i in range(0, len(record), 255)]
    quoted = "\n    ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT (\n    {quoted} )"


def config_snippet(domain: str, selector: str, path: str, key_type: str) -> str:
    return (f"dkim_signing_keys:\n  {domain}: {{selector: {selector}, key_file: {path}, "
            f"algorithm: {ALGORITHM[key_type]}}}")
