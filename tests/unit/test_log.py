"""Log levels (log.py): amavis's $log_level 0-5 in `log.level`, syslog priorities as amavis
sends them (NOTICE is syslog's notice, not warning), a checked syslog facility, and one
message logged at debug (`debug_sender` / `debug_recipient`) while the others stay at the
configured level."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from harness.txns import config_from
from pymavis import log as logmod
from pymavis.config import ConfigError
from pymavis.policy import merge


@pytest.fixture
def restore_logging():
    """setup() changes the process-wide 'pymavis' logger: put it back for the other tests."""
    logger = logmod.log
    saved = (list(logger.handlers), logger.level, logger.propagate, logmod._base_level, logmod._debugging)
    yield
    for h in list(logger.handlers):
        logger.removeHandler(h)
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    logmod._base_level, logmod._debugging = saved[3], saved[4]


def settings(**over):
    return {"level": "info", "target": "stderr", "syslog_facility": "mail", "syslog_socket": "/dev/log",
            "timing_level": "debug", **over}


@pytest.mark.parametrize("value, name", [(0, "notice"), (1, "info"), (2, "info"), (3, "debug"), (4, "debug"),
                                         (5, "debug"), ("warning", "warning"), ("notice", "notice")])
def test_amavis_log_levels_map_to_our_names(tmp_path, value, name):
    config = config_from(tmp_path, f"log:\n  level: {value}\n  timing_level: {value}\n")
    assert config["log"]["level"] == name and config["log"]["timing_level"] == name


@pytest.mark.parametrize("text, message", [
    ("level: 6", "log.level: expected amavis's log_level 0-5 or one of debug, info, notice, warning, error, got 6"),
    ("level: true", "log.level: expected one of debug, info, notice, warning, error or 0-5, got a boolean"),
    ("level: infp", "(did you mean 'info'?)"),
    ("syslog_facility: mial", "(did you mean 'mail'?)"),
])
def test_bad_levels_and_facilities(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        config_from(tmp_path, f"log:\n  {text}\n")
    assert message in str(err.value)


def test_syslog_priorities_are_amavis(tmp_path, restore_logging):
    """A datagram socket stands in for /dev/log: <PRI> is facility * 8 + severity."""
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(path)
        sink.settimeout(5)
        logmod.setup(settings(level="debug", target="syslog", syslog_socket=path, syslog_facility="local3"))
        sent = [(logmod.log.error, 3), (logmod.log.warning, 4), (lambda m: logmod.log.log(logmod.NOTICE, m), 5),
                (logmod.log.info, 6), (logmod.log.debug, 7)]
        for emit, _ in sent:
            emit("hello")
        got = [sink.recv(4096) for _ in sent]
    local3 = 19
    assert [g.split(b">", 1)[0] for g in got] == [f"<{local3 * 8 + sev}".encode() for _, sev in sent]
    assert got[0].endswith(b"]: hello\x00")


def test_one_message_at_debug(capsys, restore_logging):
    logmod.setup(settings(level="info"))
    plain = logmod.for_context("1-01")
    debugged = logmod.for_context("1-02", debug=True)
    plain.debug("plain before")
    assert not logmod.log.isEnabledFor(logging.DEBUG)
    logmod.debug_begin()
    try:
        plain.debug("plain during")
        debugged.debug("debugged line")
        plain.info("plain info")
        logmod.log.debug("module line, other thread")
        with logmod.debugging(True):
            logmod.log.debug("module line, the message's worker")
        assert debugged.isEnabledFor(logging.DEBUG) and not plain.isEnabledFor(logging.DEBUG)
    finally:
        logmod.debug_end()
    debugged.debug("debugged after its end")
    err = capsys.readouterr().err
    assert "(1-02) debugged line" in err and "(1-01) plain info" in err
    assert "module line, the message's worker" in err
    for absent in ("plain before", "plain during", "module line, other thread", "after its end"):
        assert absent not in err, absent
    assert not logmod.log.isEnabledFor(logging.DEBUG)


def test_two_messages_at_debug_overlap(restore_logging):
    logmod.setup(settings(level="warning"))
    logmod.debug_begin()
    logmod.debug_begin()
    logmod.debug_end()
    assert logmod.log.isEnabledFor(logging.DEBUG)
    logmod.debug_end()
    assert not logmod.log.isEnabledFor(logging.INFO)


def test_a_reload_keeps_messages_at_debug(restore_logging):
    logmod.setup(settings(level="info"))
    logmod.debug_begin()
    try:
        logmod.setup(settings(level="notice"))
        assert logmod.log.isEnabledFor(logging.DEBUG)
    finally:
        logmod.debug_end()
    assert not logmod.log.isEnabledFor(logging.INFO)


def test_debugging_is_per_thread(restore_logging):
    seen = {}

    def other():
        seen["other"] = getattr(logmod._thread, "debug", False)

    with logmod.debugging(True):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        seen["this"] = logmod._thread.debug
    assert seen == {"other": False, "this": True} and not getattr(logmod._thread, "debug", False)


@pytest.mark.parametrize("sender, rcpt, expected", [
    ("debug@example.org", "b@example.com", (True, False)),
    ("a@example.org", "watched@example.com", (False, True)),
    ("a@example.org", "b@example.com", (False, False)),
    ("", "b@example.com", (False, False)),
], ids=["by-sender", "by-recipient", "neither", "null-sender"])
def test_debug_lookups(tmp_path, sender, rcpt, expected):
    config = config_from(tmp_path, "policy:\n  debug_sender: [debug@example.org]\n"
                                   "  debug_recipient: [watched@example.com]\n")
    policy = merge(config, ())
    got = (bool(policy.rcpt_value("debug_sender", sender, is_local=False)),
           bool(policy.rcpt_value("debug_recipient", rcpt)))
    assert got == expected
