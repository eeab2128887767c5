"""Run a real `pymavis milter` process for tests: its own config dir, port and state dir.

The process is started with `python -m pymavis milter --foreground --stderr`, its log goes
to a file the test can read, readiness is a successful connect to its port, and stop()
sends SIGTERM and waits for the process to exit (it must exit by itself).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from .net import LOOPBACK, free_port, port_is_open, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PymavisProcess:
    def __init__(self, workdir: str, main_yaml: str, banks: dict[str, str] | None = None, *,
                 env: dict | None = None, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = os.path.join(workdir, "pymavis.yaml")
        self.log_path = os.path.join(workdir, "pymavis.log")
        os.makedirs(os.path.join(workdir, "banks"), exist_ok=True)
        os.makedirs(os.path.join(workdir, "state"), exist_ok=True)
        self.write_config(main_yaml, banks or {})
        self.env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"), **(env or {}))
        self.proc: subprocess.Popen | None = None

    @property
    def socket_spec(self) -> str:
        """As Postfix writes it (smtpd_milters)."""
        return f"inet:{LOOPBACK}:{self.port}"

    @property
    def libmilter_spec(self) -> str:
        """As miltertest writes it."""
        return f"inet:{self.port}@{LOOPBACK}"

    def write_config(self, main_yaml: str, banks: dict[str, str]):
        text = (f"state_dir: {os.path.join(self.workdir, 'state')}\npolicy_banks_dir: banks\n"
                + textwrap.dedent(main_yaml))
        with open(self.conf, "w") as fh:
            fh.write(text)
        for name, body in banks.items():
            with open(os.path.join(self.workdir, "banks", name), "w") as fh:
                fh.write(textwrap.dedent(body))

    def start(self, timeout: float = 30):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pymavis", "milter", "-c", self.conf, "--foreground", "--stderr",
             "--socket", self.socket_spec],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"pymavis exited with {self.proc.returncode}:\n{self.log_text()}")
            return "pymavis starting on" in self.log_text() and port_is_open(LOOPBACK, self.port)

        wait_until(ready, timeout, what=f"pymavis listening on port {self.port}")
        return self

    def reload(self):
        mark = self.log_text().count("configuration reloaded") + self.log_text().count("reload of")
        self.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: self.log_text().count("configuration reloaded") + self.log_text().count("reload of") > mark,
                   15, what="pymavis to finish reloading")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"pymavis did not exit {timeout}s after SIGTERM:\n{self.log_text()}")
        finally:
            self._log.close()

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 15) -> str:
        wait_until(lambda: needle in self.log_text(), timeout, what=f"{needle!r} in the pymavis log")
        return self.log_text()

