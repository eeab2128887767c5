"""Configuration loading: every error names file, line and key; near misses get a hint."""

import os
import textwrap

import pytest

from pymavis.config import ConfigError, load


def write(dir_, name, text):
    path = os.path.join(dir_, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text))
    return path


@pytest.fixture
def confdir(tmp_path):
    (tmp_path / "banks").mkdir()
    return str(tmp_path)


def errors_of(path):
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.errors


def test_shipped_default_config_loads():
    from conftest import ROOT
    config = load(os.path.join(ROOT, "policies", "pymavis.yaml"))
    assert "ORIGINATING" in config.banks
    assert config.default_policy["final_virus_destiny"] == "discard"
    assert config.settings["milter"]["socket"] == "inet:127.0.0.1:8899"


def test_minimal_config_gets_amavis_defaults(confdir):
    config = load(write(confdir, "p.yaml", "{}\n"))
    p = config.default_policy
    assert (p["final_virus_destiny"], p["final_banned_destiny"], p["final_spam_destiny"],
            p["final_bad_header_destiny"], p["final_unchecked_destiny"], p["final_oversized_destiny"]) == \
        ("discard", "discard", "pass", "pass", "pass", "bounce")
    assert set(config.banks) >= {"MYNETS", "AUTH", "MYUSERS"}


CASES = [
    ("unknown-policy-key", "policy:\n  spam_kil_level: 5\n", "p.yaml:2: unknown key 'spam_kil_level'"),
    ("near-miss", "policy:\n  final_virus_destinyy: reject\n", "did you mean 'final_virus_destiny'?"),
    ("unknown-top-key", "milterr: {}\n", "p.yaml:1: unknown key 'milterr' (did you mean 'milter'?)"),
    ("bad-enum", "policy:\n  final_spam_destiny: rejekt\n", "p.yaml:2: final_spam_destiny: expected one of"),
    ("enum-hint", "policy:\n  final_spam_destiny: rejekt\n", "did you mean 'reject'?"),
    ("bad-int", "milter:\n  workers: many\n", "p.yaml:2: milter.workers: expected a whole number"),
    ("milter-subkey", "milter:\n  sockett: x\n", "p.yaml:2: milter: unknown key 'sockett' (did you mean 'socket'?)"),
    ("bool-type", "policy:\n  originating: 'yes'\n", "p.yaml:2: originating: expected true or false"),
    ("dup-key", "policy:\n  originating: true\n  originating: false\n", "p.yaml:3: duplicate key 'originating'"),
    ("yaml-syntax", "policy: [\n", "p.yaml:"),
    ("undefined-bank", "daemon_name_policy:\n  SUBMIT: SUBMISION\n",
     "p.yaml:2: policy bank 'SUBMISION' is not defined"),
    ("size-lookup-value", "policy:\n  message_size_limit: {'@example.com': lots}\n", "p.yaml:2: message_size_limit"),
    ("ccat-key", "policy:\n  smtp_reason_by_ccat: {VIRUSS: x}\n", "did you mean 'VIRUS'?"),
    ("ip-policy-shape", "client_ipaddr_policy:\n  - {ip: [10.0.0.0/8], bnk: X}\n", "unknown key 'bnk' (did you mean 'bank'?)"),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in CASES], ids=[c[0] for c in CASES])
def test_config_errors_name_file_line_key(confdir, text, expected):
    errs = errors_of(write(confdir, "p.yaml", text))
    joined = "\n".join(errs)
    assert expected in joined, joined


def test_every_error_is_reported_not_just_the_first(confdir):
    errs = errors_of(write(confdir, "p.yaml", "policy:\n  a_typo: 1\n  another_typo: 2\nmilter:\n  workers: x\n"))
    assert len(errs) == 3


def test_bank_file_errors_name_the_bank_file(confdir):
    write(confdir, "banks/submission.yaml", "SUBMISSION:\n  originating: true\n  spam_kil_level: 5\n")
    errs = errors_of(write(confdir, "p.yaml", "interface_policy:\n  10587: SUBMISSION\n"))
    assert len(errs) == 1
    assert errs[0].endswith("banks/submission.yaml:3: unknown key 'spam_kil_level' in bank 'SUBMISSION' "
                           "(did you mean 'spam_kill_level'?)")


def test_bank_defined_twice(confdir):
    write(confdir, "banks/a.yaml", "X:\n  originating: true\n")
    write(confdir, "banks/b.yaml", "X:\n  originating: false\n")
    errs = errors_of(write(confdir, "p.yaml", "{}\n"))
    assert "bank 'X' is already defined in" in errs[0]


def test_lookup_file_missing_is_an_error(confdir):
    errs = errors_of(write(confdir, "p.yaml", "policy:\n  spam_lovers:\n    - file: lovers.txt\n"))
    assert "lovers.txt" in errs[0] and "p.yaml:" in errs[0]


def test_relative_lookup_files_resolve_against_the_config(confdir):
    write(confdir, "sizes.txt", "@example.com 1000\n")
    config = load(write(confdir, "p.yaml", "policy:\n  message_size_limit:\n    - file: sizes.txt\n    - 0\n"))
    chain = config.default_policy["message_size_limit"]
    assert chain.lookup_address("u@example.com", delimiter="+", is_local=False).value == 1000


@pytest.mark.parametrize("text, message", [
    ("spam_scanners:\n  - {name: s, sockt: unix:/x}\n", ":2: spam_scanners[0]: unknown key 'sockt' (did you mean 'socket'?)"),
    ("spam_scanners:\n  - {name: s}\n", ":2: spam_scanners[0]: a spam scanner needs 'socket'"),
    ("spam_scanners:\n  - {name: s, socket: 'tcp:1'}\n", ":2: spam_scanners[0].socket: spamd socket 'tcp:1': expected "),
    ("spam_scanners:\n  - {name: s, socket: 'unix:/x', user: 'a b'}\n", ":2: spam_scanners[0].user: spamd user 'a b'"),
    ("resubmit: {socket: 'unix:/x'}\n", ":1: resubmit.socket: 'unix:/x': the re-submission listener is reached over TCP"),
    ("policy:\n  spam_kill_level: {'@example.com': lots}\n", ":2: spam_kill_level['@example.com']: bad value 'lots'"),
    ("policy:\n  spam_kill_level: 6.9\n  sa_mail_body_size_action: cut\n", ":3: sa_mail_body_size_action: "
                                                                             "expected one of truncate, skip"),
])
def test_spam_setting_errors_name_file_line_and_key(confdir, text, message):
    errs = errors_of(write(confdir, "p.yaml", text))
    assert len(errs) == 1 and message in errs[0], errs


def test_switch_interval_is_the_interpreters(confdir):
    """milter.switch_interval_ms -> sys.setswitchinterval, at start and at each reload; out
    of range is a configuration error naming the key."""
    import sys
    from pymavis import adapter
    assert load(write(confdir, "d.yaml", "{}\n")).settings["milter"]["switch_interval_ms"] == 20
    before = sys.getswitchinterval()
    try:
        adapter.set_switch_interval(load(write(confdir, "p.yaml", "milter:\n  switch_interval_ms: 7\n"))
                                    .settings["milter"])
        assert sys.getswitchinterval() == pytest.approx(0.007)
    finally:
        sys.setswitchinterval(before)
    (error,) = errors_of(write(confdir, "bad.yaml", "milter:\n  switch_interval_ms: 0\n"))
    assert "bad.yaml:2" in str(error) and "switch_interval_ms" in str(error)
