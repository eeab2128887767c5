"""The JSON event per message (events.py) and the TIMING line (observe.py): events for a
clean and a banned message as the pipeline answers them, one built by hand from a fake
result (virus, spam, mixed recipients, an answer without checks), every event valid
against docs/event.schema.json, redaction alike in every sink, the file sink (append,
one line per event, reopened after logrotate, a failure logged and never raised), the
bounded queue, and the settings."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import threading

import jsonschema
import pytest

from conftest import CORPUS, ROOT
from harness.txns import BODY, HEADERS, banned_body, config_from, txn_of, zip_message

from pymavis import events, observe, pipeline
from pymavis.categories import Ccat, Finding
from pymavis.checks import CheckResult
from pymavis.checks.spam import Judgement, SenderLists, SpamView, Verdict
from pymavis.config import ConfigError
from pymavis.decide import RcptDecision
from pymavis.outcome import Action, Outcome, Reply
from pymavis.policy import merge

SCHEMA = json.load(open(os.path.join(ROOT, "docs", "event.schema.json"), encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def valid(event: dict) -> dict:
    """`event` after a JSON round trip, checked against the schema."""
    event = json.loads(json.dumps(event, ensure_ascii=False))
    errors = sorted(VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    return event


def test_the_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def run_pipeline(tmp_path, headers, body, config_text="", rcpts=("b@example.com",)):
    config = config_from(tmp_path, config_text)
    policy = merge(config, ())
    txn = txn_of(headers, body, rcpts)
    try:
        result = pipeline.process(config, policy, txn)
        event = events.build(config, policy, txn, result, result.outcome, 42.0, log_id="4711-01", now=1_800_000_000.5)
    finally:
        txn.spool.close()
    return valid(event)


# --- events of messages the pipeline answered ----------------------------------------------------


def test_clean_message_event(tmp_path):
    e = run_pipeline(tmp_path, HEADERS, BODY)
    assert e["@timestamp"] == "2027-01-15T08:00:00.458Z" and e["time_unix"] == 1800000000.458
    assert (e["type"], e["program"], e["host"], e["log_id"]) == ("amavis", "pymavis", "mx.example.com", "4711-01")
    assert (e["queue_id"], e["client_ip"], e["client_port"], e["dst_ip"], e["dst_port"]) == \
        ("4Xyz", "192.0.2.1", 40000, "192.0.2.25", 25)
    assert "policy_banks" not in e   # the default bank alone
    assert e["originating"] is False
    assert (e["mail_from"], e["rcpt_to"], e["rcpt_num"]) == ("a@example.org", ["b@example.com"], 1)
    assert e["author"] == ["a@example.org"] and e["to_addr"] == ["b@example.com", "c@example.com"]
    assert e["cc_addr"] == ["d@example.net"]
    assert e["subject"] == "café menu" and e["message_id"] == "<m1@example.org>" and e["user_agent"] == "Mutt/2.2"
    assert e["action"] == ["PASS"] and e["smtp_code"] == ["250"] and e["content_type"] == "Clean"
    assert e["recipients"] == [{"rcpt_to": "b@example.com", "rcpt_is_local": False, "action": "PASS",
                                "ccat_main": "Clean", "smtp_code": "250",
                                "smtp_response": f"250 2.0.0 Ok, id={e['mail_id']}"}]
    assert e["digest_body"] == hashlib.md5(BODY).hexdigest()
    assert e["size"] == sum(len(f"{n}: {v}\r\n".encode()) for n, v in HEADERS) + 2 + len(BODY)
    assert e["checks_performed"] == "H B"   # no scanners configured
    assert "quarantine" not in e and "virusnames" not in e and "error" not in e
    assert e["message"] == "4711-01 PASS Clean <a@example.org> -> <b@example.com>"
    assert set(e["elapsed"]) == {"Receiving", "Decoding", "Amavis", "Total"} and e["elapsed"]["Total"] == 0.042


def test_banned_message_event(tmp_path):
    e = run_pipeline(tmp_path, zip_message(), banned_body(), "policy:\n  final_banned_destiny: reject\n")
    assert e["action"] == ["REJECT"] and e["content_type"] == "Banned" and e["smtp_code"] == ["554"]
    (row,) = e["recipients"]
    assert (row["action"], row["ccat_main"], row["ccat_blocking"], row["smtp_code"]) == \
        ("REJECT", "Banned", "Banned", "554")
    assert row["smtp_response"].startswith(f"554 5.7.0 Reject, id={e['mail_id']} - BANNED: ")
    assert row["smtp_response"].endswith("T=exe-ms,N=run.exe")
    assert e["quarantine"] == "local:."
    assert e["attached_file_names"] == ["run.exe"]
    assert e["checks_performed"] == "H B"
    assert e["message"] == "4711-01 REJECT Banned <a@example.org> -> <b@example.com>"


def test_banned_for_one_recipient_passed_to_a_lover(tmp_path):
    e = run_pipeline(tmp_path, zip_message(), banned_body(), "policy:\n  banned_files_lovers: [lover@example.com]\n",
                     rcpts=("b@example.com", "lover@example.com"))
    rows = {r["rcpt_to"]: r for r in e["recipients"]}
    assert rows["b@example.com"]["action"] == "DISCARD" and rows["b@example.com"]["smtp_code"] == "250"
    assert rows["b@example.com"]["smtp_response"] == f"250 2.7.0 Ok, discarded, id={e['mail_id']}"
    assert rows["lover@example.com"]["action"] == "PASS" and rows["lover@example.com"]["ccat_main"] == "Banned"
    assert "ccat_blocking" not in rows["lover@example.com"]
    assert e["action"] == ["DISCARD", "PASS"] and e["content_type"] == "Banned"


# --- an event built by hand, without the adapter or the pipeline --------------------------------


def fake_result(outcome, *, spam_view=None, timings=(("lookups", 0.1), ("decode", 12.0), ("virus", 40.0),
                                                      ("spam", 150.0))):
    virus = CheckResult("virus", (Finding("virus", Ccat.VIRUS, 0, "Eicar-Signature", None,
                                          (("virus_names", ("Eicar-Signature",)), ("scanners", ("clamd",)))),),
                        elapsed_ms=40.0, scanned_by=("clamd",))
    spam = CheckResult("spam", (), elapsed_ms=150.0, spam=spam_view)
    header = CheckResult("header")   # skipped: nothing found, no time taken
    return pipeline.Result(outcome, virus.findings, (header, virus, spam), timings)


def test_built_from_a_fake_result_mixed_recipients(tmp_path):
    config = config_from(tmp_path, "policy:\n  local_domains: [example.com]\n")
    policy = merge(config, ())
    virus = Finding("virus", Ccat.VIRUS, 0, "Eicar-Signature")
    decisions = (RcptDecision("b@example.com", Ccat.VIRUS, 0, virus, "bounce"),
                 RcptDecision("lover@example.com", Ccat.VIRUS, 0, None, "pass"))
    outcome = Outcome(Action.CONTINUE, del_rcpts=("b@example.com",), notify_sender=("b@example.com",),
                      decisions=decisions, quarantined="local:virus")
    view = SpamView(Verdict(3.5, 5.0, ("MISSING_DATE", "BAYES_50"), "spamd", 140.0),
                    (Judgement("b@example.com", 3.5, None), Judgement("lover@example.com", 4.25, None,
                                                                       lists=SenderLists(whitelisted=True))))
    raw_subject = "Rechnung f\udcfcr M\udce4rz"   # Latin-1 bytes as the adapter hands them on
    txn = txn_of([("From", "x@example.org"), ("Subject", raw_subject)], rcpts=("b@example.com", "lover@example.com"))
    try:
        e = valid(events.build(config, policy, txn, fake_result(outcome, spam_view=view), outcome, 212.0,
                               log_id="4711-01-2"))
    finally:
        txn.spool.close()
    assert e["subject"] == "Rechnung für März"
    assert e["virusnames"] == ["Eicar-Signature"] and e["tests"] == ["BAYES_50", "MISSING_DATE"]
    assert e["spam_score"] == 4.25 and e["checks_performed"] == "V S"
    assert e["quarantine"] == "local:virus" and e["dsn_sent"] is True and e["content_type"] == "Virus"
    b, lover = e["recipients"]
    assert (b["action"], b["ccat_blocking"], b["smtp_code"], b["spam_score"], b["rcpt_is_local"]) == \
        ("BOUNCE", "Virus", "554", 3.5, True)
    assert b["smtp_response"].startswith(f"554 5.7.0 Reject, id={e['mail_id']} - INFECTED: Eicar-Signature")
    assert (lover["action"], lover["ccat_main"], lover["spam_score"], lover["whitelisted"]) == \
        ("PASS", "Virus", 4.25, True)
    assert e["action"] == ["BOUNCE", "PASS"] and e["smtp_code"] == ["554", "250"]
    assert e["elapsed"] == {"Receiving": e["elapsed"]["Receiving"], "Decoding": 0.012, "VirusCheck": 0.04,
                            "SpamCheck": 0.15, "Amavis": 0.022, "Total": 0.212}
    assert e["message"] == "4711-01-2 BOUNCE,PASS Virus <a@example.org> -> <b@example.com>,<lover@example.com>"


def test_answered_without_the_checks(tmp_path):
    """A scan deadline: no result, every recipient TEMPFAIL with the reply, the reason."""
    config = config_from(tmp_path)
    answer = Outcome(Action.TEMPFAIL, Reply("451", "4.7.1", "Content check took too long, try again later, id=X"))
    txn = txn_of(HEADERS, rcpts=("b@example.com", "c@example.com"))
    try:
        e = valid(events.build(config, merge(config, ()), txn, None, answer, 240000.0,
                               error="checks did not finish within scan_deadline_s=240"))
    finally:
        txn.spool.close()
    assert e["action"] == ["TEMPFAIL"] and e["smtp_code"] == ["451"] and e["content_type"] == "MTA"
    assert [r["smtp_response"] for r in e["recipients"]] == [str(answer.reply)] * 2
    assert e["error"] == "checks did not finish within scan_deadline_s=240"
    assert "digest_body" not in e and "checks_performed" not in e


def test_a_failed_local_domains_lookup_only_leaves_rcpt_is_local_out():
    class Policy:
        bank_path, originating, smtp_reason_by_ccat = ("MYNETS",), True, {}

        def is_local(self, addr):
            from pymavis.lookups import LookupFailed
            raise LookupFailed("sql: connection refused")

    outcome = Outcome(Action.CONTINUE, decisions=(RcptDecision("b@example.com", Ccat.CLEAN, 0, None, "pass"),))
    txn = txn_of(HEADERS)
    try:
        e = valid(events.build(None, Policy(), txn, None, outcome, 5.0))
    finally:
        txn.spool.close()
    assert "rcpt_is_local" not in e["recipients"][0] and e["policy_banks"] == ["MYNETS"] and e["originating"]


def test_raw_8bit_envelope_text_becomes_valid_unicode(tmp_path):
    config = config_from(tmp_path)
    outcome = Outcome(Action.CONTINUE)
    txn = txn_of(HEADERS, rcpts=("j\udcc3\udcbcrg@example.com", "m\udcfcller@example.com"))
    try:
        built = events.build(config, merge(config, ()), txn, None, outcome, 5.0)
    finally:
        txn.spool.close()
    line = events.json_line(built)
    line.encode("utf-8")   # no lone surrogates left
    e = valid(json.loads(line))
    assert e["rcpt_to"] == ["jürg@example.com", "m\ufffdller@example.com"]
    assert json.loads(events.json_line({"mail_id": "m", "n": [1, "plain"]})) == {"mail_id": "m", "n": [1, "plain"]}


# --- redaction ---------------------------------------------------------------------------------------


def sample_event(tmp_path) -> dict:
    return run_pipeline(tmp_path, HEADERS, BODY, rcpts=("b@example.com", "c@example.com"))


def test_redaction_of_addresses_keeps_domains_and_is_stable(tmp_path):
    e = sample_event(tmp_path)
    r = valid(events.redact(e, addresses=True, subjects=False))
    pa = events.pseudonym("a@example.org")
    assert pa.endswith("@example.org") and len(pa.split("@")[0]) == 12 and pa == events.pseudonym("A@example.org")
    assert r["mail_from"] == pa and r["author"] == [pa]
    assert r["rcpt_to"] == [events.pseudonym("b@example.com"), events.pseudonym("c@example.com")]
    assert [row["rcpt_to"] for row in r["recipients"]] == r["rcpt_to"]
    assert r["to_addr"] == [events.pseudonym("b@example.com"), events.pseudonym("c@example.com")]
    assert r["message"] == f"4711-01 PASS Clean <{pa}> -> <{r['rcpt_to'][0]}>,<{r['rcpt_to'][1]}>"
    assert r["subject"] == e["subject"]
    text = json.dumps(r)
    for addr in ("a@example.org", "b@example.com", "c@example.com", "d@example.net"):
        assert f'"{addr}"' not in text and f"<{addr}>" not in text
    assert e["mail_from"] == "a@example.org"   # the original is not changed


def test_redaction_of_subjects(tmp_path):
    e = sample_event(tmp_path)
    r = valid(events.redact(e, addresses=False, subjects=True))
    assert r["subject"] == "[redacted:" + hashlib.sha256("café menu".encode()).hexdigest()[:12] + "]"
    assert r["mail_from"] == "a@example.org"
    assert events.redact(e, addresses=False, subjects=False) is e


def test_the_null_sender_stays_visible():
    assert events.pseudonym("") == ""


class ListSink:
    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)

    def write_lines(self, lines):
        for line in lines:
            self.write(line)

    def close(self):
        pass


def event_config(tmp_path, target, extra=""):
    return config_from(tmp_path, f"event_log:\n  target: {target}\n  redact: {{addresses: true, subjects: true}}\n"
                       + extra)


def test_redaction_is_the_same_in_every_sink(tmp_path, monkeypatch):
    e = sample_event(tmp_path)
    got = {}
    # file
    log = events.EventLog()
    config = event_config(tmp_path, "file", "  path: ev.jsonl\n")
    assert log.emit(config, e) and log.flush()
    got["file"] = json.loads((tmp_path / "ev.jsonl").read_text())
    # stdout
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = events.EventLog()
    assert log.emit(event_config(tmp_path, "stdout"), e) and log.flush()
    got["stdout"] = json.loads(out.getvalue())
    # syslog, to a datagram socket of our own
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(10)
        log = events.EventLog()
        config = event_config(tmp_path, "syslog", f"log:\n  syslog_socket: {path}\n  syslog_facility: local3\n")
        assert log.emit(config, e) and log.flush()
        datagram = server.recv(65536).decode()
        log.close()
    prefix = f"<{19 * 8 + 6}>pymavis-event[{os.getpid()}]: "
    assert datagram.startswith(prefix)
    got["syslog"] = json.loads(datagram[len(prefix):].rstrip("\x00"))
    expected = valid(events.redact(e, addresses=True, subjects=True))
    assert got == {"file": expected, "stdout": expected, "syslog": expected}


# --- the file sink and the queue -------------------------------------------------------------------


def test_file_sink_appends_one_line_per_event_and_reopens_after_logrotate(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"earlier": 1}\n')
    config = config_from(tmp_path, "event_log:\n  target: file\n")   # default path: STATE_DIR/events.jsonl
    assert events.default_path(config) == str(path)
    log = events.EventLog()
    for i in range(3):
        assert log.emit(config, {"mail_id": f"m{i}", "n": i})
    assert log.flush()
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"earlier": 1}, *({"mail_id": f"m{i}", "n": i} for i in range(3))]
    os.rename(path, tmp_path / "events.jsonl.1")   # logrotate without copytruncate
    assert log.emit(config, {"mail_id": "after"}) and log.flush()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"mail_id": "after"}]
    assert len((tmp_path / "events.jsonl.1").read_text().splitlines()) == 4
    assert (log.written, log.dropped, log.failed) == (4, 0, 0)
    log.close()


def test_a_failing_sink_is_logged_and_never_raises(tmp_path, caplog):
    config = config_from(tmp_path, f"event_log:\n  target: file\n  path: {tmp_path}/missing/dir/ev.jsonl\n")
    log = events.EventLog()
    with pytest.raises(events.SinkError, match="cannot open the event log .*missing/dir/ev.jsonl"):
        log.open_check(config)
    with caplog.at_level(logging.ERROR, logger="pymavis"):
        for mail_id in ("m1", "m2"):   # two batches, two failures
            assert log.emit(config, {"mail_id": mail_id}) and log.flush()
    assert log.failed == 2 and log.written == 0
    errors = [r.getMessage() for r in caplog.records if "event log" in r.getMessage()]
    assert len(errors) == 1 and "events are dropped until it works (1 so far)" in errors[0]   # once a minute


def test_events_off_by_default(tmp_path):
    config = config_from(tmp_path)
    assert config["event_log"] == {"target": "none", "path": None, "redact": {"addresses": False, "subjects": False}}
    assert events.EventLog().emit(config, {"mail_id": "m"}) is False


def test_a_full_queue_drops_events_instead_of_waiting(tmp_path, caplog):
    entered, release = threading.Event(), threading.Event()

    class Stuck(ListSink):
        def write(self, line):
            entered.set()
            release.wait(10)
            super().write(line)

    config = config_from(tmp_path, "event_log:\n  target: stdout\n")
    log = events.EventLog(max_queued=1)
    sink = log._sinks[events.sink_key(config)] = Stuck()
    with caplog.at_level(logging.ERROR, logger="pymavis"):
        assert log.emit(config, {"mail_id": "m1"})
        assert entered.wait(10)                       # the writer holds m1
        assert log.emit(config, {"mail_id": "m2"})    # queued
        assert not log.emit(config, {"mail_id": "m3"})
        release.set()
        assert log.flush()
    assert [json.loads(line)["mail_id"] for line in sink.lines] == ["m1", "m2"]
    assert log.dropped == 1 and any("event log queue full" in r.getMessage() for r in caplog.records)


def test_observing_never_raises_into_the_milter(tmp_path, monkeypatch, caplog):
    config = config_from(tmp_path, "event_log:\n  target: stdout\n")
    outcome = Outcome(Action.CONTINUE)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(events, "build", broken)
    txn = txn_of(HEADERS)
    try:
        with caplog.at_level(logging.ERROR, logger="pymavis"):
            observe.after_answer(config, merge(config, ()), txn, None, outcome, elapsed_ms=3.0)
    finally:
        txn.spool.close()
    (record,) = [r for r in caplog.records if "recording the TIMING line" in r.getMessage()]
    assert txn.mail_id in record.getMessage() and record.exc_info[1].args == ("boom",)


# --- TIMING ------------------------------------------------------------------------------------------


def test_timing_line():
    class Txn:
        started, data_done = 100.0, 100.003

    result = pipeline.Result(Outcome(Action.CONTINUE), (), (), (("lookups", 1.0), ("decode", 12.0), ("virus", 40.0),
                                                                ("spam", 150.0)))
    assert observe.timing_line(Txn(), result, 212.0, 35.2) == (
        "TIMING [total 212 ms, cpu 35 ms] - receive: 3 (1%), lookups: 1 (0%), decode: 12 (6%), virus: 40 (19%), "
        "spam: 150 (71%), rest: 6 (3%)")
    assert observe.timing_line(Txn(), None, 10.0) == "TIMING [total 10 ms] - receive: 3 (30%), rest: 7 (70%)"


@pytest.mark.parametrize("level, logged", [("debug", False), ("info", True)])
def test_timing_level(tmp_path, caplog, level, logged):
    config = config_from(tmp_path, f"log:\n  timing_level: {level}\n")
    txn = txn_of(HEADERS)
    try:
        with caplog.at_level(logging.INFO, logger="pymavis"):
            observe.after_answer(config, merge(config, ()), txn, None, Outcome(Action.CONTINUE), elapsed_ms=3.0)
    finally:
        txn.spool.close()
    assert any(r.getMessage().startswith("TIMING [total 3 ms] - receive: ") for r in caplog.records) is logged


# --- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("event_log:\n  target: files\n", "event_log.target: expected one of none, file, stdout, syslog, got 'files' "
                                      "(did you mean 'file'?)"),
    ("event_log:\n  redact: {adresses: true}\n", "event_log.redact: unknown key 'adresses' (did you mean 'addresses'?)"),
    ("log:\n  timing_level: loud\n", "log.timing_level: expected one of debug, info, notice, warning, error, got 'loud'"),
], ids=["target", "redact-key", "timing-level"])
def test_event_settings_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        config_from(tmp_path, text)
    assert any(message in e for e in err.value.errors), err.value.errors


def test_digest_body_hashed_as_the_body_arrives_equals_a_second_read():
    """The milter hashes the body while it arrives when events are on; the value must be the
    one digest_body reads back from the spool, for every corpus message as Postfix splits it."""
    from harness.milterclient import split_message
    from harness.samples import corpus_files
    from pymavis.transaction import Connection, TransactionBuilder

    def digest(raw: bytes, hashing: bool, store_limit=None):
        conn = Connection("c1", "192.0.2.1", 40000, None, None, (), 0.0)
        builder = TransactionBuilder(conn, "<a@example.org>", (), {}, 100 * 1024, None, digest_body=hashing)
        builder.store_limit = store_limit
        fields, body = split_message(raw)
        for name, value in fields:
            builder.add_header(name.decode(), value.decode("utf-8", "surrogateescape"), name + b": " + value + b"\r\n")
        builder.end_of_headers()
        for i in range(0, len(body), 65535):
            builder.add_body(body[i:i + 65535])
        try:
            return events.digest_body(builder.spool)
        finally:
            builder.close()

    paths = list(corpus_files(CORPUS))
    assert len(paths) > 500
    for path in paths:
        raw = open(path, "rb").read()
        fields, _ = split_message(raw)
        if not fields:   # all body: a second read cannot tell where the header section ends
            continue
        assert digest(raw, True) == digest(raw, False), path
    assert digest(b"Subject: x\r\n\r\n" + b"a" * 5000, True, store_limit=1000) is None   # not stored whole
