"""A null milter: takes part in every protocol step and changes nothing but (optionally) headers.

Run it as a program:

    python tests/harness/nullmilter.py inet:PORT@127.0.0.1 [--no-headers]

(libmilter's socket syntax, `inet:PORT@HOST`; Postfix writes the same socket as
`inet:127.0.0.1:PORT`). Tests start it with `NullMilter(port).start()`; benchmarks use it as
the baseline a real filter is compared with.

What it does: answers CONTINUE at every step (CONTINUE at end-of-message means accept), reads
the whole body like a content filter would, and at end-of-message adds

    X-Null-Milter: yes
    X-Null-Macros-Connect: j=...; {daemon_name}=...; {daemon_port}=...; {client_addr}=...
    X-Null-Macros-Helo / -Mail / -Rcpt / -Eom: the same for the later stages

listing every macro Postfix sent at that stage (see MACROS). `parse_macro_header()` turns such
a value back into a dict. With `--no-headers` it adds nothing (the pure pass-through baseline).

It deliberately never calls setsymlist: the macros it reports are exactly those the MTA's own
configuration (`milter_*_macros` in contrib/postfix/main.cf) makes it send, which is what the
end-to-end tests check. (pymilter's `@Milter.symlist` is broken on Python 3 anyway; see
shared/DEPENDENCIES.md.) Actions are restricted to ADDHDRS (or none) in negotiate.

Stopping: libmilter's signal thread owns SIGTERM/SIGINT/SIGHUP and `runmilter()` returns about
5 s after SIGTERM. The null milter holds no state, so `NullMilter.stop()` sends SIGKILL.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path

import Milter

# The macros reported per stage: the union of what contrib/postfix/main.cf and
# contrib/sendmail/sendmail.mc ask the MTA to send.
MACROS: dict[str, tuple[str, ...]] = {
    "connect": (
        "j", "_", "v", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{if_addr}",
        "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}",
    ),
    "helo": ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    "mail": (
        "i", "{auth_type}", "{auth_authen}", "{auth_author}", "{auth_ssf}", "{mail_addr}",
        "{mail_host}", "{mail_mailer}",
    ),
    "rcpt": ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    "eom": ("i", "{msg_id}"),
}
HEADER_PREFIX = "X-Null-Macros-"
# A connection backlog large enough for a benchmark's concurrent smtpd processes.
BACKLOG = 128


def format_macros(values: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in values.items())


def parse_macro_header(value: str) -> dict[str, str]:
    """Inverse of format_macros (header folding whitespace is tolerated)."""
    result: dict[str, str] = {}
    for item in " ".join(value.split()).split("; "):
        name, sep, val = item.partition("=")
        if sep:
            result[name.strip()] = val
    return result


class NullMilter(Milter.Base):
    """One instance per SMTP connection (libmilter may call it from different threads)."""

    add_headers = True

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, str]] = {}
        self.body_bytes = 0

    def negotiate(self, opts: list[int]) -> int:
        rc = super().negotiate(opts)
        # Ask only for the actions we use: Postfix then knows we never change the body.
        opts[0] = Milter.ADDHDRS if self.add_headers else 0
        self._actions = opts[0]
        return rc

    def _collect(self, stage: str) -> None:
        values = {}
        for name in MACROS[stage]:
            value = self.getsymval(name)
            if value is not None:
                values[name] = value
        # RCPT happens once per recipient: keep the first, like the header shows.
        self.seen.setdefault(stage, values)

    def connect(self, hostname, family, hostaddr):
        self._collect("connect")
        return Milter.CONTINUE

    def hello(self, hostname):
        self._collect("helo")
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        # A new transaction on the same connection starts afresh.
        self.seen = {k: v for k, v in self.seen.items() if k in ("connect", "helo")}
        self.body_bytes = 0
        self._collect("mail")
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        self._collect("rcpt")
        return Milter.CONTINUE

    def data(self):
        # Take the DATA step, as pymavis does: when a milter skips it, Postfix's DATA-stage
        # macro packet gets no answer and the next write waits for a 40 ms delayed ACK,
        # which would make this baseline look slower than it need be.
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        self.body_bytes += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        self._collect("eom")
        if self.add_headers:
            self.addheader("X-Null-Milter", "yes")
            for stage, values in self.seen.items():
                self.addheader(HEADER_PREFIX + stage.capitalize(), format_macros(values))
        return Milter.CONTINUE

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="libmilter socket, e.g. inet:8899@127.0.0.1")
    parser.add_argument("--no-headers", action="store_true", help="add no headers")
    parser.add_argument("--timeout", type=int, default=600, help="libmilter I/O timeout (s)")
    args = parser.parse_args(argv)

    NullMilter.add_headers = not args.no_headers
    Milter.factory = NullMilter
    import milter  # pymilter's C module

    milter.setbacklog(BACKLOG)
    print(f"nullmilter: listening on {args.socket}", flush=True)
    Milter.runmilter("nullmilter", args.socket, timeout=args.timeout)
    return 0


class NullMilterProcess:
    """The null milter as a subprocess on 127.0.0.1:`port`, for fixtures."""

    def __init__(self, port: int, *, add_headers: bool = True, log_path: Path | None = None):
        self.port = port
        self.add_headers = add_headers
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def postfix_spec(self) -> str:
        """The socket as Postfix's smtpd_milters writes it."""
        return f"inet:127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "NullMilterProcess":
        from .net import wait_for_port  # package-relative: only for importers, not the script

        cmd = [sys.executable, str(Path(__file__).resolve()), f"inet:{self.port}@127.0.0.1"]
        if not self.add_headers:
            cmd.append("--no-headers")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if self.log_path:
                out.close()
        atexit.register(self.stop)  # an aborted test run leaves no milter behind
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "NullMilterProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
