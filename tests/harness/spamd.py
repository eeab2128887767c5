"""Run a real spamd for tests: SpamAssassin's shipped rules, no network, sockets and log in DIR.

    with SpamdProcess(tmp_dir) as spamd:
        SpamdClient(spamd.socket_spec("unix")).symbols(GTUBE_MESSAGE)

One spamd listens on a free loopback TCP port and on a unix socket in DIR (spamd 4 takes
--listen several times, a path for a unix socket); the command line is `command()`:
- `--local` (no DNS or network tests: results do not depend on the network, and there is
  none here), `--nouser-config` (no ~/.spamassassin/user_prefs), `--helper-home-dir=DIR/home`;
- `--max-children=2 --min-children=1`: spamd preforks; more connections than children wait
  in the listen backlog, which is what the concurrency test exercises;
- `--allow-tell`, with `bayes_path` in the shared directory (below), so TELL can be tested,
  and `bayes_auto_learn 0`: else a check of a clear ham autolearns it, and a later TELL of
  the same message changes nothing, depending on the order of the tests;
- `--syslog=stderr` into DIR/spamd.log, `--pidfile=DIR/spamd.pid`;
- `--timeout-tcp=10 --timeout-child=60`: a stalled test client does not hold a child for
  spamd's default 30 s / 300 s.
No `--username`: we run as root, and spamd then keeps root for the master and does each
check as `nobody` ("still running as root ... falling back to nobody" in the log). nobody
must write the Bayes files, and cannot reach into pytest's tmp dirs (mode 0700), so the
unix socket and the Bayes files live in a short directory of our own under /tmp
(`shared_dir`, Bayes in a sticky world-writable `bayes/`), removed by stop(); that also
keeps the socket path within the 108 bytes a unix socket path may have. Without it, TELL
answers EX_OK but without "DidSet: local".

Rules come from /usr/share/spamassassin (Debian's package; sa-update is never run).
Start-up is dominated by compiling the rules: several seconds (`startup_s` has the figure),
so start one spamd per test session or module, not per test. Readiness is "PING" answered
"PONG" on both sockets, polled, never a sleep. stop() sends SIGTERM to our spamd's PID
(spamd then stops its children) and waits for it.

Dying with the parent: PR_SET_PDEATHSIG (die_with_parent) alone does not work for spamd. It
sets its effective gid at start-up (`$) = "$( $("`), even to the same value, and the kernel
clears the parent-death signal on any such change: measured, a SIGKILLed test process left
spamd running under init. So a watchdog (WATCHDOG, a few lines of Python, no credential
changes) holds a pipe from us: when we die, however we die, it reads EOF and sends SIGTERM
to spamd's PID. stop() kills the watchdog first, so it never signals a PID reused later.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from .net import LOOPBACK, die_with_parent, free_port, terminate, wait_until

SPAMD = shutil.which("spamd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "spamd"
SAMPLES = "/usr/share/doc/spamassassin/examples"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# Start-up takes about 1 s here (rules already compiled by the package); far longer on a
# loaded 2-core CI machine or when spamd has to compile the rules itself.
STARTUP_TIMEOUT_S = 120.0

# argv[1]: spamd's PID. stdin: a pipe whose other end only the test process holds.
WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
try:
    os.kill(int(sys.argv[1]), signal.SIGTERM)
except ProcessLookupError:
    pass
"""


def ping(address, timeout: float = 1.0) -> bool:
    """True if spamd at `address` (a unix path or a (host, port) pair) answers PONG."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            reply = b""
            while data := sock.recv(256):
                reply += data
            return reply.startswith(b"SPAMD/") and reply.rstrip().endswith(b" 0 PONG")
    except OSError:
        return False


class SpamdProcess:
    """One spamd in `workdir`; `extra_args` are appended to its command line."""

    def __init__(self, workdir: str, *extra_args: str):
        self.workdir = os.path.abspath(workdir)
        self.home = os.path.join(self.workdir, "home")
        self.log_path = os.path.join(self.workdir, "spamd.log")
        self.pid_path = os.path.join(self.workdir, "spamd.pid")
        self.shared_dir = ""      # made by start(): socket and Bayes files, see above
        self.unix_path = ""
        self.extra_args = extra_args
        self.tcp_port = 0
        self.proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self.startup_s = 0.0

    def socket_spec(self, kind: str = "unix") -> str:
        """As pymavis writes it: "unix" -> unix:/path, "inet" -> inet:127.0.0.1:PORT."""
        if kind == "unix":
            return f"unix:{self.unix_path}"
        if kind == "inet":
            return f"inet:{LOOPBACK}:{self.tcp_port}"
        raise ValueError(f"socket kind {kind!r}: expected 'unix' or 'inet'")

    def command(self) -> list[str]:
        return [SPAMD, "--local", "--nouser-config", f"--helper-home-dir={self.home}",
                f"--listen={LOOPBACK}:{self.tcp_port}", f"--listen={self.unix_path}",
                "--max-children=2", "--min-children=1", "--allow-tell",
                f"--cf=bayes_path {self.shared_dir}/bayes/bayes", "--cf=bayes_auto_learn 0",
                "--syslog=stderr",
                f"--pidfile={self.pid_path}", "--timeout-tcp=10", "--timeout-child=60",
                *self.extra_args]

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> "SpamdProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"spamd in {self.workdir} is already running")
        os.makedirs(self.home, exist_ok=True)
        self.shared_dir = tempfile.mkdtemp(prefix="spamd-", dir="/tmp")
        os.chmod(self.shared_dir, 0o755)
        os.mkdir(os.path.join(self.shared_dir, "bayes"))
        os.chmod(os.path.join(self.shared_dir, "bayes"), 0o1777)   # checks run as nobody
        self.unix_path = os.path.join(self.shared_dir, "spamd.sock")
        self.tcp_port = free_port()
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         preexec_fn=die_with_parent)
        self._watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(self.proc.pid)],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spamd exited with {self.proc.returncode} while starting:"
                                   f"\n{self.log_text()}")
            return ping(self.unix_path) and ping((LOOPBACK, self.tcp_port))

        try:
            wait_until(ready, timeout, interval=0.1,
                       what=f"spamd answering PONG in {self.workdir}")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM our spamd and wait for it; its exit status (None if never started)."""
        proc, self.proc = self.proc, None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait(10)
            watchdog.stdin.close()
        try:
            if proc is None:
                return None
            return terminate(proc, timeout, "spamd", self.log_text)
        finally:
            if self.shared_dir:
                shutil.rmtree(self.shared_dir, ignore_errors=True)
                self.shared_dir = self.unix_path = ""

    def __enter__(self) -> "SpamdProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""
