"""Bank selection and merging."""

import textwrap

import pytest

from pymavis import policy as policy_mod
from pymavis.config import load
from pymavis.policy import SelectionFacts


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    d = tmp_path_factory.mktemp("conf")
    (d / "banks").mkdir()
    (d / "banks" / "b.yaml").write_text(textwrap.dedent("""\
        ORIGINATING:
          originating: true
        SUBMISSION:
          message_size_limit: 2000
          smtp_reason_by_ccat: {VIRUS: "550 5.7.1 virus {detail}"}
        PARTNERS:
          final_spam_destiny: reject
        REPLACER:
          replace: [smtp_reason_by_ccat]
          smtp_reason_by_ccat: {BANNED: "554 5.7.1 banned"}
    """))
    (d / "p.yaml").write_text(textwrap.dedent("""\
        daemon_name_policy: {ORIGINATING: ORIGINATING, REPL: REPLACER}
        interface_policy: {10587: SUBMISSION}
        client_ipaddr_policy:
          - {ip: [192.0.2.0/24, "!198.51.100.7", 198.51.100.0/24], bank: PARTNERS}
        policy:
          mynetworks: [127.0.0.0/8, 10.0.0.0/8]
          local_domains: [example.com, .example.net]
    """))
    return load(str(d / "p.yaml"))


SELECT = [
    ("nothing", SelectionFacts(client_ip="203.0.113.5"), ()),
    ("daemon-name", SelectionFacts(daemon_name="ORIGINATING", client_ip="203.0.113.5"), ("ORIGINATING",)),
    ("port", SelectionFacts(daemon_port=10587, client_ip="203.0.113.5"), ("SUBMISSION",)),
    ("name-then-port", SelectionFacts(daemon_name="ORIGINATING", daemon_port=10587), ("ORIGINATING", "SUBMISSION")),
    ("mynets", SelectionFacts(client_ip="10.1.2.3"), ("MYNETS",)),
    ("mynets-v6-mapped", SelectionFacts(client_ip="::ffff:10.1.2.3"), ("MYNETS",)),
    ("client-ip", SelectionFacts(client_ip="192.0.2.9"), ("PARTNERS",)),
    ("client-ip-negated", SelectionFacts(client_ip="198.51.100.7"), ()),
    ("auth", SelectionFacts(client_ip="203.0.113.5", auth_authen="joe"), ("AUTH",)),
    ("myusers", SelectionFacts(client_ip="10.0.0.1", sender="joe@example.com"), ("MYNETS", "MYUSERS")),
    ("myusers-subdomain", SelectionFacts(client_ip="10.0.0.1", sender="joe@a.example.net"), ("MYNETS", "MYUSERS")),
    ("not-myusers-foreign", SelectionFacts(client_ip="10.0.0.1", sender="joe@else.org"), ("MYNETS",)),
    ("not-myusers-inbound", SelectionFacts(client_ip="203.0.113.5", sender="joe@example.com"), ()),
]


@pytest.mark.parametrize("facts,path", [c[1:] for c in SELECT], ids=[c[0] for c in SELECT])
def test_bank_selection(config, facts, path):
    assert policy_mod.select(config, facts).bank_path == path


def test_merge_overlays_in_order_and_merges_mappings(config):
    p = policy_mod.merge(config, ("ORIGINATING", "SUBMISSION"))
    assert p.originating is True
    assert p.rcpt_value("message_size_limit", "x@y") == 2000
    assert p.smtp_reason_by_ccat["VIRUS"] == "550 5.7.1 virus {detail}"
    assert p.smtp_reason_by_ccat["BANNED"].startswith("554 5.7.0")  # kept from the default


def test_replace_drops_the_default_mapping(config):
    p = policy_mod.merge(config, ("REPLACER",))
    assert p.smtp_reason_by_ccat == {"BANNED": "554 5.7.1 banned"}


def test_mynets_implies_originating(config):
    assert policy_mod.select(config, SelectionFacts(client_ip="10.9.9.9")).originating is True
    assert policy_mod.select(config, SelectionFacts(client_ip="203.0.113.5")).originating is False


def test_policy_is_read_only_and_cached(config):
    p = policy_mod.merge(config, ("PARTNERS",))
    with pytest.raises(AttributeError):
        p.originating = True
    assert policy_mod.merge(config, ("PARTNERS",)) is p
