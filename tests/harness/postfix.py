"""A private Postfix instance for end-to-end tests, built from contrib/postfix/*.cf.

`PostfixInstance` writes a main.cf and a master.cf into a directory of its own and runs
`postfix -c DIR ...` against them; the system Postfix (/etc/postfix, /var/spool/postfix) is
neither read for configuration nor touched. Its main.cf is: the harness's base settings
(paths, loopback only, relay everything to the test sink, fast retries), then every parameter
of contrib/postfix/main.cf, then the test's `extra_main`. Its master.cf is Postfix's stock
master.cf without its listeners, then every entry of contrib/postfix/master.cf. From the
fragments only what a `# @harness:` line marks is changed (the milter address, the listener
addresses, TLS/SASL options), so a test exercises the configuration an admin installs.

Limits: every wait (start, stop, a delivery, a log line) has a deadline (`DEFAULT_TIMEOUT_S`,
generous for a loaded 2-core CI machine) and polls; nothing sleeps for readiness.

Failures show as `PostfixError` carrying the command's output and the tail of the maillog.

Findings from running private instances here (Postfix 3.7.11, Debian 12, root, no systemd,
no /dev/log):

- `postfix -c DIR` with root privileges needs no `alternate_config_directories` or
  `multi_instance_*` setting. master.pid lives in `$queue_directory/pid` and master.lock in
  `$data_directory`, so a queue and data directory per instance keep instances (and the
  system Postfix) apart.
- Do NOT run `postfix -c DIR set-permissions`: besides the instance's own directories it
  chowns/chmods the shared files listed in /etc/postfix/postfix-files (it turned
  /usr/sbin/postdrop and postqueue from 2555 into 2755 and made /usr/sbin/postlog setgid
  postdrop, against Debian's dpkg-statoverride settings). It is not needed either:
  `postfix check` and `postfix start` run `post-install create-missing`, which creates the
  queue subdirectories with the right owners.
- Every Postfix program that reads main.cf or master.cf within a second of its last change
  waits for it to settle (it may be mid-edit), re-reading it every 300 ms: a freshly written
  configuration made each of check, start and reload take ~2 s. The harness dates the files
  it writes 10 s back; an instance now starts in ~0.4 s.
- Postfix needs its data directory's parents searchable by the `postfix` user (the master
  opens `$data_directory/master.lock` after dropping privileges): pytest's tmp_path lives
  under /tmp/pytest-of-root (mode 0700), and `tempfile.mkdtemp` makes 0700 directories.
- A failed `postfix start` can exit 1 with no message anywhere (seen for a listener port in
  use): the master logs through the postlog socket, which nobody reads yet when it dies.
  `start-fg`, `master -d` and `maillog_file = /dev/stdout` did not show it either. Other
  start-up errors do reach the maillog (e.g. "open lock file ... Permission denied"). Hence
  `postconf` lint and `check` first, a port check before start, and a failure report with
  the busy ports and the maillog tail.
- `postfix start-fg` (when not PID 1) runs `master -s` as a child of postfix-script, and that
  postfix-script got SIGTERM (exit 143) within 30 ms of `postfix stop`, before the master had
  finished: waiting for it proves nothing. So the harness uses `postfix start` (master -w:
  exit 0 only after the master initialised and bound its listeners), reads
  `pid/master.pid`, and on stop waits until the master and every process of its session
  (the master calls setsid) have exited.
- Processes orphaned by the master become zombies of PID 1 for a few seconds on this
  machine; a zombie counts as exited.
- Postfix commands run in a session of their own (`start_new_session=True`), so no signal
  Postfix sends to a process group can reach the test runner.
- All services run without chroot here: a chrooted smtpd/smtp needs copies of /etc/hosts,
  /etc/services, /etc/resolv.conf, nsswitch libraries and zoneinfo under the queue
  directory (Debian's init script makes them for /var/spool/postfix only); without them
  client name lookups and log timestamps differ from a real installation.
- `maillog_file` needs `maillog_file_prefixes` naming its directory (the default allows only
  /var and /dev/stdout) and the `postlog unix-dgram` service (the stock master.cf has it).
  postlogd opens the file as root, so the log directory may be root-owned.
- `postqueue -c DIR -j` works as root without further setup.
- After `postfix reload` the master logs "reload -- version" at once, but an idle smtpd of
  the old configuration can still accept the next connection (seen about one run in three):
  `reload()` also waits until every process that predates the reload has exited.
- Fast retries need `minimal_backoff_time` > `queue_run_delay` (see base_main_cf): with
  both at 1s, qmgr sometimes logged "skipped, still being delivered" and parked the
  message in the incoming queue for 60 s.
- The readiness probes (a bare TCP connect) show in the maillog as "lost connection after
  CONNECT"; with a milter configured, each probe also makes smtpd contact the milter.
- Postfix 3.7 never sends `{if_addr}`, `{auth_ssf}` or `{msg_id}` (Sendmail macros; not
  among the macro names in its smtpd), and sends `i` neither at MAIL nor at the first RCPT.
  With the milter unreachable it answers 220 and EHLO 250, then
  "451 4.7.1 Service unavailable - try again later" to MAIL FROM.
- The stock master.cf is Debian's /usr/share/postfix/master.cf.dist (a copy is
  /etc/postfix/master.cf.proto); /etc/postfix/main.cf does not exist when the package was
  installed with debconf "No configuration", and nothing here needs it.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

from .net import DEFAULT_TIMEOUT_S, LOOPBACK, free_port, port_is_open, wait_for_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRIB_MAIN_CF = REPO_ROOT / "contrib" / "postfix" / "main.cf"
CONTRIB_MASTER_CF = REPO_ROOT / "contrib" / "postfix" / "master.cf"
STOCK_MASTER_CF_CANDIDATES = (
    Path("/usr/share/postfix/master.cf.dist"),
    Path("/etc/postfix/master.cf.proto"),
)
POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postqueue"
MAIL_OWNER = "postfix"
HOSTNAME = "pymavis-test.localdomain"
# A Postfix administrative command (check, start, stop, postqueue) that takes longer than
# this is hung, not slow.
COMMAND_TIMEOUT_S = 60.0
HARNESS_MARK = "@harness:"


# Instances started and not yet stopped: stopped at interpreter exit too, so an aborted test
# run leaves no master behind.
_RUNNING: set["PostfixInstance"] = set()


@atexit.register
def _stop_leftovers() -> None:
    for instance in list(_RUNNING):
        try:
            instance.stop(timeout=10)
        except (PostfixError, TimeoutError, OSError) as e:
            print(f"harness: could not stop Postfix in {instance.workdir}: {e}", file=sys.stderr)


class PostfixError(RuntimeError):
    """A Postfix command failed or the instance did not reach the expected state."""


# --- main.cf ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MainParam:
    """One `name = value` of a main.cf file, with the `# @harness:` mark above it, if any."""

    name: str
    value: str
    mark: str = ""
    lineno: int = 0


def parse_main_cf(text: str, source: str = "main.cf") -> list[MainParam]:
    """Parse main.cf syntax: `name = value`, continuation lines start with whitespace,
    comment lines start with '#' (a '#' elsewhere is part of the value)."""
    params: list[MainParam] = []
    mark = ""
    current: MainParam | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            current = None
            continue
        if stripped.startswith("#"):
            current = None
            if stripped[1:].strip().startswith(HARNESS_MARK):
                mark = stripped[1:].strip()[len(HARNESS_MARK):].strip()
            continue
        if line[0].isspace():
            if current is None:
                raise ValueError(f"{source}:{lineno}: continuation line without a parameter")
            current = replace(current, value=f"{current.value} {stripped}".strip())
            params[-1] = current
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", name.strip()):
            raise ValueError(f"{source}:{lineno}: expected 'name = value', got {line!r}")
        current = MainParam(name.strip(), value.strip(), mark, lineno)
        params.append(current)
        mark = ""
    return params


# --- master.cf --------------------------------------------------------------------------

MASTER_FIELDS = ("service", "type", "private", "unpriv", "chroot", "wakeup", "maxproc")


@dataclass(frozen=True)
class MasterEntry:
    """One master.cf service entry; `marks` come from a `# @harness: k=v k=v` line above it."""

    service: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    args: tuple[str, ...] = ()
    marks: dict[str, str] = field(default_factory=dict)
    lineno: int = 0

    @property
    def options(self) -> list[tuple[str, str]]:
        """The `-o name=value` overrides, in order."""
        result = []
        it = iter(self.args)
        for arg in it:
            if arg == "-o":
                name, _, value = next(it, "").partition("=")
                result.append((name, value))
        return result

    def without_options(self, drop: Callable[[str, str], bool]) -> "MasterEntry":
        """A copy without the `-o name=value` options for which drop(name, value) is true."""
        args: list[str] = []
        it = iter(self.args)
        for arg in it:
            if arg == "-o":
                opt = next(it, "")
                name, _, value = opt.partition("=")
                if not drop(name, value):
                    args += ["-o", opt]
            else:
                args.append(arg)
        return replace(self, args=tuple(args))

    def render(self) -> str:
        head = (
            f"{self.service:<10} {self.type:<5} {self.private:<7} {self.unpriv:<7} "
            f"{self.chroot:<7} {self.wakeup:<7} {self.maxproc:<7} {self.command}"
        )
        lines = [head.rstrip()]
        it = iter(self.args)
        for arg in it:
            if arg == "-o":
                lines.append(f"  -o {next(it, '')}")
            else:
                lines.append(f"  {arg}")
        return "\n".join(lines)


def parse_master_cf(text: str, source: str = "master.cf") -> list[MasterEntry]:
    """Parse master.cf syntax: an entry starts in column 1, lines starting with whitespace
    continue it, comment lines (first non-blank '#') and blank lines are skipped, also
    between an entry's continuation lines (as Postfix does)."""
    entries: list[MasterEntry] = []
    pending_marks: dict[str, str] = {}
    logical: list[tuple[int, str, dict[str, str]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith(HARNESS_MARK):
                for item in body[len(HARNESS_MARK):].split():
                    key, _, value = item.partition("=")
                    pending_marks[key] = value
            continue
        if line[0].isspace():
            if not logical:
                raise ValueError(f"{source}:{lineno}: continuation line without an entry")
            n, prev, marks = logical[-1]
            logical[-1] = (n, f"{prev} {stripped}", marks)
        else:
            logical.append((lineno, stripped, pending_marks))
            pending_marks = {}
    for lineno, line, marks in logical:
        fields = line.split()
        if len(fields) < 8:
            raise ValueError(f"{source}:{lineno}: expected 8 or more fields, got {line!r}")
        entries.append(MasterEntry(*fields[:8], args=tuple(fields[8:]), marks=marks,
                                   lineno=lineno))
    return entries


def _needs_tls_or_sasl(name: str, value: str) -> bool:
    """An option the test instance cannot honour: it has no certificate and no SASL."""
    return (
        name.startswith(("smtpd_tls_", "smtpd_sasl_"))
        or "permit_sasl_authenticated" in value
    )


# --- talking SMTP -----------------------------------------------------------------------


class SMTPReply(NamedTuple):
    """The reply that decided a transaction: the final DATA reply, or the first rejection.

    `stage` is where it came: connect, ehlo, mail, rcpt (every recipient refused; the last
    refusal is returned), data (the DATA command), or eom (the reply after the dot).
    """

    code: int
    text: str
    stage: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def queue_id(self) -> str | None:
        m = re.search(r"queued as ([0-9A-Za-z]+)", self.text)
        return m.group(1) if m else None


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def smtp_send(
    host: str,
    port: int,
    mail_from: str,
    rcpt_tos: list[str] | tuple[str, ...],
    data: bytes,
    *,
    helo: str = "client.test",
    timeout: float = DEFAULT_TIMEOUT_S,
) -> SMTPReply:
    """Run one SMTP transaction and return the reply that decided it (never raises for an
    SMTP-level refusal; raises OSError if the server cannot be reached or hangs up
    unexpectedly). Bare LF line ends in `data` are sent as CRLF."""
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    try:
        client = smtplib.SMTP(timeout=timeout)
        code, msg = client.connect(host, port)
    except smtplib.SMTPConnectError as e:
        return SMTPReply(e.smtp_code, _text(e.smtp_error), "connect")
    except smtplib.SMTPServerDisconnected as e:
        raise ConnectionError(f"{host}:{port} closed the connection at greeting: {e}") from e
    try:
        if code != 220:
            return SMTPReply(code, _text(msg), "connect")
        code, msg = client.ehlo(helo)
        if code != 250:
            return SMTPReply(code, _text(msg), "ehlo")
        code, msg = client.mail(mail_from)
        if code != 250:
            return SMTPReply(code, _text(msg), "mail")
        refused = None
        accepted = 0
        for rcpt in rcpt_tos:
            code, msg = client.rcpt(rcpt)
            if code in (250, 251):
                accepted += 1
            else:
                refused = SMTPReply(code, _text(msg), "rcpt")
        if not accepted:
            assert refused is not None, "no recipients given"
            return refused
        try:
            code, msg = client.data(data)
        except smtplib.SMTPDataError as e:
            return SMTPReply(e.smtp_code, _text(e.smtp_error), "data")
        return SMTPReply(code, _text(msg), "eom")
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


# --- the instance -----------------------------------------------------------------------


def base_main_cf(workdir: Path, sink_port: int) -> dict[str, str]:
    """The harness's own main.cf settings: paths, loopback only, relay everything to the
    sink, no DNS, fast retries. The contrib fragment's parameters come after these."""
    return {
        "compatibility_level": "3.6",
        "queue_directory": str(workdir / "queue"),
        "data_directory": str(workdir / "data"),
        # postfix-files and dynamicmaps.cf of the installed package.
        "meta_directory": "/etc/postfix",
        "maillog_file": str(workdir / "log" / "maillog"),
        "maillog_file_prefixes": str(workdir / "log"),
        "myhostname": HOSTNAME,
        "mydomain": "localdomain",
        "myorigin": "$myhostname",
        # Nothing is delivered locally: every recipient is relayed to the sink.
        "mydestination": "",
        "relay_domains": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "relayhost": f"[{LOOPBACK}]:{sink_port}",
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        # Relaying to [127.0.0.1] needs no DNS; the machine may have none.
        "smtp_dns_support_level": "disabled",
        "smtp_host_lookup": "native",
        "smtputf8_enable": "no",
        "biff": "no",
        # Tests provoke errors on purpose: no tarpit sleeps.
        "smtpd_error_sleep_time": "0s",
        "smtpd_soft_error_limit": "100",
        "smtpd_hard_error_limit": "200",
        # Deferred mail comes back within seconds (e.g. after the sink answered 4xx).
        # minimal_backoff_time must exceed queue_run_delay: with both at 1s (mtimes have
        # 1 s granularity) the deferred-queue scan could grab a message the smtp client
        # had not released yet; qmgr then logs "skipped, still being delivered" and parks
        # the message in the incoming queue for 60 s (seen once in ~30 runs).
        "queue_run_delay": "1s",
        "minimal_backoff_time": "2s",
        "maximal_backoff_time": "4s",
        "delay_warning_time": "0h",
        "smtp_connect_timeout": "10s",
    }


class PostfixInstance:
    """A Postfix master with its own config, queue and log directories under `workdir`.

    listeners: name -> port for the listeners marked in contrib/postfix/master.cf (mx,
        submission, resubmit); a missing name gets a free port. `ports` has the result.
    milter: Postfix socket spec for smtpd_milters (e.g. "inet:127.0.0.1:PORT"); None or ""
        means no milter.
    extra_main: main.cf parameters to set last (they win over the fragment).
    extra_master: master.cf text appended last.
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        sink_port: int,
        milter: str | None = None,
        listeners: dict[str, int] | None = None,
        extra_main: dict[str, str] | None = None,
        extra_master: str = "",
        main_cf: Path = CONTRIB_MAIN_CF,
        master_cf: Path = CONTRIB_MASTER_CF,
    ):
        self.workdir = Path(workdir).resolve()
        self.sink_port = sink_port
        self.milter = milter or ""
        self.extra_main = dict(extra_main or {})
        self.extra_master = extra_master
        self.fragment_main = parse_main_cf(main_cf.read_text(), str(main_cf))
        self.fragment_master = parse_master_cf(master_cf.read_text(), str(master_cf))
        names = [e.marks["listener"] for e in self.fragment_master if "listener" in e.marks]
        given = dict(listeners or {})
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError(f"listeners {sorted(unknown)} not marked in {master_cf}: {names}")
        self.ports: dict[str, int] = {name: given.get(name) or free_port() for name in names}
        self.master_pid: int | None = None

    # paths -------------------------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.workdir / "queue"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "log" / "maillog"

    # configuration -----------------------------------------------------------------------

    def main_cf_params(self) -> dict[str, str]:
        """The instance's main.cf as an ordered dict (base, fragment, extra_main)."""
        params = base_main_cf(self.workdir, self.sink_port)
        substitutes = {"milter": self.milter}
        for p in self.fragment_main:
            if p.mark:
                key = p.mark.split()[0]
                if key not in substitutes:
                    raise ValueError(
                        f"{CONTRIB_MAIN_CF.name}:{p.lineno}: unknown harness mark {key!r} "
                        f"on {p.name} (known: {sorted(substitutes)})"
                    )
                params[p.name] = substitutes.pop(key)
            else:
                params[p.name] = p.value
        if substitutes:
            raise ValueError(f"main.cf fragment lacks the harness marks {sorted(substitutes)}")
        params.update(self.extra_main)
        return params

    def master_cf_entries(self) -> list[MasterEntry]:
        """Stock internal services (no listeners), then the fragment's entries rewritten."""
        stock_path = next((p for p in STOCK_MASTER_CF_CANDIDATES if p.exists()), None)
        if stock_path is None:
            raise PostfixError(
                f"no stock master.cf found (looked for {STOCK_MASTER_CF_CANDIDATES}): "
                "is the Debian 'postfix' package installed?"
            )
        entries = [
            replace(e, chroot="n")
            for e in parse_master_cf(stock_path.read_text(), str(stock_path))
            if e.type != "inet"
        ]
        fragment_services = {(e.service, e.type) for e in self.fragment_master}
        entries = [e for e in entries if (e.service, e.type) not in fragment_services]
        for e in self.fragment_master:
            e = replace(e, chroot="n")
            if "listener" in e.marks:
                e = replace(e, service=f"{LOOPBACK}:{self.ports[e.marks['listener']]}")
            strip = e.marks.get("strip", "")
            if strip == "tls-sasl":
                e = e.without_options(_needs_tls_or_sasl)
            elif strip:
                raise ValueError(f"master.cf fragment line {e.lineno}: unknown strip={strip}")
            entries.append(e)
        return entries

    def write_config(self) -> None:
        """Create the directories and write main.cf and master.cf."""
        self._check_traversable()
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        for d in (self.config_dir, self.queue_dir, self.log_path.parent):
            d.mkdir(exist_ok=True)
            os.chown(d, 0, 0)
            os.chmod(d, 0o755)
        self.data_dir.mkdir(exist_ok=True)
        shutil.chown(self.data_dir, MAIL_OWNER, MAIL_OWNER)
        os.chmod(self.data_dir, 0o700)
        main = [
            "# Generated by tests/harness/postfix.py from contrib/postfix/main.cf.",
            *(f"{k} = {v}" for k, v in self.main_cf_params().items()),
        ]
        master = [
            "# Generated by tests/harness/postfix.py: stock services + contrib/postfix/master.cf.",
            *(e.render() for e in self.master_cf_entries()),
        ]
        if self.extra_master:
            master.append(self.extra_master)
        # Postfix re-reads a file whose mtime is within the last second, pausing 300 ms
        # each time, until it is older (it may be mid-edit): up to ~2 s per command. The
        # files are complete when written, so date them back.
        backdated = time.time() - 10
        for name, lines in (("main.cf", main), ("master.cf", master)):
            path = self.config_dir / name
            path.write_text("\n".join(lines) + "\n")
            os.chmod(path, 0o644)
            os.utime(path, (backdated, backdated))

    def _check_traversable(self) -> None:
        """Postfix daemons run as the postfix user; every parent of workdir must let them
        through (pytest's own tmp directories are mode 0700)."""
        for parent in self.workdir.parents:
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                raise PostfixError(
                    f"{parent} is not searchable by others (mode "
                    f"{stat.filemode(parent.stat().st_mode)}): the postfix user cannot "
                    f"reach {self.workdir}; use a directory under /tmp"
                )

    # commands ----------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S,
             input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        # cwd=/: postfix-script cds around; a test's cwd must not matter.
        proc = subprocess.run(
            args, capture_output=True, timeout=timeout, cwd="/", input=input,
            start_new_session=True,
        )
        if check and proc.returncode != 0:
            raise PostfixError(self._describe_failure(" ".join(args), proc))
        return proc

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run `postfix -c DIR ARGS...`."""
        return self._run(POSTFIX, "-c", str(self.config_dir), *args, check=check)

    def postconf(self, *names: str) -> dict[str, str]:
        """Effective values of main.cf parameters (postconf -c DIR -h NAME)."""
        out = self._run(POSTCONF, "-c", str(self.config_dir), *names).stdout.decode()
        return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                    for line in out.splitlines())

    def lint(self) -> None:
        """Fail on any postconf warning about the written configuration: an "unused
        parameter" is a misspelt name in a fragment (Postfix itself would only log it)."""
        for flag in ("-n", "-P"):
            proc = self._run(POSTCONF, "-c", str(self.config_dir), flag)
            warnings = [w for w in proc.stderr.decode(errors="replace").splitlines() if w]
            if warnings:
                raise PostfixError(f"postconf {flag} warns about {self.config_dir}:\n"
                                   + "\n".join(warnings))

    def _describe_failure(self, what: str, proc: subprocess.CompletedProcess[bytes] | None,
                          ) -> str:
        parts = [f"{what} failed" + (f" (exit {proc.returncode})" if proc else "")]
        if proc is not None:
            for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                if stream.strip():
                    parts.append(f"{name}:\n{stream.decode(errors='replace').rstrip()}")
        busy = [f"{n}={p}" for n, p in self.ports.items() if port_is_open(LOOPBACK, p)]
        if busy and self.master_pid is None:
            parts.append(f"listener ports already in use by something else: {busy}")
        parts.append("maillog tail:\n" + "\n".join(self.log_text().splitlines()[-30:]))
        return "\n".join(parts)

    # lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = DEFAULT_TIMEOUT_S) -> "PostfixInstance":
        """Write the configuration, check it, start the master, wait for the listeners."""
        self.write_config()
        busy = [f"{n}={p}" for n, p in self.ports.items() if port_is_open(LOOPBACK, p)]
        if busy:
            raise PostfixError(f"listener ports already in use: {busy}")
        self.lint()
        self.postfix("check")
        self.postfix("start")  # master -w: exit 0 only once the master has initialised
        self.master_pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        _RUNNING.add(self)
        try:
            for port in self.ports.values():
                wait_for_port(LOOPBACK, port, timeout)
        except TimeoutError as e:
            self.stop()
            raise PostfixError(self._describe_failure(f"waiting for listeners: {e}", None))
        return self

    def stop(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """`postfix stop`, then wait until the master and all its processes have exited;
        `postfix abort` and finally SIGKILL to the master's process group if they hang."""
        if self.master_pid is None:
            return
        pid = self.master_pid

        def all_gone() -> bool:
            # The master called setsid(): its session holds every process of the instance.
            return not process_alive(pid) and not any(
                process_alive(p) for p in _session_members(pid))

        proc = self.postfix("stop", check=False)
        try:
            wait_until(all_gone, timeout, what=f"Postfix master {pid} and its processes to exit")
        except TimeoutError:
            self.postfix("abort", check=False)
            if process_alive(pid):
                os.killpg(pid, signal.SIGKILL)
            wait_until(all_gone, 10, what=f"Postfix master {pid} to die after SIGKILL")
            raise PostfixError(self._describe_failure("postfix stop (had to kill)", proc))
        finally:
            self.master_pid = None
            _RUNNING.discard(self)

    @property
    def running(self) -> bool:
        return self.master_pid is not None and process_alive(self.master_pid)

    def reload(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Rewrite the configuration and `postfix reload`; return once every process that
        ran with the old configuration has exited.

        Waiting for the master's "reload" log line is not enough: an idle smtpd of the old
        generation can still accept the next connection (seen here about one run in three).
        """
        if self.master_pid is None:
            raise PostfixError("reload: the instance is not running")
        master = self.master_pid
        old = {p for p in _session_members(master) if p != master and process_alive(p)}
        before = self.log_text().count("reload -- version")
        self.write_config()
        self.postfix("reload")
        wait_until(lambda: self.log_text().count("reload -- version") > before, timeout,
                   what="Postfix master to log its reload")
        wait_until(lambda: not any(process_alive(p) for p in old), timeout,
                   what="Postfix processes of the old configuration to exit")

    def __enter__(self) -> "PostfixInstance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # using it ----------------------------------------------------------------------------

    def send(self, listener: str, mail_from: str, rcpt_tos: list[str] | tuple[str, ...],
             data: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> SMTPReply:
        """One SMTP transaction on the named listener (mx, submission, resubmit)."""
        return smtp_send(LOOPBACK, self.ports[listener], mail_from, rcpt_tos, data,
                         timeout=timeout)

    def queue(self) -> list[dict]:
        """The queue as `postqueue -j` reports it: one dict per message."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-j").stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Attempt delivery of all deferred mail now (postqueue -f)."""
        self._run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = DEFAULT_TIMEOUT_S) -> re.Match[str]:
        """Wait until the maillog has a line matching the regex `pattern`; return the match."""
        rx = re.compile(pattern, re.MULTILINE)
        try:
            return wait_until(lambda: rx.search(self.log_text()), timeout,
                              what=f"maillog line matching {pattern!r}")
        except TimeoutError as e:
            tail = "\n".join(self.log_text().splitlines()[-40:])
            raise TimeoutError(f"{e}; maillog tail:\n{tail}") from None

    def wait_for_empty_queue(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        wait_until(lambda: not self.queue(), timeout, what="empty Postfix queue")


def front_mta(workdir: Path | str, target: "PostfixInstance", sink_port: int) -> PostfixInstance:
    """A sending MTA without a milter that relays everything to `target`'s mx listener: the
    client that keeps mail our 4xx answers defer and retries it (a real front relay)."""
    return PostfixInstance(workdir, sink_port=sink_port,
                           extra_main={"myhostname": "front.test", "relayhost": f"[{LOOPBACK}]:{target.ports['mx']}"})


# --- process helpers --------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields after the command name in /proc/PID/stat: state, ppid, pgrp, session, ..."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def process_alive(pid: int) -> bool:
    """True if the process exists and has not exited (a zombie has exited)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _session_members(sid: int) -> set[int]:
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None and int(fields[3]) == sid:
                members.add(int(entry))
    return members
