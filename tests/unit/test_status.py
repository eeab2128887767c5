"""`pymavis status` and `pymavis stats` without a milter: the status board's trails
(progress.py), the pipeline's stage hook, the control socket (control.py: mode 0600, one
answer per request, unknown commands, stale and live sockets, a silent client), the
rendering and the command line (statuscmd.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading

import pytest

from harness.net import wait_until
from harness.txns import HEADERS, config_from, txn_of
from pymavis import cli, control, pipeline, progress, statuscmd
from pymavis.checks import content, spam, virus
from pymavis.policy import merge


# --- the board -------------------------------------------------------------------------

def test_trail_of_one_message_and_the_next():
    board = progress.Board()
    e = board.open("4711-01", "192.0.2.1")
    serial = board.begin(e, "4711-01", "MAILID000001")
    for letter in "rrrd":
        board.mark(e, letter)
    with board.checking(e, serial):
        for stage in (content.check, virus.check, lambda scan: None, spam.check, progress.QUARANTINE):
            progress.entering(stage)
    [snap] = board.snapshot()
    assert snap["trail"] == "Amrd=DVSQ" and snap["busy_s"] is not None and snap["mail_id"] == "MAILID000001"
    board.done(e)
    [snap] = board.snapshot()
    assert snap["trail"] == "Amrd=DVSQ." and snap["busy_s"] is None
    assert snap["age_s"] >= snap["state_s"] >= 0
    second = board.begin(e, "4711-01-2", "MAILID000002")
    board.mark(e, "r")
    board.idle(e)            # aborted: no '.'
    [snap] = board.snapshot()
    assert (snap["log_id"], snap["trail"], snap["busy_s"], second) == ("4711-01-2", "Amrd=DVSQ.mr", None, 2)
    board.close(e)
    assert board.snapshot() == []


def test_late_marks_of_an_answered_message_are_ignored():
    """A worker still running after the scan deadline (answered TEMPFAIL) marks nothing."""
    board = progress.Board()
    e = board.open("1-01", None)
    first = board.begin(e, "1-01", "A")
    board.done(e)
    board.mark(e, "V", first)
    board.begin(e, "1-01-2", "B")
    board.mark(e, "S", first)
    assert board.snapshot()[0]["trail"] == "Am.m"


def test_the_trail_keeps_its_newest_letters():
    board = progress.Board()
    e = board.open("1-01", None)
    for i in range(progress.TRAIL_MAX):
        board.begin(e, f"1-01-{i}", "X")
        board.done(e)
    trail = board.snapshot()[0]["trail"]
    assert len(trail) == progress.TRAIL_MAX and trail.endswith("m.m.")


def test_entering_outside_the_milter_does_nothing():
    progress.entering(virus.check)   # no entry on this thread: no error, no effect


def test_the_pipeline_names_its_stages(tmp_path):
    """The hook in pipeline.process: a clean message without scanners passes D, V, S, Q."""
    config = config_from(tmp_path)
    board = progress.Board()
    e = board.open("1-01", None)
    serial = board.begin(e, "1-01", "X")
    txn = txn_of(HEADERS)
    try:
        with board.checking(e, serial):
            pipeline.process(config, merge(config, ()), txn)
    finally:
        txn.spool.close()
    assert board.snapshot()[0]["trail"] == "Am=DVSQ"


# --- the control socket ----------------------------------------------------------------

@pytest.fixture
def ctl_path(tmp_path):
    return str(tmp_path / "pymavis.ctl")


@pytest.fixture
def server(ctl_path):
    calls = []

    def status():
        calls.append("status")
        return {"version": "x", "pid": 1, "uptime_s": 3.0, "in_flight": 0, "entries": []}

    def broken():
        raise RuntimeError("boom")

    srv = control.ControlServer(ctl_path, {"status": status, "broken": broken})
    assert srv.start()
    yield srv, calls
    srv.stop()


def test_answers_status_and_is_mode_0600(server, ctl_path):
    srv, calls = server
    assert stat.S_IMODE(os.stat(ctl_path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(ctl_path).st_mode)
    assert control.ask(ctl_path, "status")["entries"] == []
    assert calls == ["status"]
    assert not [n for n in os.listdir(os.path.dirname(ctl_path)) if n.startswith(".pymavis.ctl.")]


def test_unknown_command_and_a_failing_handler_are_errors(server, ctl_path, caplog):
    with pytest.raises(control.ControlError, match=r"unknown command 'nanny' \(known: broken, status\)"):
        control.ask(ctl_path, "nanny")
    with pytest.raises(control.ControlError, match="answering 'broken' failed: RuntimeError: boom"):
        control.ask(ctl_path, "broken")
    assert control.ask(ctl_path, "status")["pid"] == 1   # still serving


def test_a_silent_client_does_not_block_the_next_for_long(ctl_path, monkeypatch):
    monkeypatch.setattr(control, "CLIENT_TIMEOUT_S", 0.3)
    srv = control.ControlServer(ctl_path, {"status": lambda: {"ok": 1}})
    assert srv.start()
    try:
        with socket.socket(socket.AF_UNIX) as silent:
            silent.connect(ctl_path)
            assert control.ask(ctl_path, "status", timeout=5) == {"ok": 1}
    finally:
        srv.stop()


def test_stale_socket_is_replaced_a_live_one_is_not(ctl_path, caplog):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(ctl_path)
    stale.close()                      # the file stays, nobody listens
    first = control.ControlServer(ctl_path, {"status": lambda: {"who": "first"}})
    assert first.start()
    try:
        second = control.ControlServer(ctl_path, {"status": lambda: {"who": "second"}})
        assert not second.start()
        assert any("another running pymavis answers there" in r.getMessage() for r in caplog.records)
        assert control.ask(ctl_path, "status") == {"who": "first"}
    finally:
        first.stop()
    assert not os.path.exists(ctl_path)


def test_a_path_too_long_is_logged_and_the_milter_runs_without(tmp_path, caplog):
    srv = control.ControlServer(str(tmp_path / ("x" * 120)), {})
    assert not srv.start()
    assert any("cannot be opened" in r.getMessage() and "running without it" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("setup, message", [
    ("missing", "no control socket at"),
    ("refused", "nobody answers at"),
], ids=["missing", "refused"])
def test_asking_a_milter_that_is_not_there(ctl_path, setup, message):
    if setup == "refused":
        s = socket.socket(socket.AF_UNIX)
        s.bind(ctl_path)
        s.close()
    with pytest.raises(control.ControlError, match=message):
        control.ask(ctl_path, "status")


def test_socket_path_from_the_configuration(tmp_path):
    assert control.socket_path(config_from(tmp_path)) == os.path.join(str(tmp_path), "pymavis.ctl")
    assert control.socket_path(config_from(tmp_path, "control_socket: /run/pymavis/ctl\n")) == "/run/pymavis/ctl"
    assert control.socket_path(config_from(tmp_path, "control_socket: null\n")) is None


# --- rendering and the command line ----------------------------------------------------

STATUS = {"version": "1.0", "pid": 4711, "uptime_s": 4000.0, "in_flight": 1, "entries": [
    {"log_id": "4711-01", "conn_id": "4711-01", "client": "192.0.2.1", "mail_id": "Ab3dE_f9Gh-2", "queue_id": "",
     "trail": "Amrd=DV", "age_s": 95.0, "busy_s": 94.5, "state_s": 80.0},
    {"log_id": "4711-02-3", "conn_id": "4711-02", "client": "", "mail_id": "", "queue_id": "",
     "trail": "Amrd=DVSQ.", "age_s": 3.0, "busy_s": None, "state_s": 0.5},
]}


def test_render_status_marks_what_is_stuck():
    text = statuscmd.render_status(STATUS, stuck_s=60)
    lines = text.splitlines()
    assert lines[0] == ("pymavis 1.0, pid 4711, up 1h06m; 2 connection(s), 1 message(s) checking, "
                        "1 stuck (busy 1m00s or more)")
    assert lines[2].startswith("! 4711-01 ") and lines[2].endswith("Ab3dE_f9Gh-2  Amrd=DV  STUCK")
    assert "1m35s" in lines[2] and "1m34s" in lines[2] and "1m20s" in lines[2]
    assert lines[3].startswith("  4711-02-3 ") and lines[3].endswith("-             Amrd=DVSQ.")
    assert "\x1b[" not in text
    assert "\x1b[1;31m! 4711-01" in statuscmd.render_status(STATUS, stuck_s=60, color=True)
    assert "STUCK" not in statuscmd.render_status(STATUS, stuck_s=100)


def test_render_status_says_how_many_wait_for_a_worker():
    head = statuscmd.render_status({**STATUS, "in_flight": 5, "waiting": 3, "busy": 2}, stuck_s=60).splitlines()[0]
    assert head.endswith("; 2 connection(s), 5 message(s) checking (3 waiting for a worker), 1 stuck (busy 1m00s "
                         "or more)")
    idle = statuscmd.render_status({**STATUS, "waiting": 0}, stuck_s=60).splitlines()[0]
    assert "waiting" not in idle


def test_render_stats_totals_per_hour_and_percent():
    answer = {"version": "1.0", "pid": 1, "started": 0, "uptime_s": 7200.0,
              "counters": {"InMsgs": 10, "InMsgsRecips": 12, "InMsgsSize": 5000, "ContentSpamMsgs": 0,
                           "ContentVirusMsgs": 4},
              "bases": {"InMsgs": "InMsgs", "InMsgsRecips": "InMsgs", "ContentSpamMsgs": "InMsgs",
                        "ContentVirusMsgs": "InMsgs"},
              "virus_names": [["Eicar-Test", 3], ["Win.Trojan.X", 1]]}
    lines = statuscmd.render_stats(answer, top=1).splitlines()
    assert lines[0].startswith("pymavis 1.0, pid 1, up 2h00m (since ")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:7]}
    assert rows["InMsgs"] == ["10", "5.0/h", "100.0", "%", "(InMsgs)"]
    assert rows["InMsgsRecips"] == ["12", "6.0/h", "120.0", "%", "(InMsgs)"]
    assert rows["InMsgsSize"] == ["5000", "2500.0/h"]
    assert rows["ContentVirusMsgs"] == ["4", "2.0/h", "40.0", "%", "(InMsgs)"]
    assert lines[-2:] == ["virus names, top 1:", f"  {'Eicar-Test':<40} {3:>8} {1.5:>10.1f}/h"]
    empty = statuscmd.render_stats({**answer, "counters": {"InMsgs": 0, "ContentVirusMsgs": 0}, "virus_names": []})
    assert "     - % (InMsgs)" in empty and empty.endswith("virus names: none seen\n")


def test_status_command_over_the_socket(ctl_path, capsys):
    srv = control.ControlServer(ctl_path, {"status": lambda: STATUS})
    assert srv.start()
    try:
        assert cli.main(["status", "--socket", ctl_path, "--stuck-s", "90"]) == 0
        out = capsys.readouterr().out
        assert "! 4711-01" in out and "STUCK" in out
        assert cli.main(["status", "--socket", ctl_path, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == STATUS
    finally:
        srv.stop()
    assert cli.main(["status", "--socket", ctl_path]) == 1
    assert "no control socket at" in capsys.readouterr().err


def test_watch_asks_again_until_interrupted(ctl_path, capsys, monkeypatch):
    frames = []

    def sleep(seconds):
        frames.append(seconds)
        if len(frames) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(statuscmd.time, "sleep", sleep)
    srv = control.ControlServer(ctl_path, {"status": lambda: STATUS})
    assert srv.start()
    try:
        assert cli.main(["status", "--socket", ctl_path, "--watch", "0.5"]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert frames == [0.5, 0.5, 0.5] and out.count("pymavis 1.0, pid 4711") == 3
    assert "\x1b[H" not in out   # not a terminal: frames one after another


def test_watch_goes_on_when_the_milter_is_away(ctl_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(statuscmd.time, "sleep", lambda s: calls.append(s) or (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["stats", "--socket", ctl_path, "--watch"]) == 0
    assert calls == [statuscmd.WATCH_DEFAULT_S]
    assert "no control socket at" in capsys.readouterr().out


def test_status_without_a_control_socket_in_the_configuration(tmp_path, capsys):
    config_from(tmp_path, "control_socket: null\n")
    assert cli.main(["status", "-c", str(tmp_path / "pymavis.yaml")]) == 1
    assert "control_socket is null" in capsys.readouterr().err


def test_server_thread_answers_concurrent_askers(server, ctl_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(control.ask(ctl_path, "status"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    wait_until(lambda: len(results) == 8, 5, what="eight answers")
