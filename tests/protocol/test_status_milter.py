"""`pymavis status` and `pymavis stats` against a running `pymavis milter`, and one message
logged at debug: while a fake clamd (or spamd) stalls, status shows the message in state V
(or S) and, past --stuck-s, STUCK, while the metrics say a worker is busy; once answered its
trail ends in '.'; stats counts it (and its decoding, OpsDecByMimeParser); the metrics time
each call to the scanner by its name, and the worker pool reads idle again; only the message
from `debug_sender` gets its debug lines (the TIMING line is at debug)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.fakescanner import FakeScanner
from harness.fakespamd import FakeSpamd
from harness.milterclient import MilterClient
from harness.net import LOOPBACK, free_port, wait_until
from harness.pymavisd import PymavisProcess
from pymavis import control

MESSAGE = b"From: a@example.org\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\nSubject: hello\r\n\r\nhello\r\n"
STALL_S = 2.0   # how long the fake scanner keeps the message in its state


def pymavis_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(control.__file__), ".."))
    return subprocess.run([sys.executable, "-m", "pymavis", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from the milter's /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def entry_in(path: str, predicate):
    """The first status entry for which predicate holds, else None."""
    return next((e for e in control.ask(path, "status")["entries"] if predicate(e)), None)


def scanner_yaml(kind: str, fake) -> str:
    if kind == "virus":
        return f'av_scanners:\n  - {{name: fake, socket: "{fake.socket_spec}", method: instream, timeout_s: 30}}\n'
    return f'spam_scanners:\n  - {{name: fake, socket: "{fake.socket_spec}", timeout_s: 30}}\n'


def stalling(kind: str):
    if kind == "virus":
        return FakeScanner("slow", reply=b"stream: OK\0", delay=STALL_S)
    return FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.1 / 5.0\r\n\r\n", delay=STALL_S)


@pytest.mark.parametrize("kind, letter", [("virus", "V"), ("spam", "S")])
def test_status_shows_the_stalled_stage_then_done(tmp_path, kind, letter):
    metrics_port = free_port()
    with stalling(kind) as fake:
        milter = PymavisProcess(str(tmp_path), "log: {level: info}\n" + scanner_yaml(kind, fake)
                                + f'metrics:\n  listen: "{LOOPBACK}:{metrics_port}"\n'
                                + "policy:\n  debug_sender: [debug@example.org]\n").start()
        ctl = os.path.join(str(tmp_path), "state", "pymavis.ctl")
        try:
            milter.wait_log("control socket ")
            assert stat.S_IMODE(os.stat(ctl).st_mode) == 0o600
            with MilterClient(LOOPBACK, milter.port) as client:
                results = {}
                sender = threading.Thread(target=lambda: results.setdefault("r", client.send_message(
                    MESSAGE, mail_from="debug@example.org", rcpts=["b@example.com"])))
                sender.start()
                try:
                    busy = wait_until(lambda: entry_in(ctl, lambda e: e["trail"].endswith(letter)), 20,
                                      what=f"a connection in state {letter}")
                    assert busy["trail"].startswith("Amrd=") and busy["busy_s"] is not None and busy["mail_id"]
                    shown = pymavis_cli("status", "--socket", ctl, "--stuck-s", "0")
                    assert shown.returncode == 0, shown.stderr
                    line = next(li for li in shown.stdout.splitlines() if busy["log_id"] in li)
                    assert line.startswith("! ") and line.endswith(f"{letter}  STUCK"), shown.stdout
                    stalled = scrape(metrics_port)
                    assert stalled[("pymavis_pool_busy", (("pool", "work"),))] == 1
                    assert stalled[("pymavis_pool_waiting", (("pool", "work"),))] == 0
                    assert stalled[("pymavis_messages_in_flight", ())] == 1
                    if kind == "spam":   # the spamd call on its own pool
                        assert stalled[("pymavis_pool_busy", (("pool", "spam"),))] == 1
                finally:
                    sender.join(30)
                assert results["r"].action == "continue"
                done = entry_in(ctl, lambda e: e["conn_id"] == busy["conn_id"])
                assert done["trail"].endswith("Q.") and letter in done["trail"] and done["busy_s"] is None
                shown = pymavis_cli("status", "-c", milter.conf)
                assert shown.returncode == 0 and "STUCK" not in shown.stdout, shown
                # a second message, not from debug_sender, on the same connection
                assert client.send_message(MESSAGE, mail_from="a@example.org", rcpts=["c@example.com"]).action \
                    == "continue"
                again = entry_in(ctl, lambda e: e["conn_id"] == busy["conn_id"])
                assert again["trail"] == done["trail"] + done["trail"][1:], again   # Amrd=...Q.mrd=...Q.
            wait_until(lambda: entry_in(ctl, lambda e: True) is None, 10, what="the connection gone from status")
            stats = pymavis_cli("stats", "--socket", ctl)
            assert stats.returncode == 0, stats.stderr
            rows = {line.split()[0]: line.split()[1:] for line in stats.stdout.splitlines() if line.strip()}
            assert rows["InMsgs"][0] == "2" and rows["InMsgsRecips"][0] == "2"
            assert rows["ContentCleanMsgs"][:1] == ["2"] and rows["ContentCleanMsgs"][2:] == ["100.0", "%", "(InMsgs)"]
            assert rows["OpsDecByMimeParser"][:1] == ["2"] and rows["OpsDec"][2:] == ["100.0", "%", "(InMsgs)"]
            idle = scrape(metrics_port)
            outcome = "clean" if kind == "virus" else "answered"
            calls = ("pymavis_scanner_seconds_count", (("kind", kind), ("outcome", outcome), ("scanner", "fake")))
            assert idle[calls] == 2, {k: v for k, v in idle.items() if k[0].startswith("pymavis_scanner")}
            for sample in ("pymavis_pool_busy", "pymavis_pool_waiting", "pymavis_messages_in_flight"):
                assert all(v == 0 for k, v in idle.items() if k[0] == sample), sample
            assert idle[("pymavis_pool_workers", (("pool", "work"),))] >= 1
            log = milter.log_text()
            assert "logging this message at debug: debug_sender <debug@example.org>" in log
            timing = [li for li in log.splitlines() if "TIMING [" in li]
            assert len(timing) == 1, timing   # timing_level debug: only the debugged message
            assert f"({busy['log_id']}) TIMING" in timing[0]
            assert "RCPT <b@example.com>" in log and "RCPT <c@example.com>" not in log
        finally:
            assert milter.stop() == 0
        assert not os.path.exists(ctl)
