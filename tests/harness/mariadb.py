"""Run a throwaway MariaDB server for tests: mariadb-install-db, mariadbd, databases, stop.

    with MariaDBServer() as server:
        url = server.create_database("t1")  # mysql+pymysql://root@localhost/t1?unix_socket=DIR/mysqld.sock

The binaries are Debian's (the `mariadb-server` package): mariadb-install-db and
/usr/sbin/mariadbd, or the older names mysql_install_db and mysqld. The server lives in its
own directory under /tmp and listens only on a unix socket there (skip-networking): no TCP
port, so runs never collide, and the system's MariaDB service, if any, is not touched. It
reads no option files (--no-defaults), so the server's own defaults apply (latin1 as the
server character set: the tables must ask for utf8mb4 themselves, as sqlstore's do). root
logs in without a password (--auth-root-authentication-method=normal); durability is off
(innodb_flush_log_at_trx_commit=0, no doublewrite: a test database need not survive a
crash); install and start take about two seconds. As root the server runs as the `mysql` OS
user (mariadbd --user) and the directory is chowned to it; pytest's own temp dirs are mode
0700 under root and unreachable for that user, hence /tmp.

Readiness: start() polls the socket with a real login until the server answers, up to
START_TIMEOUT_S; a server that exits or does not answer in time raises RuntimeError with the
server log. stop() sends SIGTERM to the server it started (by its PID; mariadbd shuts down
cleanly on it), waits, and removes the directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pymysql

OS_USER = "mysql"
START_TIMEOUT_S = 60     # a cold start on a loaded 2-core machine; usually well under a second
STOP_TIMEOUT_S = 30      # clean InnoDB shutdown; SIGKILL after that

# Small and fast: a test database holds a few hundred rows.
SERVER_OPTIONS = ("--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M",
                  "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                  "--skip-log-bin",
                  "--performance-schema=OFF", "--skip-name-resolve", "--max-connections=50")


def _binary(*names: str) -> str:
    for name in names:
        for directory in ("/usr/sbin", "/usr/bin"):
            if os.access(os.path.join(directory, name), os.X_OK):
                return os.path.join(directory, name)
    raise RuntimeError(f"none of {', '.join(names)} in /usr/sbin or /usr/bin: install the Debian package "
                       "mariadb-server")


def version() -> str:
    """The server's version line, e.g. 'mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu ...'."""
    out = subprocess.run([_binary("mariadbd", "mysqld"), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


class MariaDBServer:
    def __init__(self) -> None:
        self.install_db = _binary("mariadb-install-db", "mysql_install_db")
        self.server = _binary("mariadbd", "mysqld")
        self.dir = ""
        self.data = self.log = self.socket = ""
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MariaDBServer":
        self.dir = tempfile.mkdtemp(prefix="pymavis-mariadb-", dir="/tmp")
        self.data = os.path.join(self.dir, "data")
        self.log, self.socket = os.path.join(self.dir, "server.log"), os.path.join(self.dir, "mysqld.sock")
        as_user: tuple[str, ...] = ()
        if os.geteuid() == 0:           # mariadbd refuses to run as root without --user
            user = pwd.getpwnam(OS_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            as_user = (f"--user={OS_USER}",)
        try:
            self._install(as_user)
            self.proc = subprocess.Popen(
                [self.server, "--no-defaults", f"--datadir={self.data}", *as_user, f"--socket={self.socket}",
                 f"--pid-file={os.path.join(self.dir, 'mysqld.pid')}", "--skip-networking",
                 f"--log-error={self.log}", *SERVER_OPTIONS],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.dir)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _install(self, as_user: tuple[str, ...]) -> None:
        cmd = [self.install_db, "--no-defaults", f"--datadir={self.data}", *as_user,
               "--auth-root-authentication-method=normal", "--skip-test-db", *SERVER_OPTIONS]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited with {self.proc.returncode} before it accepted "
                                   f"connections:\n{self.log_text()}")
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.server} did not accept connections on {self.socket} within "
                                       f"{START_TIMEOUT_S} s ({exc}):\n{self.log_text()}") from None
            time.sleep(0.05)

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        """A root connection over the socket (autocommit), for setup and inspection."""
        return pymysql.connect(unix_socket=self.socket, user="root", database=database, autocommit=True,
                               connect_timeout=5)

    def create_database(self, name: str) -> str:
        """A new empty database (the server's default character set); its SQLAlchemy URL."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        return self.url(name)

    def url(self, name: str) -> str:
        return f"mysql+pymysql://root@localhost/{name}?unix_socket={self.socket}"

    def stop(self) -> None:
        if not self.dir:
            return
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT_S)
        finally:
            self.proc = None
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> "MariaDBServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""


# Example queries from amavis's README.sql-mysql ("Some examples of a query"), verbatim.
AMAVIS_QUERIES = {
    "mail from last two minutes": """
