"""Observability behind a real Postfix (with the session's real clamd and spamd): a clean, a
banned, a virus and a spam message give one JSON event each in the event log file, with the values the MTA and the client saw (queue id, action,
category, reply, quarantine), valid against docs/event.schema.json; each gets a TIMING
line; the Prometheus endpoint, scraped over HTTP, counts them. A message whose checks
fail inside pymavis (PYMAVIS_FAULT_INJECT) is answered TEMPFAIL and still has its event
and its count."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT
from harness.spamd import GTUBE
from harness.virusmail import eicar_plain
from harness.net import LOOPBACK, free_port, wait_until
from harness.postfix import PostfixInstance
from harness.pymavisd import PymavisProcess
from harness.samples import pe, zip_bytes

SENDER = "alice@example.org"
FAULT = "PYMAVIS-EVENTS-FAULT"
SCHEMA = json.load(open(os.path.join(ROOT, "docs", "event.schema.json"), encoding="utf-8"))


def message(subject: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    import base64
    head = (f"From: Alice <{SENDER}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n")
    if attachment is None:
        return (head + "\r\nhello\r\n").encode()
    name, data = attachment
    body = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (head + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            "--b1\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{body}--b1--\r\n').encode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, public_tmp, sink, clamd, spamd):
    workdir = tmp_path_factory.mktemp("pymavis")
    metrics_port = free_port()
    main = f"""\
        mydomain: example.test
        av_scanners: [{{name: clamd, socket: "{clamd.socket_spec("unix")}", timeout_s: 30}}]
        spam_scanners: [{{name: spamd, socket: "{spamd.socket_spec("unix")}", timeout_s: 60}}]
        log:
          timing_level: info
        event_log:
          target: file
          path: {workdir}/events.jsonl
        metrics:
          listen: "{LOOPBACK}:{metrics_port}"
        policy:
          mynetworks: [10.0.0.0/8]
          local_domains: [example.net]
          final_banned_destiny: reject
          final_virus_destiny: reject
          final_spam_destiny: reject
        """
    proc = PymavisProcess(str(workdir), main, env={"PYMAVIS_FAULT_INJECT": FAULT}).start()
    try:
        with PostfixInstance(public_tmp / "postfix", sink_port=sink.port, milter=proc.socket_spec) as pf:
            yield proc, pf, workdir / "events.jsonl", metrics_port
    finally:
        assert proc.stop() == 0


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def event_for(path, subject: str) -> dict:
    def find():
        if not path.exists():
            return None
        return next((e for e in map(json.loads, path.read_text().splitlines()) if e.get("subject") == subject), None)

    return wait_until(find, 15, what=f"the event of {subject!r} in {path}")


def test_clean_and_banned_messages_give_events_and_metrics(setup, sink):
    proc, postfix, path, metrics_port = setup
    before = scrape(metrics_port)
    clean_key = ("pymavis_messages_total", (("action", "pass"), ("bank", "DEFAULT"), ("ccat", "Clean")))
    banned_key = ("pymavis_messages_total", (("action", "reject"), ("bank", "DEFAULT"), ("ccat", "Banned")))

    clean_subject = f"clean {uuid.uuid4().hex[:8]}"
    assert postfix.send("mx", SENDER, ["bob@example.net"], message(clean_subject)).code == 250
    banned_subject = f"banned {uuid.uuid4().hex[:8]}"
    reply = postfix.send("mx", SENDER, ["bob@example.net"],
                         message(banned_subject, ("docs.zip", zip_bytes(("run.exe", pe())))))
    assert reply.code == 554, reply

    clean = event_for(path, clean_subject)
    banned = event_for(path, banned_subject)
    for e in (clean, banned):
        jsonschema.validate(e, SCHEMA)
        assert e["mail_from"] == SENDER and e["rcpt_to"] == ["bob@example.net"] and e["author"] == [SENDER]
        assert e["client_ip"] == LOOPBACK and e["queue_id"] and e["size"] > 0
        assert f"mail_id: {e['mail_id']}" in proc.log_text() and f"Queue-ID: {e['queue_id']}" in proc.log_text()
    assert (clean["action"], clean["content_type"], clean["recipients"][0]["ccat_main"]) == (["PASS"], "Clean", "Clean")
    assert clean["recipients"][0]["rcpt_is_local"] is True and "quarantine" not in clean
    assert (banned["action"], banned["content_type"], banned["smtp_code"]) == (["REJECT"], "Banned", ["554"])
    row = banned["recipients"][0]
    assert row["ccat_blocking"] == "Banned" and row["smtp_response"] == f"{reply.code} {reply.text}"
    assert banned["quarantine"] == "local:." and banned["attached_file_names"] == ["docs.zip", "run.exe"]
    assert "B" in banned["checks_performed"].split()
    assert banned["elapsed"]["Total"] >= banned["elapsed"]["Decoding"] > 0

    timing = [line for line in proc.log_text().splitlines() if " TIMING [total " in line]
    assert len(timing) >= 2 and all(" - receive: " in line and ", decode: " in line for line in timing)

    after = wait_until(lambda: (s := scrape(metrics_port)).get(banned_key, 0) > before.get(banned_key, 0) and s,
                       15, what="the banned message in the metrics")
    assert after[clean_key] == before.get(clean_key, 0) + 1
    assert after[banned_key] == before.get(banned_key, 0) + 1
    recipients = ("pymavis_recipients_total", (("action", "REJECT"), ("ccat", "Banned")))
    assert after[recipients] == before.get(recipients, 0) + 1
    stage = ("pymavis_stage_seconds_count", (("stage", "decode"),))
    assert after[stage] == before.get(stage, 0) + 2
    assert after[("pymavis_quarantine_stores_total", (("result", "kept"),))] >= 1
    assert after[("pymavis_events_total", (("result", "written"),))] >= 2


def test_an_internal_error_still_gives_an_event_and_a_count(setup):
    proc, postfix, path, metrics_port = setup
    key = ("pymavis_check_errors_total", (("check", "pipeline"), ("reason", "internal")))
    before = scrape(metrics_port).get(key, 0)
    subject = f"{FAULT} {uuid.uuid4().hex[:8]}"
    reply = postfix.send("mx", SENDER, ["bob@example.net"], message(subject))
    assert reply.code == 451, reply
    e = event_for(path, subject)
    jsonschema.validate(e, SCHEMA)
    assert e["action"] == ["TEMPFAIL"] and e["smtp_code"] == ["451"] and e["content_type"] == "MTA"
    assert e["error"].startswith("internal error: InjectedFault: fault injected by PYMAVIS_FAULT_INJECT")
    assert "internal error" in proc.log_text() and e["mail_id"] in proc.log_text()
    assert scrape(metrics_port)[key] == before + 1


def test_virus_and_spam_messages_give_events_with_names_and_scores(setup):
    proc, postfix, path, metrics_port = setup
    virus_subject = f"virus {uuid.uuid4().hex[:8]}"
    reply = postfix.send("mx", SENDER, ["bob@example.net"], eicar_plain(virus_subject))
    assert reply.code == 554 and "INFECTED" in reply.text, reply
    spam_subject = f"spam {uuid.uuid4().hex[:8]}"
    gtube = message(spam_subject).replace(b"hello", GTUBE)
    reply = postfix.send("mx", SENDER, ["bob@example.net"], gtube)
    assert reply.code == 554 and "spam" in reply.text, reply
    virus, spam = event_for(path, virus_subject), event_for(path, spam_subject)
    for e in (virus, spam):
        jsonschema.validate(e, SCHEMA)
        assert e["action"] == ["REJECT"] and e["quarantine"] == "local:."
    assert virus["content_type"] == "Virus" and any("Eicar" in n for n in virus["virusnames"])
    assert "V" in virus["checks_performed"].split()
    assert spam["content_type"] == "Spam" and spam["spam_score"] >= 1000 and "GTUBE" in spam["tests"]
    assert spam["recipients"][0]["ccat_main"] == "Spam" and "S" in spam["checks_performed"].split()
