"""SIGTERM: libmilter stops accepting connections and lets running callbacks finish; a
message whose end-of-message work is running is still answered before the process exits."""

import signal
import threading

from conftest import scanners_yaml
from harness.milterclient import MilterClient
from harness.net import LOOPBACK
from harness.pymavisd import PymavisProcess

MESSAGE = b"From: a@example.org\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\nSubject: slow one\r\n\r\nhello\r\n"


def test_sigterm_finishes_the_message_in_flight(tmp_path, clamd):
    milter = PymavisProcess(str(tmp_path), "log: {level: info}\n" + scanners_yaml(clamd),
                            env={"PYMAVIS_SLOW_INJECT": "slow one:3"}).start()
    try:
        # SIGTERM once the slow message's end-of-message work has started.
        def term_when_busy():
            milter.wait_log("PYMAVIS_SLOW_INJECT", timeout=60)
            milter.proc.send_signal(signal.SIGTERM)

        killer = threading.Thread(target=term_when_busy)
        killer.start()

        with MilterClient(LOOPBACK, milter.port) as client:
            result = client.send_message(MESSAGE, mail_from="a@example.org", rcpts=["b@example.net"])
        killer.join()
        assert result.action == "continue"
        assert any(m[0] == "insheader" and m[2] == "X-Virus-Scanned" for m in result.modifications), result
        assert milter.proc.wait(30) == 0
        log = milter.log_text()
        assert "Passed CLEAN" in log and log.rstrip().endswith("pymavis stopped")
        assert "shutdown grace period over" not in log
    finally:
        milter.stop()