SELECT
  UNIX_TIMESTAMP()-msgs.time_num AS age, SUBSTRING(policy,1,2) as pb,
  msgrcpt.content AS c, dsn_sent as dsn, ds, bspam_level AS level, size,
  SUBSTRING(sender.email,1,18) AS s,
  SUBSTRING(recip.email,1,18)  AS r,
  SUBSTRING(msgs.subject,1,10) AS subj
  FROM msgs LEFT JOIN msgrcpt         ON msgs.mail_id=msgrcpt.mail_id
            LEFT JOIN maddr AS sender ON msgs.sid=sender.id
            LEFT JOIN maddr AS recip  ON msgrcpt.rid=recip.id
  WHERE msgrcpt.content IS NOT NULL AND UNIX_TIMESTAMP()-msgs.time_num < 120
  ORDER BY msgs.time_num DESC""",
    "clean messages ordered by count, grouped by domain": """
SELECT count(*) as cnt, avg(bspam_level), sender.domain
  FROM msgs
  LEFT JOIN msgrcpt ON msgs.mail_id=msgrcpt.mail_id
  LEFT JOIN maddr AS sender ON msgs.sid=sender.id
  LEFT JOIN maddr AS recip ON msgrcpt.rid=recip.id
  WHERE msgrcpt.content='C'
  GROUP BY sender.domain ORDER BY cnt DESC LIMIT 50""",
    "top spamy domains with >10 messages": """
SELECT count(*) as cnt, avg(bspam_level) as spam_avg, sender.domain
  FROM msgs
  LEFT JOIN msgrcpt ON msgs.mail_id=msgrcpt.mail_id
  LEFT JOIN maddr AS sender ON msgs.sid=sender.id
  LEFT JOIN maddr AS recip ON msgrcpt.rid=recip.id
  WHERE bspam_level IS NOT NULL
  GROUP BY sender.domain HAVING count(*) > 10
  ORDER BY spam_avg DESC LIMIT 50""",
    "sender domains with >100 messages": """
SELECT count(*) as cnt, avg(bspam_level) as spam_avg, sender.domain
  FROM msgs
  LEFT JOIN msgrcpt ON msgs.mail_id=msgrcpt.mail_id
  LEFT JOIN maddr AS sender ON msgs.sid=sender.id
  LEFT JOIN maddr AS recip ON msgrcpt.rid=recip.id
  GROUP BY sender.domain HAVING count(*) > 100
  ORDER BY sender.domain DESC LIMIT 100""",
}

# Housekeeping from README.sql-mysql, verbatim: purge by time, then what nothing refers to.
AMAVIS_HOUSEKEEPING = (
    "DELETE FROM msgs WHERE time_num < UNIX_TIMESTAMP() - 21*24*3600",
    "DELETE FROM msgrcpt\n  WHERE NOT EXISTS (SELECT 1 FROM msgs WHERE mail_id=msgrcpt.mail_id)",
    "DELETE FROM quarantine\n  WHERE NOT EXISTS (SELECT 1 FROM msgs WHERE mail_id=quarantine.mail_id)",
    "DELETE FROM maddr\n  WHERE NOT EXISTS (SELECT 1 FROM msgs    WHERE sid=id)\n"
    "    AND NOT EXISTS (SELECT 1 FROM msgrcpt WHERE rid=id)",
)
