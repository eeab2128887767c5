"""Run a throwaway PostgreSQL cluster for tests: initdb, pg_ctl start, databases, pg_ctl stop.

    with PostgresCluster() as pg:
        url = pg.create_database("t1")      # postgresql+psycopg://postgres@/t1?host=DIR

The binaries are the newest /usr/lib/postgresql/*/bin (Debian's layout; the `postgresql`
package). The cluster lives in its own directory under /tmp and listens only on a unix
socket there (listen_addresses=''): no TCP port, so runs never collide. Authentication is
`trust` for the `postgres` role, fsync is off (a test database need not survive a crash);
it starts in about a second. initdb refuses to run as root, so as root every server command
runs as the `postgres` OS user (runuser) and the directory is chowned to it; pytest's own
temp dirs are mode 0700 under root and unreachable for that user, hence /tmp.

Readiness: `pg_ctl start -w` returns once the server accepts connections; failure raises
RuntimeError with the server log. stop() is `pg_ctl stop -m fast` and removes the directory.
XXX: pg_ctl detaches the server, so a killed test run leaves it running (nothing else uses
its socket directory; CI ends every process when the session stops).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile

SUPERUSER = "postgres"


def bindir() -> str:
    """The newest installed PostgreSQL's bin directory."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb: install the Debian package postgresql")
    version = lambda path: [int(n) for n in re.findall(r"\d+", path.split("/")[3])]   # noqa: E731
    return os.path.dirname(max(found, key=version))


class PostgresCluster:
    def __init__(self) -> None:
        self.bin = bindir()
        self.dir = ""
        self.data = self.log = ""

    def _run(self, *argv: str, timeout: float = 60) -> str:
        cmd = [os.path.join(self.bin, argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                               f"{self.log_text()}")
        return proc.stdout

    def start(self) -> "PostgresCluster":
        self.dir = tempfile.mkdtemp(prefix="pymavis-pg-", dir="/tmp")
        self.data, self.log = os.path.join(self.dir, "data"), os.path.join(self.dir, "server.log")
        if os.geteuid() == 0:
            user = pwd.getpwnam(SUPERUSER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        try:
            self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
            self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log, "-o",
                      f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' -c fsync=off "
                      "-c synchronous_commit=off -c full_page_writes=off")
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        self._run("createdb", "-h", self.dir, "-U", SUPERUSER, name)
        return self.url(name)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{name}?host={self.dir}"

    def stop(self) -> None:
        if not self.dir:
            return
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""


# Example queries from amavis's README.sql-pg ("Some examples of a query"), verbatim.
AMAVIS_QUERIES = {
    "mail from last two minutes": """
SELECT
  now()-time_iso AS age, SUBSTRING(policy,1,2) as pb,
  msgrcpt.content AS c, dsn_sent as dsn, ds, bspam_level AS level, size,
  SUBSTRING(convert_from(sender.email,'UTF8'),1,18) AS s,
  SUBSTRING(recip.email,1,18)  AS r,
  SUBSTRING(msgs.subject,1,10) AS subj
  FROM msgs LEFT JOIN msgrcpt         ON msgs.mail_id=msgrcpt.mail_id
            LEFT JOIN maddr AS sender ON msgs.sid=sender.id
            LEFT JOIN maddr AS recip  ON msgrcpt.rid=recip.id
  WHERE msgrcpt.content IS NOT NULL AND now() - time_iso < INTERVAL '2 minutes'
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
