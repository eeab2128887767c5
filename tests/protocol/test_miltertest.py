"""The running milter, driven over its socket by Debian's miltertest: macros per stage,
bank choice by daemon name and port, reply texts, recipient deletion, internal errors."""

import pytest

from conftest import scanners_yaml

from harness.miltertest import results, run_script, transaction
from harness.pymavisd import PymavisProcess

MAIN = """\
daemon_name_policy: {ORIGINATING: ORIGINATING, LENIENT: LENIENT}
interface_policy: {10587: SUBMISSION}
log: {level: debug}
policy:
  local_domains: [example.com]
  message_size_limit: {"small@example.com": 300, "tiny@example.com": 100}
"""
BANKS = {
    "banks.yaml": """\
        ORIGINATING:
          originating: true
        LENIENT:
          on_internal_error: accept
        SUBMISSION:
          originating: true
          message_size_limit: 1000
          x_header_line: "checked by pymavis on submission"
    """,
}
BODY_SMALL = "hello\r\n"
BODY_2K = ("x" * 78 + "\r\n") * 25


@pytest.fixture(scope="module")
def milter(tmp_path_factory, clamd):
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pm")), MAIN + scanners_yaml(clamd), BANKS,
                          env={"PYMAVIS_FAULT_INJECT": "please-crash"}).start()
    yield proc
    assert proc.stop() == 0
    assert "pymavis stopped" in proc.log_text()


def run(milter, tmp_path, *, connect=None, rcpts=("<b@example.com>",), body=BODY_SMALL, subject="hi",
        mail_args=None, checks="", mail_macros=None):
    lua = transaction(milter.libmilter_spec, connect_macros=connect or {}, mail_from="<a@example.org>",
                      mail_macros=mail_macros,
                      rcpts=list(rcpts), headers=[("From", "a@example.org"), ("Date", "Sun, 22 Nov 2026 06:00:00 +0000"),
                               ("Subject", subject)],
                      body=body, mail_args=mail_args, checks=checks)
    out = run_script(lua, tmp_path)
    return results(out), out


def last_line(milter):
    lines = [l for l in milter.log_text().splitlines() if "mail_id:" in l]
    return lines[-1] if lines else ""


def test_clean_mail_passes_with_our_header(milter, tmp_path):
    r, out = run(milter, tmp_path, checks='print("RESULT hdr " .. tostring(mt.eom_check(conn, MT_HDRINSERT, "X-Virus-Scanned")))')
    assert r["eom"] == "c", out
    assert r["hdr"] == "true", out
    assert "Passed CLEAN {RelayedInbound}" in last_line(milter)
    assert "bank: DEFAULT" in last_line(milter)


@pytest.mark.parametrize("macros,bank", [
    ({"{daemon_name}": "ORIGINATING"}, "bank: ORIGINATING,"),
    ({"{daemon_port}": "10587"}, "bank: SUBMISSION,"),
    ({"{daemon_name}": "ORIGINATING", "{daemon_port}": "10587"}, "bank: ORIGINATING/SUBMISSION,"),
    ({"{client_addr}": "127.0.0.1"}, "bank: MYNETS,"),
], ids=["daemon-name", "daemon-port", "name-and-port", "client-addr-mynets"])
def test_bank_chosen_from_connect_macros(milter, tmp_path, macros, bank):
    r, out = run(milter, tmp_path, connect=macros)
    assert r["eom"] == "c", out
    assert bank in last_line(milter)


def test_auth_bank_from_mail_macros(milter, tmp_path):
    r, out = run(milter, tmp_path, mail_macros={"i": "QID9", "{auth_authen}": "joe", "{auth_type}": "PLAIN"})
    assert r["eom"] == "c", out
    line = last_line(milter)
    assert "bank: AUTH," in line and "Queue-ID: QID9" in line and "{RelayedInternal}" in line  # AUTH: originating


def test_on_internal_error_accept_lets_the_bank_pass_mail(milter, tmp_path):
    r, out = run(milter, tmp_path, connect={"{daemon_name}": "LENIENT"}, subject="please-crash too")
    assert r["eom"] == "c", out
    assert "reply: accept (on_internal_error)" in milter.log_text()


def test_submission_bank_header_text(milter, tmp_path):
    r, out = run(milter, tmp_path, connect={"{daemon_port}": "10587"},
                 checks='print("RESULT hdr " .. tostring(mt.eom_check(conn, MT_HDRINSERT, "X-Virus-Scanned", " checked by pymavis on submission")))')
    assert r["hdr"] == "true", out


def test_oversized_for_the_bank_limit_is_rejected_with_552(milter, tmp_path):
    r, out = run(milter, tmp_path, connect={"{daemon_port}": "10587"}, body=BODY_2K)
    assert r["eom"] == "y", out   # 'y': a reply code was set (miltertest's MT_SMTPREPLY check is unreliable)
    assert "Blocked OVERSIZED {RejectedInternal}" in last_line(milter)
    size = len("From: a@example.org\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\nSubject: hi\r\n\r\n") + len(BODY_2K)
    assert f"reply: 552 5.3.4 Message size ({size} bytes) exceeds recipient's size limit (1000)" in last_line(milter)



def test_declared_size_refuses_the_recipient_early(milter, tmp_path):
    r, out = run(milter, tmp_path, rcpts=("<tiny@example.com>", "<b@example.com>"), mail_args=["SIZE=5000"])
    assert r["rcpt0"] == "y", out     # 552 for tiny@ (limit 100)
    assert r["rcpt1"] == "c", out
    assert "declared SIZE 5000 > message_size_limit 100" in milter.log_text()


def test_mixed_recipients_oversized_one_is_deleted(milter, tmp_path):
    r, out = run(milter, tmp_path, rcpts=("<small@example.com>", "<b@example.com>"), body=BODY_2K,
                 checks='print("RESULT del " .. tostring(mt.eom_check(conn, MT_RCPTDELETE, "<small@example.com>")))\n'
                        'print("RESULT delb " .. tostring(mt.eom_check(conn, MT_RCPTDELETE, "<b@example.com>")))')
    assert r["eom"] == "c", out
    assert (r["del"], r["delb"]) == ("true", "false"), out
    log = milter.log_text()
    assert "Blocked OVERSIZED {BouncedInbound}" in log and "-> <small@example.com>" in log


def test_internal_error_answers_451_with_mail_id(milter, tmp_path):
    r, out = run(milter, tmp_path, subject="please-crash now")
    assert r["eom"] == "y", out   # 'y': a reply code was set (miltertest's MT_SMTPREPLY check is unreliable)
    log = milter.log_text()
    assert "internal error" in log and "InjectedFault" in log
    assert "reply: 451 4.3.0 Temporary internal error, id=" in log


def test_missing_selector_macro_warns_once(milter, tmp_path):
    run(milter, tmp_path, connect={"{daemon_name}": "X"})
    run(milter, tmp_path, connect={"{daemon_name}": "X"})
    log = milter.log_text()
    assert log.count("macro {daemon_port} never arrived") == 1
    assert "milter_connect_macros" in log
