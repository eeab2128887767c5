"""Prometheus metrics (metrics.py) scraped over HTTP from a loopback port: counters and
histograms change as messages are recorded (a clean and a banned message through the
pipeline, a fake result with a failed check, an answer without checks), values read at
scrape time (in flight, quarantine stores, spam cache, events), start and stop from the
configuration, and the loopback rule of `metrics.listen`."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.net import LOOPBACK, free_port
from harness.txns import BODY, HEADERS, banned_body, config_from, txn_of, zip_message

from pymavis import events, keep, metrics, pipeline
from pymavis.checks import CheckResult
from pymavis.checks.spam import VerdictCache
from pymavis.config import ConfigError
from pymavis.outcome import Action, Outcome, Reply
from pymavis.policy import merge


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from GET /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def served():
    state = {"in_flight": 0}
    cache = VerdictCache(60, 10)
    m = metrics.Metrics(in_flight=lambda: state["in_flight"], spam_cache=lambda: cache, event_log=events.EventLog())
    port = m.serve(LOOPBACK, 0)
    yield m, port, state, cache
    m.stop()


def record_pipeline(tmp_path, m, headers, body, config_text=""):
    config = config_from(tmp_path, config_text)
    policy = merge(config, ())
    txn = txn_of(headers, body)
    try:
        result = pipeline.process(config, policy, txn)
        m.record(policy, txn, result, result.outcome, 25.0)
    finally:
        txn.spool.close()
    return txn, result


def test_counters_change_as_messages_are_recorded(tmp_path, served):
    m, port, state, cache = served
    before = scrape(port)
    assert value(before, "pymavis_messages_total", action="pass", ccat="Clean", bank="DEFAULT") == 0
    kept_before = keep.COUNTS.kept
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean, _ = record_pipeline(tmp_path / "a", m, HEADERS, BODY)
    banned, _ = record_pipeline(tmp_path / "b", m, zip_message(), banned_body(),
                                "policy:\n  final_banned_destiny: reject\n")
    state["in_flight"] = 3
    cache.get(b"k")
    cache.put(b"k", object())
    cache.get(b"k")
    after = scrape(port)
    assert value(after, "pymavis_messages_total", action="pass", ccat="Clean", bank="DEFAULT") == 1
    assert value(after, "pymavis_messages_total", action="reject", ccat="Banned", bank="DEFAULT") == 1
    assert value(after, "pymavis_recipients_total", action="PASS", ccat="Clean") == 1
    assert value(after, "pymavis_recipients_total", action="REJECT", ccat="Banned") == 1
    assert value(after, "pymavis_message_bytes_total") == clean.size + banned.size
    assert value(after, "pymavis_message_size_bytes_count") == 2
    assert value(after, "pymavis_stage_seconds_count", stage="total") == 2
    assert value(after, "pymavis_stage_seconds_sum", stage="total") == pytest.approx(0.05)
    for stage in ("receive", "lookups", "header", "decode", "banned", "decide", "quarantine"):
        assert value(after, "pymavis_stage_seconds_count", stage=stage) == 2, stage
    assert value(after, "pymavis_messages_in_flight") == 3
    assert value(after, "pymavis_quarantine_stores_total", result="kept") == kept_before + 1
    assert value(after, "pymavis_spam_cache_total", result="hit") == 1
    assert value(after, "pymavis_spam_cache_total", result="miss") == 1
    assert value(after, "pymavis_build_info", version=__import__("pymavis").__version__) == 1
    assert ("pymavis_events_total", (("result", "written"),)) in after
    assert value(after, "pymavis_check_errors_total", check="virus", reason="failed") == 0


def test_check_errors_by_check_and_reason(tmp_path, served):
    m, port, _, _ = served
    config = config_from(tmp_path)
    policy = merge(config, ())
    txn = txn_of(HEADERS)
    try:
        failed = CheckResult("virus", could_not_check="all virus scanners failed (clamd: refused)")
        tempfail = CheckResult("spam", tempfail="spam check failed (spamd: timeout)")
        result = pipeline.Result(Outcome(Action.TEMPFAIL, Reply("451", "4.3.0", "x")), (), (failed, tempfail), ())
        m.record(policy, txn, result, result.outcome, 10.0)
        m.record(policy, txn, None, Outcome(Action.TEMPFAIL, Reply("451", "4.7.1", "y")), 240000.0,
                 error_reason="deadline")
        m.record(policy, txn, None, Outcome(Action.TEMPFAIL, Reply("451", "4.3.0", "z"), lookup_error="sql down"), 1.0)
    finally:
        txn.spool.close()
    after = scrape(port)
    assert value(after, "pymavis_check_errors_total", check="virus", reason="failed") == 1
    assert value(after, "pymavis_check_errors_total", check="spam", reason="tempfail") == 1
    assert value(after, "pymavis_check_errors_total", check="pipeline", reason="deadline") == 1
    assert value(after, "pymavis_check_errors_total", check="lookup", reason="failed") == 1
    assert value(after, "pymavis_messages_total", action="tempfail", ccat="MTA", bank="DEFAULT") == 3
    assert value(after, "pymavis_recipients_total", action="TEMPFAIL", ccat="MTA") == 3
    assert value(after, "pymavis_stage_seconds_bucket", stage="total", le="300.0") == 3


def test_started_from_the_configuration_and_stopped(tmp_path):
    port = free_port()
    config = config_from(tmp_path, f'metrics:\n  listen: "{LOOPBACK}:{port}"\n')
    assert config["metrics"]["listen"] == (LOOPBACK, port)
    m = metrics.start(config, in_flight=lambda: 7)
    try:
        assert metrics.ACTIVE is m
        assert value(scrape(port), "pymavis_messages_in_flight") == 7
    finally:
        metrics.stop()
    assert metrics.ACTIVE is None
    with pytest.raises(OSError):
        scrape(port)


def test_no_endpoint_by_default_and_a_busy_port_is_logged(tmp_path, caplog):
    """The counters are kept either way (pymavis stats reads them); only the endpoint is off."""
    try:
        m = metrics.start(config_from(tmp_path))
        assert metrics.ACTIVE is m and m.server is None
        with socket.socket() as busy:
            busy.bind((LOOPBACK, 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = config_from(tmp_path, f'metrics:\n  listen: "{LOOPBACK}:{port}"\n')
            with caplog.at_level(logging.ERROR, logger="pymavis"):
                m = metrics.start(config)
        assert metrics.ACTIVE is m and m.server is None
    finally:
        metrics.stop()
    assert metrics.ACTIVE is None
    assert any(f"metrics endpoint {LOOPBACK}:{port} cannot be opened" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text, message", [
    ('listen: "0.0.0.0:9911"', "metrics: 0.0.0.0 is not a loopback address: metrics are not authenticated; set "
                               "allow_non_loopback: true to serve them beyond this host"),
    ('listen: "192.0.2.7:9911"', "192.0.2.7 is not a loopback address"),
    ('listen: "metrics.example:9911"', "the host must be an IP address"),
    ('listen: "127.0.0.1"', "expected HOST:PORT"),
    ('listen: "127.0.0.1:99999"', "expected HOST:PORT"),
    ("lisen: null", "unknown key 'lisen' (did you mean 'listen'?)"),
], ids=["any", "public", "name", "no-port", "bad-port", "typo"])
def test_listen_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        config_from(tmp_path, f"metrics:\n  {text}\n")
    assert any(message in e for e in err.value.errors), err.value.errors


@pytest.mark.parametrize("text, expected", [
    ('listen: "[::1]:9911"', ("::1", 9911)),
    ('listen: "localhost:9911"', ("127.0.0.1", 9911)),
    ('{listen: "0.0.0.0:9911", allow_non_loopback: true}', ("0.0.0.0", 9911)),
    ("null", None),
])
def test_listen_accepted(tmp_path, text, expected):
    body = f"metrics: {text}\n" if text.startswith(("{", "null")) else f"metrics:\n  {text}\n"
    assert config_from(tmp_path, body)["metrics"]["listen"] == expected


def test_stats_reads_the_same_counters_with_amavisd_agent_names(tmp_path, served):
    """`pymavis stats` (Metrics.stats): InMsgs, InMsgsRecips, Content*Msgs, InMsgsStatus*, Quar*
    from the messages recorded; virus names counted, the most frequent first; cache counts."""
    from pymavis.categories import Ccat, Finding
    from pymavis.decide import RcptDecision
    m, _, _, cache = served
    kept_before, failed_before = keep.COUNTS.kept, keep.COUNTS.failed
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean, _ = record_pipeline(tmp_path / "a", m, HEADERS, BODY)
    banned, _ = record_pipeline(tmp_path / "b", m, zip_message(), banned_body())   # discarded, kept
    config = config_from(tmp_path)
    policy = merge(config, ())
    txn = txn_of(HEADERS, rcpts=("b@example.com", "c@example.com"))
    try:
        for names in (("Eicar-Test",), ("Eicar-Test", "Win.Trojan.X"), ("Eicar-Test",)):
            virus = Finding("virus", Ccat.VIRUS, 0, ", ".join(names), values=(("virus_names", names),))
            decisions = tuple(RcptDecision(r.addr, Ccat.VIRUS, 0, virus, "reject") for r in txn.rcpts)
            outcome = Outcome(Action.REJECT, Reply("554", "5.7.0", "virus"), decisions=decisions)
            m.record(policy, txn, pipeline.Result(outcome, (virus,), (), ()), outcome, 5.0)
    finally:
        txn.spool.close()
    cache.get(b"k")
    cache.put(b"k", object())
    cache.get(b"k")
    cache.get(b"k")
    stats = m.stats(top=1)
    c = stats["counters"]
    assert (c["InMsgs"], c["InMsgsRecips"], c["InMsgsSize"]) == (5, 8, clean.size + banned.size + 3 * txn.size)
    assert (c["ContentCleanMsgs"], c["ContentBannedMsgs"], c["ContentVirusMsgs"], c["ContentSpamMsgs"]) == (1, 1, 3, 0)
    assert (c["InMsgsStatusAccepted"], c["InMsgsStatusDiscarded"], c["InMsgsStatusRejected"]) == (1, 1, 3)
    assert (c["QuarMsgs"], c["QuarFailedMsgs"]) == (kept_before + 1, failed_before)
    assert (c["QuarBannedMsgs"], c["QuarVirusMsgs"]) == (1, 0)
    assert (c["SpamCacheAttempts"], c["SpamCacheHits"], c["SpamCacheMisses"]) == (3, 2, 1)
    assert stats["bases"]["ContentCleanMsgs"] == "InMsgs" and stats["bases"]["SpamCacheHits"] == "SpamCacheAttempts"
    assert "InMsgsSize" not in stats["bases"]
    assert stats["virus_names"] == [["Eicar-Test", 3]]
    assert m.stats()["virus_names"] == [["Eicar-Test", 3], ["Win.Trojan.X", 1]]
    assert stats["uptime_s"] >= 0 and stats["version"] == __import__("pymavis").__version__


def test_virus_names_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_VIRUS_NAMES", 2)
    m = metrics.Metrics()
    m._count_viruses(["A", "B", "C", "D", "A"])
    assert sorted(map(tuple, m.stats()["virus_names"])) == [("(other)", 2), ("A", 2), ("B", 1)]
