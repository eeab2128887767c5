"""The observe profile's helpers: what full logging and mail authentication cost pymavis.

bench/run.py's observe profile sends the pass-through mix (bench/sender.py: 4-256 KB
messages, each with a DKIM-Signature field of sender.example.org, selector s1, whose body
hash and signature are random) through Postfix with pymavis in five variants, measured in
the same run: + null milter (the baseline), + pymavis as shipped (logging off), + pymavis
with full logging (a JSON event per message to a file, the SQL log in SQLite, Prometheus
metrics on a loopback port), + pymavis with each of the first two alone (for information:
the counters behind the metrics are kept in every variant, only the HTTP endpoint is
extra, and nobody scrapes it here), + pymavis with DKIM verification and the Authentication-
Results field (`dkim_verify: true`; the key of s1 served by tests/harness/fakedns.py, so
every message's signature is checked: canonicalization and body hash over the whole
message, the key fetched and parsed; the random body hash fails before the RSA step,
which is ~0.2 ms of the verification's cost), + pymavis signing every message with an
RSA-2048 key from `pymavis dkim genkey` (the bench's clients are on 127.0.0.1, so the
MYNETS bank makes all traffic originating, and `dkim_sign: true` signs it).

Targets (issues: observability, mail authentication): full logging >= 0.90 x pymavis with
logging off (throughput, medians of the same run); DKIM verify + A-R <= 5 ms and RSA-2048
signing <= 20 ms of pymavis CPU per message (the variant's CPU per message minus pymavis
as shipped).
"""

from __future__ import annotations

from pathlib import Path

from harness.fakedns import FakeDNS
from harness.net import free_port

from pymavis.auth import genkey

SENDER_DOMAIN = "sender.example.org"     # bench/sender.py's
VERIFY_SELECTOR = "s1"                    # the selector of sender.py's DKIM-Signature field
SIGN_SELECTOR = "bench"
TARGET_LOGGING_RATIO = 0.90
TARGET_VERIFY_MS = 5.0
TARGET_SIGN_MS = 20.0


class Keys:
    """The profile's DKIM keys and the fake DNS that publishes the verification key."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.verify_key, verify_record = genkey.genkey(SENDER_DOMAIN, VERIFY_SELECTOR, str(workdir / "keys"))
        self.sign_key, _ = genkey.genkey(SENDER_DOMAIN, SIGN_SELECTOR, str(workdir / "keys"))
        self.dns = FakeDNS({f"{VERIFY_SELECTOR}._domainkey.{SENDER_DOMAIN}": verify_record}).__enter__()

    def stop(self) -> None:
        self.dns.__exit__(None, None, None)


VARIANTS = ("pymavis-logging", "pymavis-json", "pymavis-sql", "pymavis-verify", "pymavis-sign")


def variant_settings(key: str, keys: Keys) -> tuple[dict, dict, str]:
    """(top-level settings, default-policy settings, why) of an observe variant."""
    if key == "pymavis-logging":
        return ({"event_log": "{target: file}", "sql_log": "{enabled: true}",
                 "metrics": f'{{listen: "127.0.0.1:{free_port()}"}}'}, {}, "observe profile, full logging")
    if key == "pymavis-json":
        return {"event_log": "{target: file}"}, {}, "observe profile, JSON events only"
    if key == "pymavis-sql":
        return {"sql_log": "{enabled: true}"}, {}, "observe profile, SQL log only"
    if key == "pymavis-verify":
        return ({"dns": f'{{resolver: "{keys.dns.spec}", timeout_s: 2}}'}, {"dkim_verify": "true"},
                "observe profile, DKIM verify + A-R")
    if key == "pymavis-sign":
        return ({"dkim_signing_keys": f'{{{SENDER_DOMAIN}: {{selector: {SIGN_SELECTOR}, key_file: "{keys.sign_key}"}}}}'},
                {"dkim_sign": "true"}, "observe profile, DKIM signing RSA-2048")
    raise KeyError(key)
