"""Prometheus metrics (metrics.py) scraped over HTTP from a loopback port: counters and
histograms change as messages are recorded (a clean and a banned message through the
pipeline, a fake result with a failed check, an answer without checks), values read at
scrape time (in flight, worker pools, quarantine stores, spam cache, events), start and
stop from the configuration, and the loopback rule of `metrics.listen`. Each virus and
spam scanner call is timed by name and outcome (stub clients that answer or fail); each
decoder run is counted (a walk's tally, a zip through the pipeline) and shown by `stats`
as OpsDecBy*."""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import socket
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.net import LOOPBACK, free_port, wait_until
from harness.samples import zip_bytes
from harness.txns import BODY, HEADERS, banned_body, config_from, txn_of, zip_message

from pymavis import clamd, decode, events, keep, metrics, pipeline, spamd, workpool
from pymavis.checks import CheckResult, ScannerCall
from pymavis.checks import spam as spam_check
from pymavis.checks import virus as virus_check
from pymavis.checks.spam import VerdictCache
from pymavis.decide import resolve_rcpt
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
    ('listen: "0.0.0.0:9911"', "metrics.listen: 0.0.0.0 is not a loopback address: metrics are not authenticated; set "
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


# --- per-scanner latency -------------------------------------------------------------------


class StubClamd:
    """A clamd client that answers `reply` or raises `error`, without a socket."""

    def __init__(self, reply=None, error=None):
        self.reply, self.error = reply, error

    def instream(self, reader):
        if self.error is not None:
            raise self.error
        return self.reply

    fildes = instream


class StubSpamd:
    def __init__(self, score=None):
        self.score = score

    def symbols(self, payload):
        if self.score is None:
            raise spamd.SpamdUnavailable("connection refused", "stub")
        return spamd.SpamReply(self.score, 5.0, self.score >= 5.0, ("STUB_RULE",))


def scanned(tmp_path, virus_scanners, spam_scanners):
    """(the virus check's result, the spam check's) for one message with these stubs."""
    config = config_from(tmp_path)
    policy = merge(config, ())
    txn = txn_of(HEADERS)
    try:
        scan = pipeline.scan_for(None, policy, txn, tuple(resolve_rcpt(policy, r.addr) for r in txn.rcpts))
        scan.scanners = (tuple(virus_check.Scanner(name, client, "instream", 0) for name, client in virus_scanners), ())
        scan.spam_scanners = tuple(spam_check.SpamScanner(name, client) for name, client in spam_scanners)
        return policy, txn, virus_check.check(scan), spam_check.check(scan)
    finally:
        txn.spool.close()


def test_each_scanner_call_is_listed_with_its_outcome(tmp_path):
    _, _, virus, spam = scanned(tmp_path, [
        ("down", StubClamd(error=clamd.ClamdUnavailable("refused", "stub"))),
        ("big", StubClamd(error=clamd.ClamdSizeLimit("INSTREAM size limit exceeded", "stub"))),
        ("clean", StubClamd(clamd.ScanReply((), "stream: OK"))),
        ("found", StubClamd(clamd.ScanReply(("Eicar-Test",), "stream: Eicar-Test FOUND"))),
        ("locked", StubClamd(clamd.ScanReply(("Heuristics.Encrypted.Zip",), "stream: Heuristics.Encrypted.Zip FOUND"))),
    ], [("sa-down", StubSpamd()), ("sa", StubSpamd(1.5))])
    assert [(c.kind, c.scanner, c.outcome) for c in virus.scanner_calls] == [
        ("virus", "down", "failed"), ("virus", "big", "over_limits"), ("virus", "clean", "clean"),
        ("virus", "found", "infected"), ("virus", "locked", "unchecked")]
    assert [(c.kind, c.scanner, c.outcome) for c in spam.scanner_calls] == [
        ("spam", "sa-down", "failed"), ("spam", "sa", "answered")]
    assert all(c.elapsed_ms >= 0 for c in virus.scanner_calls + spam.scanner_calls)
    assert spam.spam.verdict.scanner == "sa"
    _, _, virus, spam = scanned(tmp_path, [], [("sa-down", StubSpamd())])
    assert virus.scanner_calls == () and [c.outcome for c in spam.scanner_calls] == ["failed"]
    assert spam.spam.note.startswith("SPAM CHECK FAILED")


def test_scanner_histogram_counts_each_call(tmp_path, served):
    m, port, _, _ = served
    for _ in range(2):
        policy, txn, virus, spam = scanned(tmp_path, [("clamd-a", StubClamd(error=clamd.ClamdTimeout("slow", "s"))),
                                                      ("clamd-b", StubClamd(clamd.ScanReply((), "stream: OK")))],
                                           [("spamd-1", StubSpamd(7.0))])
        result = pipeline.Result(Outcome(Action.CONTINUE), (), (virus, spam), ())
        m.record(policy, txn, result, result.outcome, 5.0)
    after = scrape(port)
    for kind, scanner, outcome in (("virus", "clamd-a", "failed"), ("virus", "clamd-b", "clean"),
                                   ("spam", "spamd-1", "answered")):
        labels = {"kind": kind, "scanner": scanner, "outcome": outcome}
        assert value(after, "pymavis_scanner_seconds_count", **labels) == 2, labels
        assert value(after, "pymavis_scanner_seconds_bucket", le="+Inf", **labels) == 2, labels
    assert value(after, "pymavis_scanner_seconds_count", kind="virus", scanner="clamd-b", outcome="failed") == 0
    call = ScannerCall("virus", "x", "clean", 1500.0)
    m.record(policy, txn, pipeline.Result(Outcome(Action.CONTINUE), (), (CheckResult("virus", scanner_calls=(call,)),),
                                          ()), Outcome(Action.CONTINUE), 5.0)
    after = scrape(port)
    assert value(after, "pymavis_scanner_seconds_sum", kind="virus", scanner="x", outcome="clean") == 1.5
    assert value(after, "pymavis_scanner_seconds_bucket", kind="virus", scanner="x", outcome="clean", le="1.0") == 0


def test_a_cached_or_shared_verdict_lists_no_spamd_call():
    leader = spam_check._pool().submit(lambda: (spam_check.Verdict(
        3.0, 5.0, (), "s", 10.0, calls=(ScannerCall("spam", "s", "answered", 10.0),)), ""))
    follower = spam_check._follow(leader, lambda: pytest.fail("asked spamd again"))
    verdict, _ = follower.result(timeout=10)
    assert verdict.cached and verdict.calls == ()


# --- decoder runs (OpsDecBy*) ------------------------------------------------------------


def uuencode(name, data):
    lines = [f"begin 644 {name}".encode()]
    lines += [binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]
    return b"\n".join([*lines, b"`", b"end"]) + b"\n"


def attached(data: bytes, name: str, ctype: str = "application/octet-stream") -> bytes:
    encoded = base64.encodebytes(data).decode()
    return (f'From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
            f"--b\nContent-Type: text/plain\n\nhello\n--b\nContent-Type: {ctype}\n"
            f'Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="{name}"\n\n'
            f"{encoded}--b--\n").encode()


PLAIN = b"From: a@example.org\nSubject: hi\n\nhello\n"


@pytest.mark.parametrize("raw, expected", [
    (PLAIN, {"mime": 1}),
    (attached(zip_bytes(("a.txt", b"hello\n")), "a.zip"), {"mime": 1, "zip": 1}),
    (attached(zip_bytes(("in.zip", zip_bytes(("a.txt", b"x\n")))), "out.zip"), {"mime": 1, "zip": 2}),
    (attached(gzip.compress(b"hello\n" * 100), "a.txt.gz"), {"mime": 1, "gz": 1}),
    (b"From: a@example.org\nSubject: uu\n\nsee\n" + uuencode("a.bin", b"\x00\x01" * 40) + b"bye\n",
     {"mime": 1, "uue": 1}),
    (attached(PLAIN, "fwd.eml", "message/rfc822"), {"mime": 2}),
], ids=["plain", "zip", "zip-in-zip", "gzip", "uuencoded", "rfc822-in-base64"])
def test_walk_counts_each_decoder_run(raw, expected):
    assert dict(decode.walk(raw).decoders) == expected


def test_decoder_runs_are_counted_and_shown_as_opsdec(tmp_path, served):
    m, port, _, _ = served
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    body = ("--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: application/zip\r\n"
            'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="docs.zip"\r\n\r\n'
            + base64.encodebytes(zip_bytes(("notes.txt", b"hello\n"))).decode().replace("\n", "\r\n")
            + "--b1--\r\n").encode()
    record_pipeline(tmp_path / "a", m, zip_message(), body)
    record_pipeline(tmp_path / "b", m, HEADERS, BODY)
    after = scrape(port)
    assert value(after, "pymavis_decoder_runs_total", decoder="zip") == 1
    assert value(after, "pymavis_decoder_runs_total", decoder="mime") == 2
    assert value(after, "pymavis_decoded_messages_total") == 2
    stats = m.stats()
    c = stats["counters"]
    assert (c["OpsDec"], c["OpsDecByMimeParser"], c["OpsDecByZip"]) == (2, 2, 1)
    assert stats["bases"]["OpsDecByZip"] == "InMsgs"
    names = list(c)
    assert names.index("QuarFailedMsgs") < names.index("OpsDec") < names.index("OpsDecByMimeParser") \
        < names.index("OpsDecByZip")


def test_opsdec_names_of_the_decoders():
    m = metrics.Metrics()
    for decoder in ("hqx", "tnef", "7z", "uue", "mbox", "Z"):
        m.decoder_runs.labels(decoder).inc()
    c = m.stats()["counters"]
    assert [n for n in c if n.startswith("OpsDec")] == [
        "OpsDec", "OpsDecByMimeParser", "OpsDecBy7z", "OpsDecByBinhex", "OpsDecByMbox", "OpsDecByTnef",
        "OpsDecByUue", "OpsDecByZ"]
    assert c["OpsDecByMimeParser"] == 0 and c["OpsDecByTnef"] == 1


# --- worker pools -------------------------------------------------------------------------


def test_worker_pool_gauges_read_when_scraped(served):
    _, port, _, _ = served
    pool = workpool.Pool("test-pool", 1)
    release = threading.Event()
    try:
        idle = scrape(port)
        assert value(idle, "pymavis_pool_waiting", pool="test-pool") == 0
        assert value(idle, "pymavis_pool_busy", pool="test-pool") == 0
        assert value(idle, "pymavis_pool_workers", pool="test-pool") == 1
        running = pool.submit(release.wait, 30)
        queued = pool.submit(lambda: None)
        wait_until(lambda: pool.counts()[1] == 1, 10, what="the first task running")
        busy = scrape(port)
        assert value(busy, "pymavis_pool_busy", pool="test-pool") == 1
        assert value(busy, "pymavis_pool_waiting", pool="test-pool") == 1
        assert queued.cancel()   # a task dropped before it began leaves the queue
        assert pool.counts() == (0, 1, 1)
        release.set()
        assert running.result(timeout=10) is True
        wait_until(lambda: pool.counts() == (0, 0, 1), 10, what="the pool idle")
        with pytest.raises(ZeroDivisionError):   # what a task raises still reaches its future
            pool.submit(lambda: 1 / 0).result(timeout=10)
        wait_until(lambda: pool.counts() == (0, 0, 1), 10, what="the pool idle after a failed task")
        done = scrape(port)
        assert value(done, "pymavis_pool_busy", pool="test-pool") == 0
        assert value(done, "pymavis_pool_waiting", pool="test-pool") == 0
    finally:
        release.set()
        pool.shutdown(wait=True)
        workpool.POOLS.pop("test-pool", None)
    with pytest.raises(RuntimeError):   # shut down: refused, and not counted as waiting
        pool.submit(lambda: None)
    assert pool.counts() == (0, 0, 1)


@pytest.mark.parametrize("originating, rcpts, direction, rcpt_directions", [
    (False, ("b@example.com",), "inbound", {"inbound": 1}),
    (False, ("x@elsewhere.org",), "openrelay", {"openrelay": 1}),
    (True, ("b@example.com", "x@elsewhere.org"), "outbound", {"internal": 1, "outbound": 1}),
    (True, ("b@example.com", "c@example.com"), "internal", {"internal": 2}),
])
def test_messages_and_recipients_by_direction(tmp_path, originating, rcpts, direction, rcpt_directions):
    """amavisd-agent's InMsgs{Inbound,OpenRelay,Outbound,Internal,Originating} and
    InMsgsRecips* by the bank's `originating` and whether each recipient is local."""
    m = metrics.Metrics()
    config = config_from(tmp_path, "policy:\n  local_domains: [example.com]\n"
                                   f"  originating: {'true' if originating else 'false'}\n")
    policy = merge(config, ())
    txn = txn_of(HEADERS, rcpts=rcpts)
    try:
        result = pipeline.process(config, policy, txn)
        m.record(policy, txn, result, result.outcome, 5.0)
    finally:
        txn.spool.close()
    c = m.stats()["counters"]
    names = {"inbound": "Inbound", "openrelay": "OpenRelay", "outbound": "Outbound", "internal": "Internal"}
    assert {k: c[f"InMsgs{n}"] for k, n in names.items()} == {k: int(k == direction) for k in names}
    assert c["InMsgsOriginating"] == int(originating)
    assert {k: c[f"InMsgsRecips{n}"] for k, n in names.items()} == {k: rcpt_directions.get(k, 0) for k in names}
    assert m.stats()["bases"]["InMsgsRecipsInbound"] == "InMsgsRecips"


def test_checks_run_are_counted_as_ops_virus_and_spam_check(tmp_path, served):
    """OpsVirusCheck: a virus scanner answered; OpsSpamCheck: a spam verdict (cached ones
    too); a check that could not do its work is an error, not an op."""
    from pymavis.checks.spam import SpamView, Verdict
    m, port, _, _ = served
    config = config_from(tmp_path)
    policy = merge(config, ())
    txn = txn_of(HEADERS)
    verdict = Verdict(score=1.0, required=5.0, tests=(), scanner="spamd", elapsed_ms=3.0)
    try:
        outcome = Outcome(Action.CONTINUE)
        for checks in ((CheckResult("virus", scanned_by=("clamd",)), CheckResult("spam", spam=SpamView(verdict))),
                       (CheckResult("virus", could_not_check="clamd: timed out"),
                        CheckResult("spam", spam=SpamView(None, note="SPAM CHECK FAILED: refused"))),
                       (CheckResult("virus", scanned_by=("clamd",)),)):
            m.record(policy, txn, pipeline.Result(outcome, (), checks, ()), outcome, 5.0)
    finally:
        txn.spool.close()
    c = m.stats()["counters"]
    assert (c["OpsVirusCheck"], c["OpsSpamCheck"]) == (2, 1)
    samples = scrape(port)
    assert value(samples, "pymavis_checks_run_total", check="virus") == 2
    assert value(samples, "pymavis_checks_run_total", check="spam") == 1
    assert value(samples, "pymavis_check_errors_total", check="virus", reason="failed") == 1


def test_decode_gate_gauges_read_when_scraped(served):
    """pymavis_decode_running / _waiting: a walk admitted and one waiting behind it."""
    from pymavis.checks import decode_gate
    _, port, _, _ = served
    gate = decode_gate(1, 1 << 20)   # a gate of its own numbers: no other test's walks
    inside, release = threading.Event(), threading.Event()

    def walk():
        with gate.admit(100):
            inside.set()
            release.wait(30)

    def waits():
        with gate.admit(100):
            pass

    first, second = threading.Thread(target=walk), threading.Thread(target=waits)
    try:
        first.start()
        assert inside.wait(10)
        second.start()
        wait_until(lambda: gate.counts() == (1, 1), 10, what="a second walk waiting")
        samples = scrape(port)
        assert value(samples, "pymavis_decode_running") >= 1
        assert value(samples, "pymavis_decode_waiting") >= 1
    finally:
        release.set()
        first.join(10)
        second.join(10)
    assert gate.counts() == (0, 0)
