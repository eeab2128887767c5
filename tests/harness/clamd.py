"""Run a real clamd for tests: its own signature database, config, sockets and log.

    with ClamdProcess(tmp_dir, StreamMaxLength="1M") as clamd:
        ClamdClient(clamd.socket_spec("unix")).scan(EICAR)

The signature database is built at start-up in `DIR/db` (clamd has none here and cannot
download one): `sigtool --md5` of clamav-testfiles' `clam.exe` as `test.hdb`, renamed
CLAM_EXE_SIGNATURE, and an `.ndb` body signature for the EICAR string (EICAR_SIGNATURE; it
matches the string anywhere in a file, as in a mail part with a trailing newline). That is
enough for clamd to find clam.exe inside every container and packer in clamav-testfiles.
Signatures from an unsigned database are reported with ".UNOFFICIAL" appended: reported().

The config (`DIR/clamd.conf`) is DEFAULT_SETTINGS with the keyword arguments (clamd.conf
option names) over them: a unix socket and a TCP socket on a free loopback port, the log,
pid file and clamd's temp files (INSTREAM spools the stream there) all in DIR. No `User`:
we run as root and clamd keeps its user when `User` is unset. clamd starts in about 0.1 s
with this tiny database (it loads it before listening); readiness is a zPING answered
PONG on both sockets, polled, never a sleep. clamd dies with the process that started
it (PR_SET_PDEATHSIG), so a killed run leaves none behind. stop() sends SIGTERM to our own clamd's PID
and waits for it to exit. Each instance is independent: several may run at once in one
test session, each in its own directory.

A unix socket path must fit in 108 bytes; when DIR is deeper than that allows, the socket
goes to a short temporary directory under /tmp, removed by stop().
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from .net import DEFAULT_TIMEOUT_S, LOOPBACK, die_with_parent, free_port, terminate, wait_until

CLAMD = shutil.which("clamd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "clamd"
SIGTOOL = shutil.which("sigtool", path="/usr/bin:/usr/sbin:/bin") or "sigtool"
TESTFILES = "/usr/share/clamav-testfiles"

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Eicar-Test-Signature"
CLAM_EXE_SIGNATURE = "ClamAV-Test-File"

# What every test clamd has unless a test says otherwise (clamd.conf names and values).
DEFAULT_SETTINGS = {
    "StreamMaxLength": "25M",
    "MaxThreads": "4",
    "AlertEncrypted": "yes",      # else an encrypted archive is "OK": unscanned read as clean
    "AlertExceedsMax": "yes",     # else content skipped by MaxFileSize etc. is "OK" as well
    "LogTime": "yes",
    "LogVerbose": "no",
    "SelfCheck": "3600",          # no database reload checks during a test run
}

_MAX_UNIX_PATH = 107


def reported(signature: str) -> str:
    """The name clamd reports for one of our (unsigned) signatures."""
    return f"{signature}.UNOFFICIAL"


def build_database(db_dir: str) -> None:
    """test.hdb (md5 of clam.exe) and eicar.ndb (the EICAR string anywhere in a file)."""
    os.makedirs(db_dir, exist_ok=True)
    md5_line = subprocess.run([SIGTOOL, "--md5", os.path.join(TESTFILES, "clam.exe")],
                              check=True, capture_output=True, text=True).stdout.strip()
    md5, size, _name = md5_line.split(":")
    with open(os.path.join(db_dir, "test.hdb"), "w") as fh:
        fh.write(f"{md5}:{size}:{CLAM_EXE_SIGNATURE}\n")
    with open(os.path.join(db_dir, "eicar.ndb"), "w") as fh:
        fh.write(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")


def ping(address, timeout: float = 1.0) -> bool:
    """True if clamd at `address` (a unix path or a (host, port) pair) answers zPING."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"zPING\0")
            reply = b""
            while not reply.endswith(b"\0"):
                data = sock.recv(64)
                if not data:
                    break
                reply += data
            return reply == b"PONG\0"
    except OSError:
        return False


class ClamdProcess:
    """One clamd in `workdir`, configured with DEFAULT_SETTINGS updated by `settings`."""

    def __init__(self, workdir: str, **settings: str):
        self.workdir = os.path.abspath(workdir)
        self.db_dir = os.path.join(self.workdir, "db")
        self.tmp_dir = os.path.join(self.workdir, "tmp")
        self.conf = os.path.join(self.workdir, "clamd.conf")
        self.log_path = os.path.join(self.workdir, "clamd.log")
        self.out_path = os.path.join(self.workdir, "clamd.out")
        self.pid_path = os.path.join(self.workdir, "clamd.pid")
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self.unix_path = os.path.join(self.workdir, "clamd.sock")
        self._socket_dir: str | None = None
        self.tcp_port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0

    def socket_spec(self, kind: str = "unix") -> str:
        """As pymavis writes it: "unix" -> unix:/path, "inet" -> inet:127.0.0.1:PORT."""
        if kind == "unix":
            return f"unix:{self.unix_path}"
        if kind == "inet":
            return f"inet:{LOOPBACK}:{self.tcp_port}"
        raise ValueError(f"socket kind {kind!r}: expected 'unix' or 'inet'")

    def write_config(self) -> None:
        lines = {
            "Foreground": "yes",
            "LocalSocket": self.unix_path,
            "TCPSocket": str(self.tcp_port),
            "TCPAddr": LOOPBACK,
            "DatabaseDirectory": self.db_dir,
            "TemporaryDirectory": self.tmp_dir,
            "LogFile": self.log_path,
            "PidFile": self.pid_path,
            **self.settings,
        }
        with open(self.conf, "w") as fh:
            fh.writelines(f"{key} {value}\n" for key, value in lines.items())

    def start(self, timeout: float = DEFAULT_TIMEOUT_S) -> "ClamdProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"clamd in {self.workdir} is already running")
        os.makedirs(self.tmp_dir, exist_ok=True)
        build_database(self.db_dir)
        self.tcp_port = free_port()
        if len(self.unix_path) > _MAX_UNIX_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="clamd-", dir="/tmp")
            self.unix_path = os.path.join(self._socket_dir, "clamd.sock")
        if os.path.exists(self.unix_path):
            os.unlink(self.unix_path)     # left by an earlier start; clamd refuses to reuse it
        self.write_config()
        began = time.monotonic()
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen([CLAMD, "-c", self.conf, "--foreground"],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         preexec_fn=die_with_parent)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.proc.returncode} while starting:\n"
                                   f"{self.log_text()}")
            return ping(self.unix_path) and ping((LOOPBACK, self.tcp_port))

        try:
            wait_until(ready, timeout, what=f"clamd answering PONG in {self.workdir}")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM our clamd and wait for it; its exit status (None if never started)."""
        proc, self.proc = self.proc, None
        try:
            if proc is None:
                return None
            return terminate(proc, timeout, "clamd", self.log_text)
        finally:
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
                self.unix_path = os.path.join(self.workdir, "clamd.sock")

    def __enter__(self) -> "ClamdProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """clamd's log file, then what it wrote to stdout/stderr."""
        text = ""
        for path in (self.log_path, self.out_path):
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text += fh.read()
            except FileNotFoundError:
                pass
        return text
