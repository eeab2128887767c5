"""`pymavis dkim genkey`: the key loads as a dkim_signing_keys entry, a message signed with
it verifies against the printed TXT record, an existing key is kept unless --force."""

import os
import re
import subprocess
import sys

import pytest

from test_auth import MESSAGE, Zone

from pymavis.auth import dkimsign, dkimverify
from pymavis.config import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FROM_EXAMPLE = MESSAGE.replace(b"joe@football.example.com", b"joe@example.com")


def genkey(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "milter")}
    return subprocess.run([sys.executable, "-m", "pymavis", "dkim", "genkey", *args, "--dir", str(tmp_path / "keys")],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_a_new_key_signs_and_its_record_verifies(tmp_path, key_type):
    out = genkey(tmp_path, "Example.COM", "s2026", "--type", key_type)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "keys" / "example.com.s2026.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    record = "".join(re.findall(r'"([^"]*)"', out.stdout.split("IN TXT", 1)[1].split("#", 1)[0]))
    assert record.startswith(f"v=DKIM1; k={key_type};")
    snippet = out.stdout.split("dkim_signing_keys:", 1)[1]
    (tmp_path / "pymavis.yaml").write_text(f"state_dir: {tmp_path}\ndkim_signing_keys:{snippet}")
    key = load(str(tmp_path / "pymavis.yaml"))["dkim_signing_keys"]["example.com"]
    signed = b"DKIM-Signature: " + dkimsign.signature(FROM_EXAMPLE, key).encode() + b"\r\n" + FROM_EXAMPLE
    zone = Zone(txt={"s2026._domainkey.example.com": record.encode()})
    assert [(r.result, r.selector) for r in dkimverify.verify(signed, zone)] == [("pass", "s2026")]


def test_an_existing_key_is_kept_unless_forced(tmp_path):
    assert genkey(tmp_path, "example.com", "s1").returncode == 0
    first = (tmp_path / "keys" / "example.com.s1.key").read_bytes()
    again = genkey(tmp_path, "example.com", "s1")
    assert again.returncode == 1 and "exists" in again.stderr
    assert (tmp_path / "keys" / "example.com.s1.key").read_bytes() == first
    assert genkey(tmp_path, "example.com", "s1", "--force").returncode == 0
    assert (tmp_path / "keys" / "example.com.s1.key").read_bytes() != first


def test_bad_names_are_refused(tmp_path):
    out = genkey(tmp_path, "exa mple.com", "s1")
    assert out.returncode == 1 and "not a DNS name" in out.stderr
