"""pymavis benchmark: a real Postfix with a null milter and with pymavis, compared.

Every variant is measured in the same run, interleaved; five profiles.

    make bench                                   # = .venv/bin/python bench/run.py (all profiles)
    .venv/bin/python bench/run.py --quick        # smoke run: small, nothing written to docs/
    .venv/bin/python bench/run.py --profile decode --reps 3
    .venv/bin/python bench/run.py --profile virus
    .venv/bin/python bench/run.py --profile spam
    .venv/bin/python bench/run.py --profile observe

Profiles (`--profile`, default `all`: all five, one after the other, each with its own
processes, then one report):
  pass-through  the size mix of bench/sender.py (60% 4 KB text, 30% 32 KB and 10% 256 KB
                with one attachment of random bytes); variants: Postfix alone, + null
                milter (the baseline), + pymavis with the shipped policies/;
  decode        bench/messages.py's mix of realistic mail (50 KB messages with a PDF, a
                docx, a zip, an image; HTML newsletters; forwarded messages; corpus
                messages; 2% of 5 MB messages), generated at run time; variants: + null
                milter, + pymavis with decoding off (shipped policies/ plus
                bypass_banned_checks and bypass_header_checks: nothing needs the parts, so
                the walk never runs) and + pymavis with decoding on (the shipped policies/).
                Before it, bench/decode_cost.py measures the CPU of decoding itself per
                message, in process (the figure the 5 ms / 250 ms targets are about), and
                screens the corpus messages (those the DEFAULT banned rules block are left
                out: they would be discarded and never reach the sink);
  virus         bench/messages.py's VIRUS_MIX: the decode mix with 3% infected messages
                (EICAR in a text body, EICAR attached, clamav-testfiles' clam.exe zipped;
                built at run time) and one clamd (tests/harness/clamd.py, bench/virus.py);
                variants: Postfix alone, + null milter, + pymavis with av_scanners -> clamd
                by zFILDES, the same by zINSTREAM and by method parts (each decoded part by
                zINSTREAM) (shipped policies/ plus the scanner and
                final_virus_destiny / final_banned_destiny `pass`, so infected mail is
                delivered tagged and no message is lost), and clamd alone: our ClamdClient
                scanning the same messages at the same concurrency, no Postfix (the
                ceiling for any design that calls clamd). Before it, clamd screens the
                corpus share and its CPU per message is measured by class, one scan at a
                time. Target: pymavis (zFILDES) >= 0.45 x Postfix alone;
  spam          bench/messages.py's SPAM_MIX: the decode mix without its 5 MB classes, with
                SpamAssassin's own spam and ham test messages and 2% GTUBE, and one spamd
                (tests/harness/spamd.py, bench/spam.py); variants: spamd alone (our
                SpamdClient asking SYMBOLS with the bytes pymavis would send, same
                concurrency, no Postfix: the ceiling), + pymavis + spamd with the verdict
                cache off (every message to spamd), and on a MIRV stream (30% of the
                messages repeat an earlier one byte for byte, to another recipient) spamd
                alone and + pymavis + spamd with the cache on (shipped spam_cache). Before
                it, spamd's CPU per message is measured by class, one request at a time.
                Targets: pymavis (cache off) >= 0.95 x spamd alone; on the MIRV stream
                pymavis (cache on) >= 1.3 x spamd alone; pymavis peak RSS <= 150 MB;
  observe       the pass-through mix through + null milter, + pymavis as shipped (logging
                off), + pymavis with full logging (JSON events to a file, the SQL log,
                metrics), + pymavis with JSON only and SQL only (for information), +
                pymavis verifying DKIM (the key served by a fake DNS), +
                pymavis signing every message (RSA-2048); bench/observe.py. Targets: full
                logging >= 0.90 x logging off; verify + A-R <= 5 ms and signing <= 20 ms
                of pymavis CPU per message over pymavis as shipped.

What runs (all on 127.0.0.1, in a temp dir under /tmp, removed at the end), per profile:
  - one `smtp-sink` (Postfix's C test server) that every Postfix relays to, counting messages;
  - one private Postfix instance per variant, built by tests/harness/postfix.py from
    contrib/postfix (the configuration an admin installs), identical but for smtpd_milters:
      null     tests/harness/nullmilter.py --no-headers (pymilter, answers CONTINUE, changes
               nothing): the baseline,
      pymavis  `python -m pymavis milter` with the shipped policies/ (only state_dir moved
               into the temp dir; for "decoding off" the two bypass settings added; in the
               virus profile av_scanners and the two destinies);
  - virus profile: one clamd (tests/harness/clamd.py) on a unix socket in the temp dir;
  - spam profile: one spamd (tests/harness/spamd.py) on a unix socket (spamd alone has no
    sink and no Postfix);
  - per phase, the load from bench/sender.py (the profile's mix, concurrency, per-message
    latency; see its docstring) and, in the pass-through profile, as a check on that
    sender, the same load from `smtp-source` (which sends no attachments).

Order: a warm-up per variant (not measured), then `reps` repetitions; each repetition runs
every variant once, the order rotated by one per repetition, so slow drift (page cache,
disk, a noisy neighbour) spreads over all variants. Each phase starts with an empty queue.

Figures per phase: messages/s (messages / time from release of the senders to the last
250 after a dot), latency p50/p99 of the SMTP transactions, the milter process's CPU
(utime+stime from /proc/PID/stat, all threads) per message, its peak RSS (VmHWM from
/proc/PID/status, reset before each phase by writing 5 to /proc/PID/clear_refs), the whole
machine's busy CPU per message, the sender's own CPU, in the virus profile clamd's CPU per
message (utime+stime from /proc/PID/stat), in the spam profile spamd's CPU per message
(master and children) and how many messages spamd checked, and the CPU of processes this run did not start
("other load": another job on a 2-core machine halves the figures; the report warns). The
report gives the median of the repetitions and the ratios against the null milter (in the
decode profile also against pymavis with decoding off; in the virus profile against
Postfix alone, the null milter and clamd alone; in the spam profile against spamd alone on
the same stream).

The milters are reached over TCP on 127.0.0.1, as contrib/postfix/main.cf ships it;
`--milter-socket unix` is a diagnostic (bench/README.md: delayed ACKs on TCP).

A lost message is a failed run, not a figure: after each phase every message must have
reached the sink (no more, no fewer) and the Postfix queue must be empty within
`drain timeout`; with pymavis every message must also have its "Passed" log line (virus
profile: exactly the infected ones "Passed INFECTED"; clamd alone: every verdict as
expected; spam profile: spamd checked every message, or every one but the repeats with the
cache on, pymavis logged no "SPAM CHECK FAILED" and exactly the GTUBE messages as SPAM by
GTUBE). Any SMTP reply other than success, a timeout or a dropped connection fails the
run too.

Limits: every wait has a deadline (start-up, each phase, each drain, the decode
micro-benchmark) and the whole run has `--max-minutes`; the processes started here are
stopped at the end, on an error, on SIGINT or SIGTERM, and die with this process if it is
killed (PR_SET_PDEATHSIG).

Exit status: 0 figures produced and targets met, 3 figures produced but a target missed,
1 failed run. Targets: pass-through: pymavis peak RSS <= 80 MB, pymavis throughput >= 0.85
x null milter; decode: decoding a 50 KB message <= 5 ms CPU and a 5 MB message <= 250 ms
(bench/decode_cost.py), pymavis peak RSS <= 2 x pymavis with decoding off on the same mix
(pass-through as the foundation measured it: pymavis decoding nothing); virus: pymavis
with clamd (zFILDES) >= 0.45 x Postfix alone; spam: pymavis + spamd (cache off) >= 0.95 x
spamd alone, on the MIRV stream pymavis (cache on) >= 1.3 x spamd alone, pymavis peak RSS
<= 150 MB at concurrency 20.
Results are printed and appended to docs/benchmarks.md (not with --quick or --no-docs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "milter"))     # bench/virus.py, bench/spam.py use our clamd and spamd clients
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH_DIR))

from harness.net import LOOPBACK, die_with_parent, free_port, port_is_open, wait_until  # noqa: E402
from harness.postfix import PostfixError, PostfixInstance  # noqa: E402

import messages  # noqa: E402
import observe  # noqa: E402
import sender  # noqa: E402
import spam  # noqa: E402
import virus  # noqa: E402

SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-source"
NULL_MILTER = REPO / "tests" / "harness" / "nullmilter.py"
DECODE_COST = BENCH_DIR / "decode_cost.py"
SHIPPED_CONFIG_DIR = REPO / "policies"
DOCS = REPO / "docs" / "benchmarks.md"

# Targets for pymavis (issue: benchmark); checked against the figures of this run.
TARGET_RSS_MB = 80.0
TARGET_THROUGHPUT_RATIO = 0.85
# Decode profile (issue: decode profile): peak RSS at most this many times pymavis passing
# the same mix through without decoding (the "decoding off" variant). The CPU targets
# (5 ms / 250 ms per message) are bench/decode_cost.py's.
TARGET_DECODE_RSS_FACTOR = 2.0
DECODE_COST_TIMEOUT_S = 600.0
# If smtp-source gets this much more through a variant than bench/sender.py does, the
# Python sender's own CPU limited that variant's figure.
SENDER_CHECK_RATIO = 1.10
# Busier than this before the run starts: something else is running; the report says so.
BACKGROUND_WARN_PCT = 10.0
# ... or during a phase (see CpuWindow).
OTHER_LOAD_WARN_PCT = 5.0

# Waits. Generous for a loaded 2-core machine; a healthy run stays far below them.
START_TIMEOUT_S = 60.0
PYMAVIS_STOP_TIMEOUT_S = 60.0   # shutdown_grace_s (30) + libmilter's stop delay (~5) + margin
IO_TIMEOUT_S = 120.0            # one SMTP read or write; Postfix's milter timeouts are lower

CLK_TCK = os.sysconf("SC_CLK_TCK")


class RunFailed(Exception):
    """The run cannot give figures: a message was lost, refused, or something did not start."""


class OutOfTime(Exception):
    pass


# --- child processes --------------------------------------------------------------------


class Child:
    """A long-running helper process (sink or milter) with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, env: dict | None = None,
                 stop_signal: int = signal.SIGTERM, stop_timeout: float = 30.0):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env = env
        self.stop_signal, self.stop_timeout = stop_signal, stop_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready, timeout: float = START_TIMEOUT_S) -> "Child":
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd="/",
                                         start_new_session=True, preexec_fn=die_with_parent)

        def up():
            if self.proc.poll() is not None:
                raise RunFailed(f"{self.name} exited with status {self.proc.returncode} at start:\n"
                                f"{self.log_tail()}")
            return ready()

        try:
            wait_until(up, timeout, what=f"{self.name} ready")
        except TimeoutError as e:
            self.stop()
            raise RunFailed(f"{e}\n{self.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {self.name} (pid {self.pid}) did not exit {self.stop_timeout:g} s "
                      f"after signal {self.stop_signal}; killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Sink(Child):
    """smtp-sink -c: accepts everything, prints "sess=N quit=N mesg=N" (CR-separated) after
    every change; `count()` is the last mesg= value."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        # -u: smtp-sink refuses to run as root; -m: up to 256 parallel sessions (Postfix
        # opens at most default_destination_concurrency_limit = 20 per instance).
        super().__init__("smtp-sink", [SMTP_SINK, "-c", "-u", "nobody", "-m", "256",
                                       f"{LOOPBACK}:{self.port}", "256"],
                         workdir / "smtp-sink.out")

    def start(self, timeout: float = START_TIMEOUT_S) -> "Sink":
        return super().start(lambda: port_is_open(LOOPBACK, self.port), timeout)

    def count(self) -> int:
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256))
            tail = fh.read().decode("ascii", "replace")
        found = re.findall(r"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0


@dataclass(frozen=True)
class MilterAddress:
    """Where a milter listens: inet (127.0.0.1:port, as contrib/postfix/main.cf has it) or
    a unix socket (diagnostic: no TCP, so no Nagle/delayed-ACK stalls)."""

    port: int | None = None
    path: Path | None = None

    @classmethod
    def new(cls, kind: str, workdir: Path, name: str) -> "MilterAddress":
        return cls(path=workdir / f"{name}.sock") if kind == "unix" else cls(port=free_port())

    @property
    def postfix(self) -> str:
        return f"unix:{self.path}" if self.path else f"inet:{LOOPBACK}:{self.port}"

    @property
    def libmilter(self) -> str:
        return f"unix:{self.path}" if self.path else f"inet:{self.port}@{LOOPBACK}"

    def ready(self) -> bool:
        if self.path is None:
            return port_is_open(LOOPBACK, self.port)
        if not self.path.exists():
            return False
        self.path.chmod(0o666)   # smtpd runs as the postfix user
        return True


def start_null_milter(workdir: Path, kind: str) -> tuple[Child, MilterAddress]:
    addr = MilterAddress.new(kind, workdir, "nullmilter")
    child = Child("null milter", [sys.executable, str(NULL_MILTER), addr.libmilter, "--no-headers"],
                  workdir / "nullmilter.log", stop_signal=signal.SIGKILL)  # holds no state
    return child.start(addr.ready), addr


# What "decoding off" adds to the shipped default policy: no recipient needs the parts
# (checks/content.py NEEDS_PARTS) and the header check is skipped, so the walk never runs.
DECODING_OFF = {"bypass_banned_checks": "true", "bypass_header_checks": "true"}


def edit_config(text: str, top: dict[str, str], policy: dict[str, str], why: str) -> str:
    """The shipped pymavis.yaml with top-level keys and keys of the default `policy:` set:
    a key's one existing line is replaced, a missing policy key is added under `policy:`,
    a missing top-level key at the end. Each edited line says `# bench: why`. RunFailed
    when the file does not have the shape this relies on."""
    where = SHIPPED_CONFIG_DIR / "pymavis.yaml"
    for indent, settings in (("", top), ("  ", policy)):
        for key, value in settings.items():
            line = f"{indent}{key}: {value}   # bench: {why}"
            text, n = re.subn(rf"(?m)^{indent}{re.escape(key)}:.*$", lambda m: line, text)
            if n > 1:
                raise RunFailed(f"{where}: {n} lines set {key!r}; expected at most one")
            if n == 0 and indent:
                text, n = re.subn(r"(?m)^policy:[ \t]*(#.*)?$", lambda m: m.group(0) + "\n" + line, text)
                if n != 1:
                    raise RunFailed(f"{where}: expected one top-level 'policy:' line to extend, found {n}")
            elif n == 0:
                text = text.rstrip("\n") + "\n" + line + "\n"
    return text


def start_pymavis(workdir: Path, kind: str, key: str = "pymavis", *, top: dict[str, str] | None = None,
                  policy: dict[str, str] | None = None, why: str = "",
                  pythonpath: tuple[str, ...] = ()) -> tuple[Child, MilterAddress]:
    """pymavis with a copy of the shipped policies/ whose only changes are state_dir and
    the given `top`-level and default-`policy` settings (edit_config); `pythonpath`: more
    directories on its PYTHONPATH (bench/logging_cost.py's thread naming)."""
    conf_dir = workdir / f"{key}-config"
    shutil.copytree(SHIPPED_CONFIG_DIR, conf_dir)
    state_dir = workdir / f"{key}-state"
    main = conf_dir / "pymavis.yaml"
    text = main.read_text()
    if not re.search(r"(?m)^state_dir:", text):
        raise RunFailed(f"{SHIPPED_CONFIG_DIR / 'pymavis.yaml'}: no top-level 'state_dir:' line to replace")
    text = edit_config(text, {"state_dir": str(state_dir)}, {}, "moved to its temp dir")
    text = edit_config(text, top or {}, policy or {}, why)
    main.write_text(text)
    addr = MilterAddress.new(kind, workdir, key)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(REPO / "milter"), *pythonpath)))
    child = Child(key, [sys.executable, "-m", "pymavis", "milter", "-c", str(main),
                        "--foreground", "--socket", addr.postfix],
                  workdir / f"{key}.log", env=env, stop_timeout=PYMAVIS_STOP_TIMEOUT_S)
    child.start(lambda: "pymavis starting on" in child.log_text() and addr.ready())
    return child, addr


# --- profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    variants: tuple[tuple[str, str], ...]   # (key, title): postfix, null, pymavis, pymavis-nodecode, ...
    smtp_source: bool                       # also send the load with smtp-source (no attachments)
    messages: int = 2000                    # messages per phase unless --messages says otherwise
    warmup: int = 200                       # warm-up messages per variant unless --warmup says otherwise


PASS_THROUGH = Profile("pass-through", "Pass-through profile",
                       (("postfix", "Postfix alone"), ("null", "+ null milter"), ("pymavis", "+ pymavis")),
                       smtp_source=True)
# With 2000 messages per phase (40 of them 5 MB) a decoding phase takes ~18 s on 2 cores.
DECODE = Profile("decode", "Decode profile",
                 (("null", "+ null milter"), ("pymavis-nodecode", "+ pymavis, decoding off"),
                  ("pymavis", "+ pymavis, decoding on")),
                 smtp_source=False)
# "clamd" is not a Postfix variant: bench/virus.py's ScanAlone, clamd alone.
VIRUS = Profile("virus", "Virus profile",
                (("postfix", "Postfix alone"), ("null", "+ null milter"),
                 ("pymavis-fildes", "+ pymavis + clamd, zFILDES"),
                 ("pymavis-instream", "+ pymavis + clamd, zINSTREAM"),
                 ("pymavis-parts", "+ pymavis + clamd, parts (zINSTREAM per decoded part)"),
                 ("clamd", "clamd alone, zINSTREAM")),
                smtp_source=False, messages=1500)
# "spamd" and "spamd-mirv" are not Postfix variants: bench/spam.py's SpamdAlone, spamd
# alone; the "-mirv" variants get the MIRV stream (bench/spam.py MirvMix).
SPAM = Profile("spam", "Spam profile",
               (("spamd", "spamd alone"), ("pymavis-spamd", "+ pymavis + spamd, cache off"),
                ("spamd-mirv", "spamd alone, MIRV stream"),
                ("pymavis-mirv", "+ pymavis + spamd, cache on, MIRV stream")),
               smtp_source=False, messages=200, warmup=40)
# bench/observe.py: full logging and DKIM on the pass-through mix.
OBSERVE = Profile("observe", "Observe profile (logging, DKIM)",
                  (("null", "+ null milter"), ("pymavis", "+ pymavis, logging off"),
                   ("pymavis-logging", "+ pymavis, JSON + SQL + metrics"),
                   ("pymavis-json", "+ pymavis, JSON events only"),
                   ("pymavis-sql", "+ pymavis, SQL log only"),
                   ("pymavis-verify", "+ pymavis, DKIM verify + A-R"),
                   ("pymavis-sign", "+ pymavis, DKIM signing RSA-2048")),
                  smtp_source=False)
PROFILES = {p.name: p for p in (PASS_THROUGH, DECODE, VIRUS, SPAM, OBSERVE)}
# Targets of the virus profile (issue: virus profile), medians of the same run.
TARGET_VIRUS_RATIO = 0.45        # pymavis (decoding, banned rules, clamd zFILDES) / Postfix alone
AMAVIS_VIRUS_RATIO = 0.10        # amavisd-new with decoding + clamd, per the issue (not measured here)
# Targets of the spam profile (issue: spam profile), medians of the same run.
TARGET_SPAM_RATIO = 0.95         # pymavis + spamd (cache off) / spamd alone, same stream
TARGET_MIRV_RATIO = 1.30         # pymavis + spamd (cache on) / spamd alone, MIRV stream
TARGET_SPAM_RSS_MB = 150.0       # pymavis peak RSS at concurrency 20 (spamd not counted)
TARGET_SPAM_CONCURRENCY = 20
AMAVIS_SPAM_RATIO = 1.0          # amavisd-new with embedded SpamAssassin / spamd alone, per the issue


# --- /proc ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def background_busy_pct(seconds: float = 3.0) -> float:
    """Share of all cores busy over `seconds` before anything of ours runs."""
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])       # guest time is already in user
    return total - idle, total


def machine_process_jiffies() -> int:
    """user + nice + system jiffies of all CPUs: the time processes are charged with
    (interrupt and softirq time is charged to no process)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[0] + values[1] + values[2]


class CpuWindow:
    """Machine CPU over a phase: busy jiffies, total jiffies, and the jiffies of processes
    this run did not start (another job on the machine disturbs the figures)."""

    def __init__(self, sessions: set[int]):
        self.sessions = sessions
        self.busy0, self.total0 = machine_cpu()
        self.proc0, self.own0 = machine_process_jiffies(), own_jiffies(sessions)

    def stop(self) -> "CpuWindow":
        self.busy1, self.total1 = machine_cpu()
        self.proc1, self.own1 = machine_process_jiffies(), own_jiffies(self.sessions)
        return self

    @property
    def busy_jiffies(self) -> int:
        return self.busy1 - self.busy0

    @property
    def busy_pct(self) -> float:
        return 100.0 * self.busy_jiffies / max(1, self.total1 - self.total0)

    @property
    def other_pct(self) -> float:
        other = (self.proc1 - self.proc0) - (self.own1 - self.own0)
        return max(0.0, 100.0 * other / max(1, self.total1 - self.total0))


def own_jiffies(sessions: set[int]) -> int:
    """CPU jiffies of everything this run started: this process and its descendants, and
    every process in the sessions of our Postfix masters. utime+stime of the living, plus
    cutime+cstime (children already reaped, e.g. Postfix's short-lived processes and our
    finished senders): a difference of two calls is the CPU the run used in between."""
    procs: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        procs[int(entry)] = (int(f[1]), int(f[3]), sum(int(x) for x in f[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    ours = {pid for pid, (_, sid, _) in procs.items() if sid in sessions}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, ()))
    return sum(procs[p][2] for p in ours if p in procs)


# --- one phase --------------------------------------------------------------------------


@dataclass
class Variant:
    key: str
    title: str
    postfix: PostfixInstance | None    # None: clamd or spamd alone (virus, spam profile), no MTA
    milter: Child | None = None
    pymavis_log: Child | None = None   # the pymavis child, for its per-message log lines
    mix: object | None = None          # the variant's own stream (spam profile: MIRV); None: the profile's

    @property
    def port(self) -> int:
        return self.postfix.ports["mx"]


@dataclass
class Phase:
    profile: str
    variant: str
    rep: int
    sender: str                     # "python" or "smtp-source"
    messages: int
    wall_s: float
    msgs_per_s: float
    drain_s: float                  # last accepted message -> all at the sink, queue empty
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    p50_by_size_ms: dict = field(default_factory=dict)
    milter_cpu_ms_per_msg: float | None = None
    milter_peak_rss_mb: float | None = None
    machine_cpu_ms_per_msg: float = 0.0
    machine_busy_pct: float = 0.0
    sender_cpu_ms_per_msg: float | None = None
    other_load_pct: float = 0.0     # CPU of processes this run did not start, % of all cores
    clamd_cpu_ms_per_msg: float | None = None   # virus profile: clamd's utime+stime per message
    infected: int = 0               # virus profile: messages of infected classes in the phase
    spamd_cpu_ms_per_msg: float | None = None   # spam profile: spamd's CPU (master + children) per message
    spamd_scans: int | None = None  # spam profile: messages spamd checked ("result:" lines)
    gtube: int = 0                  # spam profile: GTUBE messages in the phase
    repeats: int = 0                # spam profile, MIRV stream: messages repeating an earlier one


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (as numpy's default)."""
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


class Bench:
    """One profile: its sink, milters and Postfix instances, its phases."""

    def __init__(self, args, workdir: Path, profile: Profile, mix, messages_per_phase: int,
                 clamd=None, spamd=None, keys=None):
        self.args = args
        self.keys = keys            # observe profile: bench/observe.py Keys (stopped by the caller)
        self.workdir = workdir
        self.profile = profile
        self.mix = mix
        self.messages = messages_per_phase
        self.clamd = clamd          # virus profile: a started harness ClamdProcess (stopped by the caller)
        self.spamd = spamd          # spam profile: a started harness SpamdProcess (stopped by the caller)
        self.mirv = spam.MirvMix(mix) if spamd is not None else None   # spam profile: the MIRV stream
        self.sink: Sink | None = None
        self.children: list[Child] = []
        self.variants: list[Variant] = []
        self.delivered = 0          # messages the sink must have received so far
        self.msg_no = 0             # next message number (unique Message-IDs over the run)
        self.lifetime_peak_mb: dict[str, float] = {}

    # setup / teardown ----------------------------------------------------------------

    def setup(self) -> None:
        self.workdir.mkdir(mode=0o755, exist_ok=True)
        self.sink = Sink(self.workdir).start()
        self.children.append(self.sink)
        for key, title in self.profile.variants:
            milter = addr = None
            if key == "clamd":
                self.variants.append(Variant(key, title, None))
                continue
            stream = self.mirv if key.endswith("-mirv") else None
            if key in ("spamd", "spamd-mirv"):
                self.variants.append(Variant(key, title, None, mix=stream))
                continue
            if key == "null":
                milter, addr = start_null_milter(self.workdir, self.args.milter_socket)
            elif key == "pymavis-nodecode":
                milter, addr = start_pymavis(self.workdir, self.args.milter_socket, key,
                                             policy=DECODING_OFF, why="decoding off")
            elif key in ("pymavis-fildes", "pymavis-instream", "pymavis-parts"):
                method = key.split("-")[1]
                scanners = virus.scanners_yaml(self.clamd.socket_spec("unix"), method)
                milter, addr = start_pymavis(self.workdir, self.args.milter_socket, key,
                                             top={"av_scanners": scanners}, policy=virus.POLICY,
                                             why=f"virus profile, clamd by {method}")
            elif key in ("pymavis-spamd", "pymavis-mirv"):
                ttl = 0 if key == "pymavis-spamd" else spam.CACHE_TTL_S
                top = {"spam_scanners": spam.scanners_yaml(self.spamd.socket_spec("unix")),
                       "spam_cache": spam.cache_yaml(ttl)}
                milter, addr = start_pymavis(self.workdir, self.args.milter_socket, key, top=top,
                                             policy=spam.POLICY,
                                             why=f"spam profile, spamd, cache {'off' if not ttl else 'on'}")
            elif key in observe.VARIANTS:
                top, policy, why = observe.variant_settings(key, self.keys)
                milter, addr = start_pymavis(self.workdir, self.args.milter_socket, key, top=top, policy=policy,
                                             why=why)
            elif key == "pymavis":
                milter, addr = start_pymavis(self.workdir, self.args.milter_socket, key)
            if milter:
                self.children.append(milter)
            want = addr.postfix if addr else ""
            pf = PostfixInstance(self.workdir / f"postfix-{key}", sink_port=self.sink.port,
                                 milter=want)
            self.variants.append(Variant(key, title, pf, milter,
                                         milter if key.startswith("pymavis") else None, mix=stream))
            pf.start()
            got = pf.postconf("smtpd_milters")["smtpd_milters"]
            if got != want:
                raise RunFailed(f"{key}: smtpd_milters is {got!r}, expected {want!r}")

    def teardown(self) -> None:
        for v in self.variants:
            if v.postfix is None:
                continue
            try:
                v.postfix.stop()
            except (PostfixError, TimeoutError, OSError) as e:  # keep stopping the others
                print(f"bench: stopping Postfix {v.key}: {e}", file=sys.stderr)
        for c in reversed(self.children):
            c.stop()

    # checks ----------------------------------------------------------------------------

    def wait_delivered(self, v: Variant, n: int, timeout: float) -> None:
        """The phase's n messages all at the sink (no more) and v's queue empty, or RunFailed."""
        before = self.delivered
        self.delivered += n
        expected_total = self.delivered

        def done():
            if not self.sink.alive():
                raise RunFailed(f"{v.key}: smtp-sink died; the Postfix queue holds "
                                f"{len(v.postfix.queue())} message(s) it could not deliver")
            got = self.sink.count()
            if got > expected_total:
                raise RunFailed(f"{v.key}: the sink received {got - expected_total} message(s) more "
                                "than were sent: duplicates")
            return got == expected_total and not v.postfix.queue()

        try:
            wait_until(done, timeout, interval=0.2, what=f"{v.key}: all messages delivered")
        except TimeoutError:
            got = self.sink.count()
            queue = v.postfix.queue()
            reasons = sorted({r.get("delay_reason", "?") for m in queue for r in m.get("recipients", [])})
            raise RunFailed(
                f"{v.key}: LOST MESSAGES: the sink received {got - before} of the phase's {n} "
                f"within {timeout:g} s; the Postfix queue holds {len(queue)}"
                + (f" ({'; '.join(reasons)[:500]})" if reasons else "")
                + "\nmaillog tail:\n" + "\n".join(v.postfix.log_text().splitlines()[-15:])) from None

    def master_sessions(self) -> set[int]:
        return {v.postfix.master_pid for v in self.variants if v.postfix and v.postfix.master_pid}

    @staticmethod
    def passed_lines(v: Variant) -> int:
        return v.pymavis_log.log_text().count(" Passed ") if v.pymavis_log else 0

    @staticmethod
    def passed_categories(v: Variant) -> dict[str, int]:
        """How many messages pymavis passed per content category over the whole run
        ("Passed CLEAN", "Passed BAD-HEADER", ...): with decoding off, all CLEAN."""
        counts: dict[str, int] = {}
        for ccat in re.findall(r" Passed (\S+) ", v.pymavis_log.log_text() if v.pymavis_log else ""):
            counts[ccat] = counts.get(ccat, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def check_passed(self, v: Variant, before: int, n: int, viruses_before: int = 0, infected: int = 0) -> None:
        """With pymavis, every message of the phase must have its "Passed" log line; in the
        virus profile, exactly the infected ones a "Passed INFECTED" line."""
        if v.pymavis_log and self.passed_lines(v) - before != n:
            raise RunFailed(f"pymavis logged {self.passed_lines(v) - before} 'Passed' lines for {n} "
                            f"messages:\n{v.pymavis_log.log_tail()}")
        if v.pymavis_log and self.clamd and self.virus_lines(v) - viruses_before != infected:
            raise RunFailed(f"{v.key}: pymavis logged {self.virus_lines(v) - viruses_before} 'Passed INFECTED' "
                            f"lines; the phase sent {infected} infected messages:\n{v.pymavis_log.log_tail()}")

    @staticmethod
    def virus_lines(v: Variant) -> int:
        """pymavis' "Passed INFECTED" lines (amavis' name; VIRUS before report.py used it)."""
        return len(re.findall(r" Passed (?:INFECTED|VIRUS) ", v.pymavis_log.log_text())) if v.pymavis_log else 0

    def infected_in(self, n: int, seed: int) -> int:
        """How many of the n messages sent with `seed` are of an infected class."""
        if not hasattr(self.mix, "virus"):
            return 0
        return sum(1 for c in sender.plan(n, seed, [share for _, share in self.mix.classes]) if self.mix.virus(c))

    def check_alive(self) -> None:
        for c in self.children:
            if not c.alive():
                raise RunFailed(f"{c.name} died (status {c.proc.returncode if c.proc else '?'}):\n"
                                f"{c.log_tail()}")

    # phases ----------------------------------------------------------------------------

    def check_alive_clamd(self) -> None:
        if self.clamd and (self.clamd.proc is None or self.clamd.proc.poll() is not None):
            raise RunFailed(f"clamd died:\n{self.clamd.log_text()[-2000:]}")
        if self.spamd and (self.spamd.proc is None or self.spamd.proc.poll() is not None):
            raise RunFailed(f"spamd died:\n{self.spamd.log_text()[-2000:]}")

    def alone(self, v: Variant):
        """The per-message `send` of a variant without Postfix (clamd or spamd alone)."""
        if v.key == "clamd":
            return virus.ScanAlone(self.clamd.socket_spec("unix"), self.mix)
        return spam.SpamdAlone(self.spamd.socket_spec("unix"))

    def spamd_results(self, at_least: int, exactly: bool) -> list:
        """spamd's "result:" lines once the phase's are all logged (spamd logs each after its
        answer): at least `at_least`, then no new one for 0.5 s (exactly: no more wait)."""
        deadline = time.monotonic() + 10.0
        got = spam.results(self.spamd)
        while time.monotonic() < deadline:
            if len(got) >= at_least and exactly:
                return got
            time.sleep(0.5)
            now = spam.results(self.spamd)
            if len(got) >= at_least and len(now) == len(got):
                return now
            got = now
        return got

    def check_spam(self, v: Variant, n: int, seed: int, scans_before: int, log_before: int) -> tuple[int, int, int]:
        """Spam profile, after a phase: (spamd's checks in the phase, GTUBE messages, repeats).
        spamd must have checked every message (spamd alone, pymavis with the cache off) or at
        least every message that is not a repeat (cache on); pymavis must log no failed spam
        check and exactly the phase's GTUBE messages as SPAM by the GTUBE rule."""
        mix = v.mix or self.mix
        gtube = mix.gtube_count(n, seed, self.msg_no - n)
        repeats = mix.repeats(n) if hasattr(mix, "repeats") else 0
        cache_on = v.key == "pymavis-mirv"
        results = self.spamd_results(n - repeats if cache_on else n, exactly=not cache_on)
        new = results[scans_before:]
        scans = len(new)
        if (scans < n - repeats or scans > n) if cache_on else scans != n:
            raise RunFailed(f"{v.key}: spamd checked {scans} messages in a phase of {n}"
                            + (f" ({repeats} of them repeats, which the cache may answer)" if cache_on else "")
                            + f"; spamd log tail:\n{self.spamd.log_text()[-1500:]}")
        if not cache_on:
            flagged = sum(1 for _, _, tests in new if "GTUBE" in tests.split(","))
            if flagged != gtube:
                raise RunFailed(f"{v.key}: spamd found GTUBE in {flagged} messages; the phase sent {gtube}")
        if v.pymavis_log:
            text = v.pymavis_log.log_text()[log_before:]
            failed = text.count("SPAM CHECK FAILED")
            if failed:
                raise RunFailed(f"{v.key}: pymavis logged SPAM CHECK FAILED {failed} times:\n"
                                + "\n".join(line for line in text.splitlines() if "SPAM CHECK FAILED" in line)[-2000:])
            found = len(re.findall(r"(?m): SPAM \(spam\) for .*tests=\[[^]]*\bGTUBE\b", text))
            if found != gtube:
                raise RunFailed(f"{v.key}: pymavis logged {found} messages as SPAM by GTUBE; the phase sent "
                                f"{gtube}:\n{v.pymavis_log.log_tail()}")
        return scans, gtube, repeats

    def run_python(self, v: Variant, n: int, rep: int, seed: int) -> Phase:
        """One phase: bench/sender.py through v's Postfix or, for clamd or spamd alone, its
        requests."""
        self.check_alive()
        self.check_alive_clamd()
        mix = v.mix or self.mix
        pid = v.milter.pid if v.milter else None
        passed_before, viruses_before = self.passed_lines(v), self.virus_lines(v)
        log_before = len(v.pymavis_log.log_text()) if v.pymavis_log else 0
        scans_before = len(spam.results(self.spamd)) if self.spamd else 0
        if pid:
            self.lifetime_peak_mb[v.key] = max(self.lifetime_peak_mb.get(v.key, 0.0),
                                               proc_status_kb(pid, "VmHWM") / 1024)
            reset_peak_rss(pid)
            cpu0 = proc_cpu_s(pid)
        clamd_cpu0 = proc_cpu_s(self.clamd.proc.pid) if self.clamd else 0.0
        spamd_cpu0 = spam.spamd_cpu_s(self.spamd.proc.pid) if self.spamd else 0.0
        window = CpuWindow(self.master_sessions())
        if v.postfix is None:
            result = sender.run_load(self.alone(v), n, self.args.concurrency, mix=mix, seed=seed,
                                     first_msg_no=self.msg_no, workers=self.args.sender_workers,
                                     phase_timeout_s=self.phase_timeout(n))
        else:
            result = sender.run_phase(LOOPBACK, v.port, n, self.args.concurrency, mix=mix, seed=seed,
                                      first_msg_no=self.msg_no, workers=self.args.sender_workers,
                                      io_timeout_s=IO_TIMEOUT_S, phase_timeout_s=self.phase_timeout(n))
        window.stop()
        clamd_cpu = proc_cpu_s(self.clamd.proc.pid) - clamd_cpu0 if self.clamd else None
        spamd_cpu = spam.spamd_cpu_s(self.spamd.proc.pid) - spamd_cpu0 if self.spamd else None
        self.msg_no += n
        if pid:
            cpu = proc_cpu_s(pid) - cpu0
            peak_mb = proc_status_kb(pid, "VmHWM") / 1024
            self.lifetime_peak_mb[v.key] = max(self.lifetime_peak_mb[v.key], peak_mb)
        failures = result.failures
        if failures:
            kinds: dict[str, int] = {}
            for r in failures:
                kinds[r.error] = kinds.get(r.error, 0) + 1
            detail = "\n".join(f"  {count} x {err}" for err, count in
                               sorted(kinds.items(), key=lambda kv: -kv[1])[:10])
            raise RunFailed(f"{v.key}: {len(failures)} of {n} transactions failed:\n{detail}")
        last = max(r.end for r in result.records)
        if v.postfix is not None:
            self.wait_delivered(v, n, self.drain_timeout(n))
        drain_s = time.monotonic() - last
        infected = self.infected_in(n, seed)
        self.check_passed(v, passed_before, n, viruses_before, infected)
        scans = gtube = repeats = None
        if self.spamd:
            scans, gtube, repeats = self.check_spam(v, n, seed, scans_before, log_before)
        lat = sorted((r.end - r.start) * 1000 for r in result.records)
        by_size = {}
        for c, (label, _) in enumerate(mix.classes):
            xs = sorted((r.end - r.start) * 1000 for r in result.records if r.class_idx == c)
            if xs:
                by_size[label] = round(percentile(xs, 0.5), 1)
        wall = result.wall_s
        return Phase(
            profile=self.profile.name, variant=v.key, rep=rep, sender="python", messages=n, wall_s=wall,
            msgs_per_s=n / wall,
            drain_s=drain_s, p50_ms=percentile(lat, 0.5), p90_ms=percentile(lat, 0.9),
            p99_ms=percentile(lat, 0.99), max_ms=lat[-1], p50_by_size_ms=by_size,
            milter_cpu_ms_per_msg=cpu * 1000 / n if pid else None,
            milter_peak_rss_mb=peak_mb if pid else None,
            machine_cpu_ms_per_msg=window.busy_jiffies / CLK_TCK * 1000 / n,
            machine_busy_pct=window.busy_pct,
            sender_cpu_ms_per_msg=result.sender_cpu_s * 1000 / n,
            other_load_pct=window.other_pct,
            clamd_cpu_ms_per_msg=clamd_cpu * 1000 / n if clamd_cpu is not None else None,
            infected=infected,
            spamd_cpu_ms_per_msg=spamd_cpu * 1000 / n if spamd_cpu is not None else None,
            spamd_scans=scans, gtube=gtube or 0, repeats=repeats or 0,
        )

    def run_smtp_source(self, v: Variant, n: int, rep: int) -> Phase:
        """The same mix with Postfix's C load generator: one batch per size class, one after
        the other, each at the full concurrency (smtp-source sends one size per run)."""
        self.check_alive()
        counts = [n * share // 100 for _, _, share in sender.SIZE_MIX]
        counts[0] += n - sum(counts)
        passed_before = self.passed_lines(v)
        window = CpuWindow(self.master_sessions())
        t0 = time.monotonic()
        for (label, size, _), count in zip(sender.SIZE_MIX, counts):
            if not count:
                continue
            # -l is the body length; smtp-source's own header section is about 150 bytes.
            argv = [SMTP_SOURCE, "-s", str(min(self.args.concurrency, count)), "-m", str(count),
                    "-l", str(size - 150), "-N", "-M", sender.HELO_NAME,
                    "-f", f"source@{sender.SENDER_DOMAIN}", "-t", f"user@{sender.RCPT_DOMAIN}",
                    f"{LOOPBACK}:{v.port}"]
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=self.phase_timeout(count),
                                      preexec_fn=die_with_parent)
            except subprocess.TimeoutExpired:
                raise RunFailed(f"{v.key}: smtp-source ({label}) did not finish in time") from None
            if proc.returncode != 0:
                raise RunFailed(f"{v.key}: smtp-source ({label}) exited {proc.returncode}: "
                                f"{proc.stderr.decode(errors='replace').strip()[:1000]}")
        wall = time.monotonic() - t0
        window.stop()
        last = time.monotonic()
        self.wait_delivered(v, n, self.drain_timeout(n))
        self.check_passed(v, passed_before, n)
        return Phase(profile=self.profile.name, variant=v.key, rep=rep, sender="smtp-source", messages=n,
                     wall_s=wall, msgs_per_s=n / wall, drain_s=time.monotonic() - last,
                     machine_cpu_ms_per_msg=window.busy_jiffies / CLK_TCK * 1000 / n,
                     machine_busy_pct=window.busy_pct, other_load_pct=window.other_pct)

    def phase_timeout(self, n: int) -> float:
        # 1 message/s would be 50x slower than a healthy run here: something is stuck.
        return 120.0 + n * 1.0

    def drain_timeout(self, n: int) -> float:
        return 120.0 + n * 0.1

    def run(self) -> list[Phase]:
        a = self.args
        phases: list[Phase] = []
        warmup = warmup_of(a, self.profile)
        if warmup:
            for v in self.variants:
                log(f"{self.profile.name}: warm-up: {v.title}: {warmup} messages")
                self.run_python(v, warmup, rep=-1, seed=0)
        smtp_source_keys = {"none": (), "postfix": ("postfix",),
                            "all": ("postfix", "null", "pymavis")}[a.smtp_source]
        if not self.profile.smtp_source:
            smtp_source_keys = ()
        for rep in range(a.reps):
            k = rep % len(self.variants)
            order = self.variants[k:] + self.variants[:k]
            for v in order:
                p = self.run_python(v, self.messages, rep, seed=a.seed + rep)
                phases.append(p)
                log(f"{self.profile.name}: rep {rep + 1}/{a.reps} {v.title:<30} {p.msgs_per_s:7.1f} msg/s  "
                    f"p50 {p.p50_ms:6.1f} ms  p99 {p.p99_ms:7.1f} ms"
                    + (f"  milter {p.milter_cpu_ms_per_msg:5.2f} ms CPU/msg  "
                       f"peak {p.milter_peak_rss_mb:5.1f} MB" if p.milter_cpu_ms_per_msg is not None else "")
                    + (f"  clamd {p.clamd_cpu_ms_per_msg:5.2f} ms CPU/msg" if p.clamd_cpu_ms_per_msg else "")
                    + f"  machine {p.machine_busy_pct:3.0f}% busy (others {p.other_load_pct:2.0f}%)"
                    f"  drain {p.drain_s:4.1f} s")
                if v.key in smtp_source_keys:
                    q = self.run_smtp_source(v, self.messages, rep)
                    phases.append(q)
                    log(f"{self.profile.name}: rep {rep + 1}/{a.reps} {v.title:<30} {q.msgs_per_s:7.1f} msg/s "
                        "(smtp-source)"
                        f"  machine {q.machine_busy_pct:3.0f}% busy (others {q.other_load_pct:2.0f}%)")
        return phases


# --- report -----------------------------------------------------------------------------

METRICS = (  # key, header, format, better ("high"/"low")
    ("msgs_per_s", "msg/s", "{:.1f}", "high"),
    ("p50_ms", "p50 ms", "{:.1f}", "low"),
    ("p99_ms", "p99 ms", "{:.1f}", "low"),
    ("milter_cpu_ms_per_msg", "milter CPU ms/msg", "{:.2f}", "low"),
    ("milter_peak_rss_mb", "milter peak RSS MB", "{:.1f}", "low"),
)


def paired_ratio(phases: list[Phase], variant: str, base: str, key: str = "msgs_per_s") -> float:
    """The median over repetitions of variant/base, each repetition's figures against each other."""
    by = {(p.variant, p.rep): getattr(p, key) for p in phases if p.sender == "python"}
    return statistics.median(by[(variant, rep)] / by[(base, rep)] for v, rep in by if v == variant)


def medians(phases: list[Phase], variant: str, sender_name: str = "python") -> dict:
    rows = [p for p in phases if p.variant == variant and p.sender == sender_name]
    out = {}
    for key in ("msgs_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "milter_cpu_ms_per_msg",
                "milter_peak_rss_mb", "machine_cpu_ms_per_msg", "machine_busy_pct",
                "sender_cpu_ms_per_msg", "drain_s", "clamd_cpu_ms_per_msg", "spamd_cpu_ms_per_msg",
                "spamd_scans"):
        values = [getattr(p, key) for p in rows if getattr(p, key) is not None]
        out[key] = statistics.median(values) if values else None
    out["reps"] = len(rows)
    return out


def warmup_of(args, profile: Profile) -> int:
    """Warm-up messages per variant: --warmup, else the profile's."""
    return profile.warmup if args.warmup is None else args.warmup


def fmt(value, spec="{:.1f}") -> str:
    return "n/a" if value is None else spec.format(value)


def ratio(a, b) -> str:
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}"


def main_table(phases: list[Phase], titles: dict[str, str],
               baselines: tuple[tuple[str, str], ...] = (("null", "x null"),)) -> list[str]:
    """Medians per variant, each metric with its ratio to every baseline variant."""
    med = {k: medians(phases, k) for k in titles}
    head = "| variant | " + " | ".join(" | ".join([h, *(b for _, b in baselines)])
                                       for _, h, _, _ in METRICS) + " |"
    lines = [head, "|---" * (1 + (1 + len(baselines)) * len(METRICS)) + "|"]
    for key, title in titles.items():
        cells = []
        for m, _, spec, _ in METRICS:
            cells += [fmt(med[key][m], spec), *(ratio(med[key][m], med[b][m]) for b, _ in baselines)]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def detail_table(phases: list[Phase], titles: dict[str, str]) -> list[str]:
    clamd = any(p.clamd_cpu_ms_per_msg is not None for p in phases)
    spamd = any(p.spamd_cpu_ms_per_msg is not None for p in phases)
    lines = ["| rep | variant | sender | msg/s | p50 ms | p90 ms | p99 ms | max ms | p50 by class ms "
             "| milter CPU ms/msg | milter peak RSS MB | " + ("clamd CPU ms/msg | " if clamd else "")
             + ("spamd CPU ms/msg | spamd checks | " if spamd else "")
             + "machine CPU ms/msg | machine busy % | sender CPU ms/msg | other load % | drain s |",
             "|---" * (16 + clamd + 2 * spamd) + "|"]
    for p in phases:
        sizes = ", ".join(f"{k}: {v}" for k, v in p.p50_by_size_ms.items()) or "n/a"
        lines.append(
            f"| {p.rep + 1} | {titles[p.variant]} | {p.sender} | {p.msgs_per_s:.1f} | {fmt(p.p50_ms)} "
            f"| {fmt(p.p90_ms)} | {fmt(p.p99_ms)} | {fmt(p.max_ms)} | {sizes} "
            f"| {fmt(p.milter_cpu_ms_per_msg, '{:.2f}')} | {fmt(p.milter_peak_rss_mb)} "
            + (f"| {fmt(p.clamd_cpu_ms_per_msg, '{:.2f}')} " if clamd else "")
            + (f"| {fmt(p.spamd_cpu_ms_per_msg, '{:.1f}')} | {fmt(p.spamd_scans, '{:d}')} " if spamd else "")
            + f"| {p.machine_cpu_ms_per_msg:.2f} | {p.machine_busy_pct:.0f} "
            f"| {fmt(p.sender_cpu_ms_per_msg, '{:.2f}')} | {p.other_load_pct:.0f} | {p.drain_s:.1f} |")
    return lines


@dataclass
class ProfileRun:
    """One profile's results, for the report."""

    profile: Profile
    messages: int
    phases: list[Phase]
    lifetime_peak_mb: dict[str, float]
    passed: dict[str, dict[str, int]]   # variant -> {content category: messages passed}
    duration_s: float
    mix: object
    decode_cost: dict | None = None     # bench/decode_cost.py's JSON (decode profile)
    clamd: dict | None = None           # virus profile: clamd's version, settings, screened corpus
    spamd: dict | None = None           # spam profile: spamd's version, settings, cost by class

    @property
    def titles(self) -> dict[str, str]:
        return dict(self.profile.variants)

    def peak_rss_mb(self, key: str) -> float:
        """The variant's highest peak RSS of the run, warm-up included."""
        return max([p.milter_peak_rss_mb for p in self.phases
                    if p.variant == key and p.milter_peak_rss_mb is not None]
                   + [self.lifetime_peak_mb.get(key, 0.0)])


def disturbed_warning(phases: list[Phase]) -> list[str]:
    disturbed = [p for p in phases if p.other_load_pct > OTHER_LOAD_WARN_PCT]
    if not disturbed:
        return []
    worst = max(p.other_load_pct for p in disturbed)
    return [f"Processes this run did not start used more than {OTHER_LOAD_WARN_PCT:.0f}% of the "
            f"machine in {len(disturbed)} of {len(phases)} phases (up to {worst:.0f}%): the "
            "figures are disturbed; run again on an idle machine."]


def verdicts(run: ProfileRun) -> tuple[list[str], bool, list[str]]:
    """Pass-through profile: (lines about targets, all targets met, warnings about the measurement)."""
    phases = run.phases
    pym, null, alone = (medians(phases, k) for k in ("pymavis", "null", "postfix"))
    peak = run.peak_rss_mb("pymavis")
    tp = pym["msgs_per_s"] / null["msgs_per_s"]
    ok_rss, ok_tp = peak <= TARGET_RSS_MB, tp >= TARGET_THROUGHPUT_RATIO
    lines = [
        f"- pymavis peak RSS {peak:.1f} MB (highest of the run, warm-up included) "
        f"{'<=' if ok_rss else '>'} target {TARGET_RSS_MB:.0f} MB: {'met' if ok_rss else 'MISSED'}",
        f"- pymavis throughput {tp:.2f} x null milter {'>=' if ok_tp else '<'} target "
        f"{TARGET_THROUGHPUT_RATIO:.2f}: {'met' if ok_tp else 'MISSED'}",
    ]
    warnings = []
    if alone["msgs_per_s"] < 1.10 * null["msgs_per_s"]:
        warnings.append(
            f"Postfix alone ({alone['msgs_per_s']:.1f} msg/s) is not clearly faster than with the "
            f"null milter ({null['msgs_per_s']:.1f} msg/s): something other than the milter "
            "(the sender, the disk, the sink) may be limiting every variant.")
    warnings += disturbed_warning(phases)
    for key, py in (("postfix", alone), ("null", null), ("pymavis", pym)):
        src = medians(phases, key, "smtp-source")
        if src["reps"] and src["msgs_per_s"] > SENDER_CHECK_RATIO * py["msgs_per_s"]:
            warnings.append(
                f"{key}: smtp-source got {src['msgs_per_s']:.1f} msg/s through, bench/sender.py "
                f"{py['msgs_per_s']:.1f} (machine {py['machine_busy_pct']:.0f}% busy): the Python "
                "sender's own CPU limits this variant's figure; its smtp-source figure is the "
                "better ceiling.")
    return lines, ok_rss and ok_tp, warnings


def decode_verdicts(run: ProfileRun, pass_through: ProfileRun | None) -> tuple[list[str], bool, list[str]]:
    """Decode profile: the CPU targets from decode_cost.py; the RSS target against pymavis
    with decoding off on the same mix (pymavis passing mail through, as the foundation's
    pass-through profile measured it before pymavis decoded anything)."""
    lines, ok = [], True
    targets = run.decode_cost["targets_ms"]
    for prefix, limit in targets.items():
        rows = [r for r in run.decode_cost["classes"] if r["class"].startswith(prefix)]
        worst = max(rows, key=lambda r: r["mean_ms"])
        met = worst["mean_ms"] <= limit
        ok &= met
        lines.append(f"- decoding a {prefix} message: {worst['mean_ms']:.2f} ms CPU (worst class, "
                     f"{worst['class']}; in process, mean) {'<=' if met else '>'} target {limit:g} ms: "
                     f"{'met' if met else 'MISSED'}")
    peak = run.peak_rss_mb("pymavis")
    off = run.peak_rss_mb("pymavis-nodecode")
    met = peak <= TARGET_DECODE_RSS_FACTOR * off
    ok &= met
    also = ""
    if pass_through is not None:
        pt = pass_through.peak_rss_mb("pymavis")
        also = f"; for information: {peak / pt:.2f} x the pass-through profile's pymavis ({pt:.1f} MB)"
    lines.append(f"- pymavis peak RSS {peak:.1f} MB (decoding on; highest of the run, warm-up included) = "
                 f"{peak / off:.2f} x pymavis with decoding off ({off:.1f} MB, same mix) "
                 f"{'<=' if met else '>'} target {TARGET_DECODE_RSS_FACTOR:g} x: {'met' if met else 'MISSED'}{also}")
    return lines, ok, disturbed_warning(run.phases)


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True).stdout.strip()

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    pym_version = subprocess.run([sys.executable, "-m", "pymavis", "version"], capture_output=True,
                                 text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "milter"))
                                 ).stdout.strip()
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postfix": postfix,
        "pymavis": f"{pym_version}, git {git('rev-parse', '--short', 'HEAD')}{dirty}",
    }


def medians_section(args, run: ProfileRun, parameters: str, target_lines: list[str]) -> list[str]:
    """A profile's section: its parameters (the common ones, then `parameters`), run time,
    the table of medians against the null milter, and its target lines."""
    return [
        f"### {run.profile.title}",
        "",
        f"- Parameters: {run.messages} messages per phase, concurrency {args.concurrency}, {args.reps} "
        f"repetitions (interleaved, order rotated), warm-up {warmup_of(args, run.profile)} messages per variant, "
        f"{parameters}",
        f"- Run time: {run.duration_s / 60:.1f} min",
        "",
        f"Medians of {args.reps} repetitions; \"x null\" is the ratio to the null milter in this run:",
        "",
        *main_table(run.phases, run.titles),
        "",
        "Targets:",
        "",
        *target_lines,
    ]


def render_pass_through(args, run: ProfileRun) -> tuple[list[str], bool, list[str]]:
    phases, titles = run.phases, run.titles
    target_lines, ok, warnings = verdicts(run)
    mix = ", ".join(f"{share}% {label}" for label, _, share in sender.SIZE_MIX)
    out = medians_section(args, run, f"size mix {mix} (seeded shuffle), one recipient, one message per connection; "
                          f"sender bench/sender.py ({args.sender_workers or os.cpu_count()} processes); "
                          f"baseline null milter = tests/harness/nullmilter.py --no-headers; pymavis with the "
                          f"shipped configuration (policies/, state_dir moved to a temp dir)", target_lines)
    if [p for p in phases if p.sender == "smtp-source"]:
        alone = medians(phases, "postfix")["msgs_per_s"]
        rows = {k: medians(phases, k, "smtp-source") for k in titles}
        checks = [f"{titles[k]} {r['msgs_per_s']:.1f} msg/s" for k, r in rows.items() if r["reps"]]
        out += ["", f"Sender check (the same mix sent by smtp-source, per size class one after the "
                f"other at concurrency {args.concurrency}, medians): " + "; ".join(checks)
                + f" (bench/sender.py through Postfix alone: {alone:.1f} msg/s)."]
        if rows["null"]["reps"] and rows["pymavis"]["reps"]:
            out[-1] += (f" smtp-source throughput ratio pymavis / null milter: "
                        f"{rows['pymavis']['msgs_per_s'] / rows['null']['msgs_per_s']:.2f}.")
    return out, ok, warnings


def render_observe(args, run: ProfileRun) -> tuple[list[str], bool, list[str]]:
    """bench/observe.py's targets: full logging's throughput, DKIM's CPU per message. A
    target whose variant was left out (--variants) is reported as not measured, and fails."""
    phases = run.phases
    ran = {p.variant for p in phases}
    base = medians(phases, "pymavis")
    checks = []
    if "pymavis-logging" in ran:
        tp = medians(phases, "pymavis-logging")["msgs_per_s"] / base["msgs_per_s"]
        checks.append((tp >= observe.TARGET_LOGGING_RATIO,
                       f"- full logging (JSON + SQL + metrics): {tp:.2f} x pymavis with logging off (throughput) "
                       f"{'>=' if tp >= observe.TARGET_LOGGING_RATIO else '<'} target "
                       f"{observe.TARGET_LOGGING_RATIO:.2f}"))
    for key, what, target in (("pymavis-verify", "DKIM verify + A-R", observe.TARGET_VERIFY_MS),
                              ("pymavis-sign", "DKIM signing RSA-2048", observe.TARGET_SIGN_MS)):
        if key in ran:
            ms = medians(phases, key)["milter_cpu_ms_per_msg"] - base["milter_cpu_ms_per_msg"]
            checks.append((ms <= target, f"- {what}: {ms:.2f} ms pymavis CPU per message over pymavis as shipped "
                                         f"{'<=' if ms <= target else '>'} target {target:g} ms"))
    missing = [key for key in ("pymavis-logging", "pymavis-verify", "pymavis-sign") if key not in ran]
    if missing:
        checks.append((False, f"- not measured in this run (--variants): {', '.join(missing)}"))
    alone = []
    if "pymavis-logging" in ran:
        alone.append(f"- for information: full logging, paired: "
                     f"{paired_ratio(phases, 'pymavis-logging', 'pymavis'):.2f} x logging off (the median of each "
                     "repetition's own ratio; a machine whose speed drifts during the run moves both variants of "
                     "one repetition alike)")
    for key, what in (("pymavis-json", "JSON events alone"), ("pymavis-sql", "SQL log alone")):
        if key not in ran:
            continue
        one = medians(phases, key)
        alone.append(f"- for information: {what}: {one['msgs_per_s'] / base['msgs_per_s']:.2f} x pymavis with "
                     f"logging off (throughput), {one['milter_cpu_ms_per_msg'] - base['milter_cpu_ms_per_msg']:+.2f} ms "
                     "pymavis CPU per message")
    mix = ", ".join(f"{share}% {label}" for label, _, share in sender.SIZE_MIX)
    out = medians_section(args, run, f"size mix {mix}; variants and method: bench/observe.py",
                          [f"{line}: {'met' if met else 'MISSED'}" if not line.startswith("- not measured")
                           else line for met, line in checks] + alone)
    return out, all(met for met, _ in checks), disturbed_warning(phases)


def render_decode(args, run: ProfileRun, pass_through: ProfileRun | None) -> tuple[list[str], bool, list[str]]:
    phases, titles, mix = run.phases, run.titles, run.mix
    target_lines, ok, warnings = decode_verdicts(run, pass_through)
    classes = ", ".join(f"{c.share}% {c.label}" for c in messages.DECODE_MIX)
    corpus = run.decode_cost.get("corpus") or {}
    left_out = corpus.get("banned", [])
    med = {k: medians(phases, k) for k in titles}
    on, off = med["pymavis"], med["pymavis-nodecode"]
    out = [
        f"### {run.profile.title}",
        "",
        f"- Parameters: {run.messages} messages per phase, concurrency {args.concurrency}, "
        f"{args.reps} repetitions (interleaved, order rotated), warm-up {warmup_of(args, run.profile)} messages per "
        f"variant; mix {classes} (bench/messages.py, generated at run time, seeded shuffle); "
        f"one recipient, one message per connection; sender bench/sender.py "
        f"({args.sender_workers or os.cpu_count()} processes)",
        f"- Corpus share: {len(mix.corpus)} messages of /work/shared/corpus (read in place; of "
        f"{corpus.get('candidates', '?')} candidates by bench/messages.py's selection"
        + (f", left out as banned by the DEFAULT rules: {', '.join(Path(f).name for f in left_out)}"
           if left_out else "") + ")",
        "- Variants: null milter = tests/harness/nullmilter.py --no-headers; pymavis decoding on = "
        "the shipped policies/; decoding off = the same plus "
        + ", ".join(f"`{k}: {v}`" for k, v in DECODING_OFF.items()) + " (the walk never runs)",
        f"- Run time: {run.duration_s / 60:.1f} min (decode_cost.py {run.decode_cost['elapsed_s']:.0f} s)",
        "",
        "Decoding CPU per message, in process (bench/decode_cost.py: header check + decode.walk + "
        "banned rules, time.process_time, one thread):",
        "",
        *decode_table(run.decode_cost),
        "",
        f"Through Postfix, medians of {args.reps} repetitions; \"x null\" is the ratio to the null "
        "milter, \"x off\" to pymavis with decoding off, in this run:",
        "",
        *main_table(phases, titles, (("null", "x null"), ("pymavis-nodecode", "x off"))),
        "",
    ]
    if on["milter_cpu_ms_per_msg"] is not None and off["milter_cpu_ms_per_msg"] is not None:
        out.append(f"- Decoding through Postfix: pymavis CPU {on['milter_cpu_ms_per_msg']:.2f} ms/msg with "
                   f"decoding, {off['milter_cpu_ms_per_msg']:.2f} without: "
                   f"{on['milter_cpu_ms_per_msg'] - off['milter_cpu_ms_per_msg']:.2f} ms per message of the mix.")
    if pass_through is not None:
        pt = medians(pass_through.phases, "pymavis")
        pt_peak, peak = pass_through.peak_rss_mb("pymavis"), run.peak_rss_mb("pymavis")
        out.append(f"- Against the pass-through profile of this run (pymavis, its mix of 4-256 KB "
                   f"messages): msg/s {on['msgs_per_s']:.1f} / {pt['msgs_per_s']:.1f} = "
                   f"{ratio(on['msgs_per_s'], pt['msgs_per_s'])}; CPU ms/msg "
                   f"{fmt(on['milter_cpu_ms_per_msg'], '{:.2f}')} / "
                   f"{fmt(pt['milter_cpu_ms_per_msg'], '{:.2f}')} = "
                   f"{ratio(on['milter_cpu_ms_per_msg'], pt['milter_cpu_ms_per_msg'])}; peak RSS "
                   f"{peak:.1f} / {pt_peak:.1f} MB = {ratio(peak, pt_peak)}.")
    passed = "; ".join(f"{titles[k]}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
                       for k, counts in run.passed.items() if counts)
    out += [f"- Messages passed by content category (whole run, warm-up included): {passed}.", "",
            "Targets:", "", *target_lines]
    return out, ok, warnings


def decode_table(result: dict) -> list[str]:
    lines = ["| class | bytes | parts | header ms | walk ms | banned ms | total ms (mean) | median ms | max ms "
             "| target ms |", "|---" * 10 + "|"]
    for r in result["classes"]:
        t = r["target_ms"]
        verdict = "" if t is None else f"{t:g}: {'met' if r['mean_ms'] <= t else 'MISSED'}"
        lines.append(f"| {r['class']} | {r['bytes']:,} | {r['parts']} | {r['header_ms']:.2f} | {r['walk_ms']:.2f} "
                     f"| {r['banned_ms']:.2f} | {r['mean_ms']:.2f} | {r['median_ms']:.2f} | {r['max_ms']:.2f} "
                     f"| {verdict} |")
    c = result.get("corpus")
    if c and c["mean_ms"] is not None:
        lines.append(f"| corpus, {c['reps']} messages once each | {c['bytes']:,} (mean) | | | | "
                     f"| {c['mean_ms']:.2f} | {c['median_ms']:.2f} | {c['max_ms']:.2f} | |")
    return lines


def virus_verdicts(run: ProfileRun) -> tuple[list[str], bool, list[str]]:
    """Virus profile: pymavis with clamd (zFILDES, as a unix-socket clamd is configured)
    against Postfix alone, same run."""
    raw = medians(run.phases, "postfix")["msgs_per_s"]
    fildes = medians(run.phases, "pymavis-fildes")["msgs_per_s"]
    r = fildes / raw
    met = r >= TARGET_VIRUS_RATIO
    lines = [f"- pymavis with decoding, banned rules and clamd (zFILDES) {fildes:.1f} msg/s = {r:.2f} x Postfix "
             f"alone ({raw:.1f} msg/s) {'>=' if met else '<'} target {TARGET_VIRUS_RATIO:.2f} x: "
             f"{'met' if met else 'MISSED'} (amavisd-new with decoding + clamd: about {AMAVIS_VIRUS_RATIO:.2f} x "
             "on this kind of machine, per the issue; not measured here)"]
    return lines, met, disturbed_warning(run.phases)


def clamd_cost_table(cost: list[dict], decode_cost: dict | None) -> list[str]:
    """virus.clamd_cost's rows, with each class's part of the mix's clamd CPU (share x CPU)
    and, when the decode profile ran, pymavis' decoding CPU of the same class."""
    decoding = {r["class"]: r["mean_ms"] for r in (decode_cost or {}).get("classes", [])}
    if decode_cost and (decode_cost.get("corpus") or {}).get("mean_ms") is not None:
        decoding["corpus"] = decode_cost["corpus"]["mean_ms"]
    mean = sum(r["share"] * r["clamd_cpu_ms"] for r in cost) / 100
    lines = ["| class | share % | bytes (mean) | scans | clamd CPU ms/msg | wall ms/msg | part of the mix's clamd CPU "
             + ("| pymavis decoding ms/msg " if decode_cost else "") + "|",
             "|---" * (8 if decode_cost else 7) + "|"]
    for r in cost:
        part = r["share"] * r["clamd_cpu_ms"] / 100
        lines.append(f"| {r['class']} | {r['share']} | {r['bytes']:,} | {r['n']} | {r['clamd_cpu_ms']:.2f} "
                     f"| {r['wall_ms']:.2f} | {part:.2f} ms ({100 * part / mean if mean else 0:.0f}%) "
                     + (f"| {fmt(decoding.get(r['class']), '{:.2f}')} " if decode_cost else "") + "|")
    lines.append(f"| mix (weighted by share) | 100 | | | {mean:.2f} | | {mean:.2f} ms "
                 + (f"| {sum(r['share'] * decoding[r['class']] for r in cost if r['class'] in decoding) / 100:.2f} "
                    "(classes measured) " if decode_cost else "") + "|")
    return lines


def render_virus(args, run: ProfileRun, decode: ProfileRun | None = None) -> tuple[list[str], bool, list[str]]:
    phases, titles, mix, clamd = run.phases, run.titles, run.mix, run.clamd
    decode_cost = decode.decode_cost if decode is not None else None
    target_lines, ok, warnings = virus_verdicts(run)
    med = {k: medians(phases, k) for k in titles}
    raw, null, fil, ins, par, alone = (med[k] for k in ("postfix", "null", "pymavis-fildes", "pymavis-instream",
                                                         "pymavis-parts", "clamd"))
    classes = ", ".join(f"{c.share}% {c.label}" for c in mix.mix)
    infected_share = sum(c.share for c in mix.mix if c.virus)
    per_phase = sorted({p.infected for p in phases if p.rep >= 0})
    rows = ["| variant | msg/s | x Postfix alone | x null milter | x clamd alone | p50 ms | p99 ms "
            "| pymavis CPU ms/msg | clamd CPU ms/msg | machine CPU ms/msg | machine busy % | pymavis peak RSS MB |",
            "|---" * 12 + "|"]
    for key, title in titles.items():
        m = med[key]
        rows.append(f"| {title} | {m['msgs_per_s']:.1f} | {ratio(m['msgs_per_s'], raw['msgs_per_s'])} "
                    f"| {ratio(m['msgs_per_s'], null['msgs_per_s'])} | {ratio(m['msgs_per_s'], alone['msgs_per_s'])} "
                    f"| {fmt(m['p50_ms'])} | {fmt(m['p99_ms'])} | {fmt(m['milter_cpu_ms_per_msg'], '{:.2f}')} "
                    f"| {fmt(m['clamd_cpu_ms_per_msg'], '{:.2f}')} | {m['machine_cpu_ms_per_msg']:.2f} "
                    f"| {m['machine_busy_pct']:.0f} | "
                    + (f"{run.peak_rss_mb(key):.1f}" if key.startswith("pymavis") else "n/a") + " |")

    def split(m: dict, milter: str = "pymavis") -> str:
        rest = m["machine_cpu_ms_per_msg"] - (m["milter_cpu_ms_per_msg"] or 0) - (m["clamd_cpu_ms_per_msg"] or 0)
        return (f"machine {m['machine_cpu_ms_per_msg']:.2f} = {milter} {fmt(m['milter_cpu_ms_per_msg'], '{:.2f}')} "
                f"+ clamd {fmt(m['clamd_cpu_ms_per_msg'], '{:.2f}')} + the rest {rest:.2f} (Postfix, sink, sender)")

    cores = os.cpu_count() or 1
    passed = "; ".join(f"{titles[k]}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
                       for k, counts in run.passed.items() if counts)
    out = [
        f"### {run.profile.title}",
        "",
        f"- Parameters: {run.messages} messages per phase, concurrency {args.concurrency}, {args.reps} "
        f"repetitions (interleaved, order rotated), warm-up {warmup_of(args, run.profile)} messages per variant; "
        f"mix {classes} (bench/messages.py VIRUS_MIX, generated at run time, seeded shuffle): {infected_share}% infected "
        f"({', '.join(str(n) for n in per_phase)} messages per phase); one recipient, one message per "
        f"connection; sender bench/sender.py ({args.sender_workers or cores} processes)",
        f"- Corpus share: {len(mix.corpus)} messages of /work/shared/corpus (bench/messages.py's selection"
        + (f"; left out, clamd reported something in them: {'; '.join(clamd['left_out'])}" if clamd["left_out"]
           else "; clamd reported nothing in any") + ")",
        f"- clamd: {clamd['version']}, the test database of tests/harness/clamd.py (2 signatures: EICAR as a "
        "body signature, the md5 of clamav-testfiles' clam.exe; not ClamAV's official database, see "
        f"bench/README.md), {', '.join(f'{k} {v}' for k, v in clamd['settings'].items())}; reached on its "
        "unix socket; its temp files (zINSTREAM's spool, extracted parts) in the run's temp dir on "
        f"{clamd['tmp_fs']}",
        "- Variants: pymavis = the shipped policies/ plus `av_scanners: " + clamd["scanners_example"]
        + "` (method `fildes`, `instream` or `parts`: each decoded part by zINSTREAM) and " + ", ".join(f"`{k}: {v}`" for k, v in virus.POLICY.items())
        + " (infected mail is delivered tagged, so no message is lost; every check still runs); null milter = "
        "tests/harness/nullmilter.py --no-headers; clamd alone = our ClamdClient (milter/pymavis/clamd.py) "
        "streaming each message's bytes with zINSTREAM from bench/sender.py's worker processes and threads at "
        "the same concurrency, no Postfix, every verdict checked (bench/virus.py)",
        f"- Run time: {run.duration_s / 60:.1f} min",
        "",
        "clamd's CPU per message by class, one scan at a time before the phases (bench/virus.py clamd_cost, "
        "zINSTREAM, clamd's utime+stime from /proc)"
        + ("; pymavis' decoding in process from this run's decode profile (bench/decode_cost.py)" if decode_cost else "")
        + ":",
        "",
        *clamd_cost_table(clamd["cost"], decode_cost),
        "",
        f"Medians of {args.reps} repetitions, same run; for clamd alone msg/s is scans/s, latency one scan, "
        "machine CPU includes the client:",
        "",
        *rows,
        "",
        f"- pymavis (zFILDES) / Postfix alone {ratio(fil['msgs_per_s'], raw['msgs_per_s'])}; / null milter "
        f"{ratio(fil['msgs_per_s'], null['msgs_per_s'])}; / clamd alone {ratio(fil['msgs_per_s'], alone['msgs_per_s'])}. "
        f"clamd alone / Postfix alone {ratio(alone['msgs_per_s'], raw['msgs_per_s'])}: the ceiling for any design "
        "that hands every message to clamd on these cores, before Postfix and the milter take their share.",
        f"- zINSTREAM / zFILDES: throughput {ratio(ins['msgs_per_s'], fil['msgs_per_s'])} "
        f"({ins['msgs_per_s']:.1f} / {fil['msgs_per_s']:.1f} msg/s), p50 {fmt(ins['p50_ms'])} / {fmt(fil['p50_ms'])} ms, "
        f"p99 {fmt(ins['p99_ms'])} / {fmt(fil['p99_ms'])} ms, pymavis CPU {fmt(ins['milter_cpu_ms_per_msg'], '{:.2f}')} / "
        f"{fmt(fil['milter_cpu_ms_per_msg'], '{:.2f}')} ms/msg, clamd CPU {fmt(ins['clamd_cpu_ms_per_msg'], '{:.2f}')} / "
        f"{fmt(fil['clamd_cpu_ms_per_msg'], '{:.2f}')} ms/msg.",
        f"- parts / zFILDES: throughput {ratio(par['msgs_per_s'], fil['msgs_per_s'])} "
        f"({par['msgs_per_s']:.1f} / {fil['msgs_per_s']:.1f} msg/s), p50 {fmt(par['p50_ms'])} / {fmt(fil['p50_ms'])} ms, "
        f"p99 {fmt(par['p99_ms'])} / {fmt(fil['p99_ms'])} ms, pymavis CPU {fmt(par['milter_cpu_ms_per_msg'], '{:.2f}')} / "
        f"{fmt(fil['milter_cpu_ms_per_msg'], '{:.2f}')} ms/msg, clamd CPU {fmt(par['clamd_cpu_ms_per_msg'], '{:.2f}')} / "
        f"{fmt(fil['clamd_cpu_ms_per_msg'], '{:.2f}')} ms/msg.",
        f"- CPU per message, ms (medians): Postfix alone: machine {raw['machine_cpu_ms_per_msg']:.2f}; + null milter: "
        f"{split(null, 'milter')}; + pymavis, zFILDES: {split(fil)}; zINSTREAM: {split(ins)}; parts: {split(par)}; "
        f"clamd alone: clamd "
        f"{fmt(alone['clamd_cpu_ms_per_msg'], '{:.2f}')} + client {fmt(alone['sender_cpu_ms_per_msg'], '{:.2f}')} "
        f"(machine {alone['machine_cpu_ms_per_msg']:.2f}). {cores} cores at {fil['machine_cpu_ms_per_msg']:.2f} ms "
        f"per message allow at most {cores * 1000 / fil['machine_cpu_ms_per_msg']:.0f} msg/s with pymavis and clamd.",
        f"- Messages passed by content category (whole run, warm-up included): {passed}.",
        "",
        "Targets:",
        "",
        *target_lines,
    ]
    return out, ok, warnings


def spam_verdicts(args, run: ProfileRun) -> tuple[list[str], bool, list[str]]:
    """Spam profile: pymavis + spamd against spamd alone on the same stream (cache off;
    MIRV stream, cache on), medians of the same run; pymavis' peak RSS."""
    med = {k: medians(run.phases, k) for k in run.titles}
    lines, ok = [], True
    for key, base, target, what in (
            ("pymavis-spamd", "spamd", TARGET_SPAM_RATIO, "pymavis + spamd (cache off)"),
            ("pymavis-mirv", "spamd-mirv", TARGET_MIRV_RATIO, "pymavis + spamd (cache on), MIRV stream")):
        a, b = med[key]["msgs_per_s"], med[base]["msgs_per_s"]
        r = a / b
        met = r >= target
        ok &= met
        lines.append(f"- {what} {a:.2f} msg/s = {r:.2f} x spamd alone on the same stream ({b:.2f} msg/s) "
                     f"{'>=' if met else '<'} target {target:.2f} x: {'met' if met else 'MISSED'}"
                     + (f" (amavisd-new with embedded SpamAssassin: about {AMAVIS_SPAM_RATIO:.1f} x spamd alone "
                        "on this kind of machine, per the issue; not measured here)" if key == "pymavis-spamd" else ""))
    peak = max(run.peak_rss_mb("pymavis-spamd"), run.peak_rss_mb("pymavis-mirv"))
    met = peak <= TARGET_SPAM_RSS_MB
    ok &= met
    lines.append(f"- pymavis peak RSS {peak:.1f} MB (highest of both pymavis variants, warm-up included; spamd not "
                 f"counted) {'<=' if met else '>'} target {TARGET_SPAM_RSS_MB:.0f} MB at concurrency "
                 f"{TARGET_SPAM_CONCURRENCY}: {'met' if met else 'MISSED'}"
                 + ("" if args.concurrency == TARGET_SPAM_CONCURRENCY else
                    f" (NOTE: this run used concurrency {args.concurrency})"))
    warnings = disturbed_warning(run.phases)
    return lines, ok, warnings


def spamd_cost_table(cost: list[dict]) -> list[str]:
    mean = sum(r["share"] * r["spamd_cpu_ms"] for r in cost) / 100
    lines = ["| class | share % | bytes spamd gets (mean) | requests | spamd CPU ms/msg | wall ms/msg | score "
             "| part of the mix's spamd CPU |", "|---" * 8 + "|"]
    for r in cost:
        part = r["share"] * r["spamd_cpu_ms"] / 100
        score = (f"{r['score_min']:g}" if r["score_min"] == r["score_max"]
                 else f"{r['score_min']:g} .. {r['score_max']:g}")
        lines.append(f"| {r['class']} | {r['share']} | {r['bytes']:,} | {r['n']} | {r['spamd_cpu_ms']:.0f} "
                     f"| {r['wall_ms']:.0f} | {score} | {part:.0f} ms ({100 * part / mean if mean else 0:.0f}%) |")
    lines.append(f"| mix (weighted by share) | 100 | | | {mean:.0f} | | | {mean:.0f} ms |")
    return lines


def mirv_ceiling(med: dict, cores: int) -> str:
    """The MIRV stream's ceiling on these cores with a perfect cache: spamd checks only the
    (1 - share) new messages (at spamd alone's CPU per message on that stream), and every
    message still costs what pymavis, Postfix, the sink and the sender cost besides spamd
    (cache off, machine CPU minus spamd's)."""
    off, base = med["pymavis-spamd"], med["spamd-mirv"]
    if not (off["spamd_cpu_ms_per_msg"] and base["spamd_cpu_ms_per_msg"]):
        return ""
    rest = off["machine_cpu_ms_per_msg"] - off["spamd_cpu_ms_per_msg"]
    ms = (1 - spam.MIRV_SHARE / 100) * base["spamd_cpu_ms_per_msg"] + rest
    rate = cores * 1000 / ms
    return (f"On {cores} shared cores the ceiling is lower: {1 - spam.MIRV_SHARE / 100:.2f} x spamd "
            f"{base['spamd_cpu_ms_per_msg']:.0f} ms + {rest:.0f} ms for everything else per message = {ms:.0f} ms, "
            f"at most {rate:.2f} msg/s = {rate / base['msgs_per_s']:.2f} x spamd alone on the MIRV stream, "
            "even if the cache answered every repeat for free.")


def render_spam(args, run: ProfileRun) -> tuple[list[str], bool, list[str]]:
    phases, titles, mix, info = run.phases, run.titles, run.mix, run.spamd
    target_lines, ok, warnings = spam_verdicts(args, run)
    med = {k: medians(phases, k) for k in titles}
    base_of = {"spamd": "spamd", "pymavis-spamd": "spamd", "spamd-mirv": "spamd-mirv", "pymavis-mirv": "spamd-mirv"}
    measured = [p for p in phases if p.rep >= 0]
    gtube = sorted({p.gtube for p in measured})
    repeats = sorted({p.repeats for p in measured if p.variant.endswith("-mirv")})
    rows = ["| variant | msg/s | x spamd alone, same stream | x spamd alone | p50 ms | p99 ms | pymavis CPU ms/msg "
            "| spamd CPU ms/msg | spamd checks per phase | machine CPU ms/msg | machine busy % | pymavis peak RSS MB |",
            "|---" * 12 + "|"]
    for key, title in titles.items():
        m = med[key]
        rows.append(f"| {title} | {m['msgs_per_s']:.2f} | {ratio(m['msgs_per_s'], med[base_of[key]]['msgs_per_s'])} "
                    f"| {ratio(m['msgs_per_s'], med['spamd']['msgs_per_s'])} | {fmt(m['p50_ms'])} | {fmt(m['p99_ms'])} "
                    f"| {fmt(m['milter_cpu_ms_per_msg'], '{:.2f}')} | {fmt(m['spamd_cpu_ms_per_msg'], '{:.0f}')} "
                    f"| {fmt(m['spamd_scans'], '{:.0f}')} of {run.messages} | {m['machine_cpu_ms_per_msg']:.0f} "
                    f"| {m['machine_busy_pct']:.0f} | "
                    + (f"{run.peak_rss_mb(key):.1f}" if key.startswith("pymavis") else "n/a") + " |")

    def per_rep(key: str, base: str) -> str:
        out = []
        for rep in sorted({p.rep for p in measured}):
            a = [p.msgs_per_s for p in measured if p.rep == rep and p.variant == key]
            b = [p.msgs_per_s for p in measured if p.rep == rep and p.variant == base]
            if a and b:
                out.append(f"{a[0] / b[0]:.2f}")
        return ", ".join(out)

    def split(m: dict) -> str:
        rest = m["machine_cpu_ms_per_msg"] - (m["milter_cpu_ms_per_msg"] or 0) - (m["spamd_cpu_ms_per_msg"] or 0)
        return (f"machine {m['machine_cpu_ms_per_msg']:.0f} = spamd {fmt(m['spamd_cpu_ms_per_msg'], '{:.0f}')} + pymavis "
                f"{fmt(m['milter_cpu_ms_per_msg'], '{:.1f}')} + the rest {rest:.1f}")

    hits = [p.messages - p.spamd_scans for p in measured if p.variant == "pymavis-mirv" and p.spamd_scans is not None]
    cores = os.cpu_count() or 1
    passed = "; ".join(f"{titles[k]}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
                       for k, counts in run.passed.items() if counts)
    classes = ", ".join(f"{c.share}% {c.label}" for c in mix.mix)
    pools = info["pools"]
    out = [
        f"### {run.profile.title}",
        "",
        f"- Parameters: {run.messages} messages per phase, concurrency {args.concurrency}, {args.reps} repetitions "
        f"(interleaved, order rotated), warm-up {warmup_of(args, run.profile)} messages per variant; mix {classes} "
        f"(bench/messages.py SPAM_MIX, generated at run time, seeded shuffle; {', '.join(map(str, gtube))} GTUBE messages per phase); "
        f"the MIRV stream: the same with {spam.MIRV_SHARE}% of the messages ({', '.join(map(str, repeats))} per phase) "
        f"repeating an earlier message of the phase byte for byte, at least {spam.REPEAT_GAP} messages later, to "
        f"another recipient (bench/spam.py MirvMix); one recipient, one message per connection; sender "
        f"bench/sender.py ({args.sender_workers or cores} processes)",
        f"- Corpus shares (read in place, each message with a unique `X-Bench-Msg:` field on top): corpus "
        f"{pools.get('corpus', 0)} messages of /work/shared/corpus (bench/messages.py's selection), spam "
        f"{pools.get('spam', 0)} and ham {pools.get('ham', 0)} of SpamAssassin's t/data (messages.sa_corpus; ham "
        "includes the package's sample-nonspam.txt); GTUBE = sample-spam.txt's body with our headers",
        f"- spamd: {info['version']}, Debian's rules, no network tests, one for the profile (tests/harness/spamd.py, "
        f"started in {info['startup_s']:.1f} s), reached on its unix socket; `{info['args']}`"
        + (f" (bench/spam.py SPAMD_ARGS: {' '.join(info['extra_args'])})" if info["extra_args"] else
           " (the harness's command line, unchanged)"),
        "- Variants: spamd alone = our SpamdClient (milter/pymavis/spamd.py) asking SYMBOLS with the bytes pymavis "
        "gives spamd (envelope lines on top, X-Spam-* removed, cut at 400 KiB) from bench/sender.py's worker "
        "processes and threads at the same concurrency, no Postfix; pymavis = the shipped policies/ plus "
        f"`spam_scanners: {info['scanners_example']}`, " + ", ".join(f"`{k}: {v}`" for k, v in spam.POLICY.items())
        + f" and `spam_cache: {spam.cache_yaml(0)}` (cache off: every message goes to spamd) or "
        f"`{spam.cache_yaml(spam.CACHE_TTL_S)}` (cache on, as shipped)",
        f"- Run time: {run.duration_s / 60:.1f} min",
        "",
        "spamd's CPU per message by class, one request at a time before the phases (bench/spam.py spamd_cost, "
        "SYMBOLS, spamd's master and children from /proc):",
        "",
        *spamd_cost_table(info["cost"]),
        "",
        f"Medians of {args.reps} repetitions, same run; for spamd alone latency is one SYMBOLS request "
        "(connect to answer), machine CPU includes the client:",
        "",
        *rows,
        "",
        f"- pymavis + spamd (cache off) / spamd alone per repetition: {per_rep('pymavis-spamd', 'spamd')}; "
        f"MIRV stream, pymavis with the cache / spamd alone: {per_rep('pymavis-mirv', 'spamd-mirv')}.",
        f"- Cache (MIRV stream, cache on): spamd checked "
        f"{', '.join(str(p.spamd_scans) for p in measured if p.variant == 'pymavis-mirv')} "
        f"of {run.messages} messages per phase (spamd's \"result:\" lines), so the cache answered "
        f"{', '.join(map(str, hits))} of the {', '.join(map(str, repeats))} repeats; the best any cache can do "
        f"here is 1 / (1 - {spam.MIRV_SHARE / 100:.2f}) = {1 / (1 - spam.MIRV_SHARE / 100):.2f} x spamd alone "
        "if spamd were the only cost. " + mirv_ceiling(med, cores),
        f"- CPU per message, ms (medians): spamd alone: spamd {fmt(med['spamd']['spamd_cpu_ms_per_msg'], '{:.0f}')} + "
        f"client {fmt(med['spamd']['sender_cpu_ms_per_msg'], '{:.2f}')} (machine "
        f"{med['spamd']['machine_cpu_ms_per_msg']:.0f}); + pymavis + spamd, cache off: {split(med['pymavis-spamd'])} "
        f"(Postfix, sink, sender); MIRV, spamd alone: machine {med['spamd-mirv']['machine_cpu_ms_per_msg']:.0f}; "
        f"MIRV, pymavis with the cache: {split(med['pymavis-mirv'])}. {cores} cores at "
        f"{med['pymavis-spamd']['machine_cpu_ms_per_msg']:.0f} ms per message allow at most "
        f"{cores * 1000 / med['pymavis-spamd']['machine_cpu_ms_per_msg']:.2f} msg/s with pymavis and spamd.",
        f"- Messages passed by content category (whole run, warm-up included): {passed}.",
        "",
        "Targets:",
        "",
        *target_lines,
    ]
    return out, ok, warnings


def render(args, info: dict, runs: dict[str, ProfileRun], duration_s: float, command: str) -> tuple[str, bool]:
    warnings: list[str] = []
    if float(info["background"].split("%")[0]) > BACKGROUND_WARN_PCT:
        warnings.append(f"The machine was not idle before the run ({info['background']}).")
    out = [
        f"## {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
        + (" (diagnostic: milters on unix sockets)" if args.milter_socket == "unix" else ""),
        "",
        f"- Machine: {info['cores']} cores, {info['cpu']}, {info['memory']} RAM, {info['kernel']}, "
        f"Python {info['python']}, Postfix {info['postfix']}; background load: {info['background']}",
        f"- pymavis: {info['pymavis']}",
        f"- Command: `{command}`; profiles: {', '.join(runs)}; milters reached over "
        + ("TCP 127.0.0.1 as contrib/postfix ships" if args.milter_socket == "inet"
           else "unix sockets (DIAGNOSTIC: not the shipped setup)"),
        f"- Run time: {duration_s / 60:.1f} min; every message reached the sink, queues empty after "
        "every phase",
        *[f"- WARNING: {w}" for w in warnings],
        "",
    ]
    ok = True
    details = []
    for name, run in runs.items():
        if name == "decode":
            lines, met, warn = render_decode(args, run, runs.get("pass-through"))
        elif name == "virus":
            lines, met, warn = render_virus(args, run, runs.get("decode"))
        elif name == "spam":
            lines, met, warn = render_spam(args, run)
        elif name == "observe":
            lines, met, warn = render_observe(args, run)
        else:
            lines, met, warn = render_pass_through(args, run)
        ok &= met
        out += [*lines, ""]
        if warn:
            out += ["Warnings:", "", *[f"- {w}" for w in warn], ""]
        details += ["", f"<details><summary>Every phase: {run.profile.title.lower()}</summary>", "",
                    *detail_table(run.phases, run.titles), "", "</details>"]
    out += details[1:] + [""]
    return "\n".join(out), ok


DOCS_HEADER = """# Benchmarks

Produced by `make bench` (bench/run.py; how it works and how to read it: bench/README.md).
Each run appends a section with one part per profile. Pass-through: Postfix alone, Postfix
with the null pymilter milter (the baseline) and Postfix with pymavis in its shipped
configuration. Decode: realistic mail with attachments through the null milter and pymavis
with decoding off and on, plus the CPU of decoding itself per message, in process. Virus:
the same mail with 3% infected through Postfix alone, the null milter and pymavis with
clamd (zFILDES, zINSTREAM and method parts), and clamd alone scanning the same messages. Spam: the same
kind of mail with SpamAssassin's spam and ham through pymavis with spamd, against spamd
alone, also on a stream where 30% of the messages repeat (pymavis' verdict cache). Variants
are measured in the same run, interleaved; figures are medians of the repetitions, ratios
are against the null milter of the same run (decode: also pymavis with decoding off; virus:
also Postfix alone and clamd alone; spam: spamd alone). Latency is one
SMTP transaction as the client sees it (connect to the reply after the final dot); milter
CPU is the milter process's utime+stime per message; peak RSS is the milter process's VmHWM.

"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=("all", *PROFILES), default="all",
                   help="which profile to run (default: all, i.e. pass-through, decode, virus, spam)")
    p.add_argument("--messages", type=int, default=None,
                   help="messages per phase (default: pass-through and decode 2000, virus 1500, spam 200)")
    p.add_argument("--concurrency", type=int, default=20, help="SMTP sessions in parallel (default 20)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, each running every variant (default 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="unmeasured messages per variant before the first repetition (default 200; spam 40)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 150 messages, concurrency 10, 1 repetition, warm-up 20, "
                        "decode_cost.py --quick; no docs")
    p.add_argument("--smtp-source", choices=("none", "postfix", "all"), default="all",
                   help="pass-through profile: also send each phase's load with smtp-source through "
                        "these variants, to check the Python sender (default: all)")
    p.add_argument("--milter-socket", choices=("inet", "unix"), default="inet",
                   help="how Postfix reaches the milters: inet 127.0.0.1:PORT as contrib/postfix "
                        "ships (default), or a unix socket (diagnostic)")
    p.add_argument("--sender-workers", type=int, default=None,
                   help="sender processes (default: one per core)")
    p.add_argument("--seed", type=int, default=1, help="seed of the mix order (default 1)")
    p.add_argument("--clamd-cache", action="store_true",
                   help="virus profile: leave clamd's cache of clean objects on (default off: the mix "
                        "repeats its attachments, real mail rarely does; bench/virus.py)")
    p.add_argument("--variants", metavar="KEY,KEY",
                   help="observe profile: run only these variants (keys of bench/observe.py and null, "
                        "pymavis, which are always run), for more repetitions of one comparison in the "
                        "same time; the targets of the variants left out are reported as not measured")
    p.add_argument("--no-docs", action="store_true", help="do not append to docs/benchmarks.md")
    p.add_argument("--json", metavar="PATH", help="also write every phase's figures to PATH")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, maillogs)")
    p.add_argument("--max-minutes", type=float, default=60.0,
                   help="abort the whole run after this long (default 60)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.concurrency, args.reps = 150, 10, 1
        args.warmup = 20 if args.warmup is None else args.warmup
        args.no_docs = True
    if args.variants is not None:
        if args.profile != "observe":
            p.error("--variants is for --profile observe")
        unknown = set(args.variants.split(",")) - {k for k, _ in OBSERVE.variants}
        if unknown:
            p.error(f"--variants: unknown {', '.join(sorted(unknown))}; from {', '.join(k for k, _ in OBSERVE.variants)}")
    # --warmup unset: the profile's (Profile.warmup)
    for name in ("messages", "concurrency", "reps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def run_decode_cost(args, workdir: Path) -> dict:
    """bench/decode_cost.py in a child process (its libmagic and libarchive stay out of this
    one), before the decode profile's servers start: the machine is idle."""
    out_json = workdir / "decode_cost.json"
    argv = [sys.executable, str(DECODE_COST), "--json", str(out_json)] + (["--quick"] if args.quick else [])
    log("decode: in-process decoding cost (bench/decode_cost.py)")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=DECODE_COST_TIMEOUT_S,
                              preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"bench/decode_cost.py did not finish within {DECODE_COST_TIMEOUT_S:g} s") from None
    (workdir / "decode_cost.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 3) or not out_json.exists():
        raise RunFailed(f"bench/decode_cost.py exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    print(proc.stdout, end="", flush=True)
    return json.loads(out_json.read_text())


def filesystem_of(path: Path) -> str:
    """The type of the file system holding `path` ("ext4", "tmpfs", ...), from /proc/mounts."""
    best, fstype = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


def start_virus_clamd(args, workdir: Path):
    """The virus profile's clamd (started; the caller stops it)."""
    log("virus: starting clamd")
    largest = max([5 * messages.MB * 11 // 10] + [p.stat().st_size for p in messages.corpus_candidates()])
    clamd_dir = workdir / "clamd"
    clamd_dir.mkdir(parents=True, mode=0o755)
    try:
        return virus.start_clamd(clamd_dir, cache=args.clamd_cache, largest_message=largest)
    except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as e:
        raise RunFailed(f"clamd did not start: {e}") from None


def virus_mix(args, clamd) -> tuple[messages.DecodeMix, dict]:
    """The virus profile's mix (corpus screened by clamd) and what the report says about
    clamd, with its CPU per message by class (virus.clamd_cost)."""
    client = virus.ClamdClient(clamd.socket_spec("unix"), timeout=virus.SCAN_TIMEOUT_S)
    try:
        log("virus: screening the corpus share with clamd")
        kept, left_out = virus.screen_corpus(client, messages.corpus_candidates())
        mix = messages.DecodeMix(kept, seed=args.seed, mix=messages.VIRUS_MIX)
        log("virus: clamd's CPU per message by class, one scan at a time")
        cost = virus.clamd_cost(client, clamd.proc.pid, mix, *((10, 2) if args.quick else ()))
        version = client.version()
    except (virus.ClamdError, OSError, ValueError) as e:
        raise RunFailed(f"clamd: {e}\n{clamd.log_text()[-2000:]}") from None
    return mix, {"version": version, "settings": {k: v for k, v in clamd.settings.items()
                                                  if k in ("MaxThreads", "StreamMaxLength", "DisableCache")},
                 "left_out": left_out, "tmp_fs": filesystem_of(Path(clamd.tmp_dir)), "cost": cost,
                 "scanners_example": virus.scanners_yaml("unix:/path/clamd.sock", "fildes")}


def start_spam_spamd(workdir: Path):
    """The spam profile's spamd (started; the caller stops it)."""
    log("spam: starting spamd")
    spamd_dir = workdir / "spamd"
    spamd_dir.mkdir(parents=True, mode=0o755)
    try:
        return spam.start_spamd(spamd_dir)
    except (RuntimeError, TimeoutError, OSError) as e:
        raise RunFailed(f"spamd did not start: {e}") from None


def spam_mix(args, spamd) -> tuple["spam.SpamMix", dict]:
    """The spam profile's mix and what the report says about spamd, with its CPU per
    message by class (spam.spamd_cost)."""
    mix = spam.SpamMix(seed=args.seed)
    client = spam.SpamdClient(spamd.socket_spec("unix"), timeout=spam.SPAMD_TIMEOUT_S)
    try:
        client.ping()
        log("spam: spamd's CPU per message by class, one request at a time")
        cost = spam.spamd_cost(client, spamd.proc.pid, mix, *((2, 3) if args.quick else ()))
    except (spam.SpamdError, OSError, ValueError) as e:
        raise RunFailed(f"spamd: {e}\n{spamd.log_text()[-2000:]}") from None
    version = subprocess.run([spam.SPAMD, "--version"], capture_output=True, text=True).stdout.splitlines()
    return mix, {"version": version[0] if version else "unknown", "args": " ".join(spamd.command()[4:]),
                 "extra_args": list(spam.SPAMD_ARGS), "startup_s": spamd.startup_s, "cost": cost,
                 "pools": {k: len(v) for k, v in mix.pools.items()},
                 "scanners_example": spam.scanners_yaml("unix:/path/spamd.sock")}


def run_profile(args, workdir: Path, profile: Profile) -> ProfileRun:
    started = time.monotonic()
    decode_cost = clamd = clamd_info = spamd = spamd_info = bench = keys = None
    try:
        if profile is DECODE:
            decode_cost = run_decode_cost(args, workdir)
            left_out = set((decode_cost.get("corpus") or {}).get("banned", []))
            corpus = [p for p in messages.corpus_candidates() if str(p) not in left_out]
            mix = messages.DecodeMix(corpus, seed=args.seed)
        elif profile is VIRUS:
            clamd = start_virus_clamd(args, workdir / profile.name)
            mix, clamd_info = virus_mix(args, clamd)
        elif profile is SPAM:
            spamd = start_spam_spamd(workdir / profile.name)
            mix, spamd_info = spam_mix(args, spamd)
        else:
            mix = sender.SizeMix(seed=1)
            if profile.name == OBSERVE.name:
                keys = observe.Keys(workdir / profile.name / "dkim")
        n = args.messages or profile.messages
        bench = Bench(args, workdir / profile.name, profile, mix, n, clamd=clamd, spamd=spamd, keys=keys)
        log(f"{profile.name}: setting up in {bench.workdir}")
        bench.setup()
        phases = bench.run()
        passed = {v.key: bench.passed_categories(v) for v in bench.variants if v.pymavis_log}
    finally:
        log(f"{profile.name}: stopping")
        if bench is not None:
            bench.teardown()
        if clamd is not None:
            try:
                clamd.stop()
            except AssertionError as e:   # the harness's "did not exit after SIGTERM" (then killed)
                print(f"bench: {e}", file=sys.stderr)
        if keys is not None:
            keys.stop()
        if spamd is not None:
            try:
                spamd.stop()
            except (AssertionError, subprocess.TimeoutExpired) as e:
                print(f"bench: stopping spamd: {e}", file=sys.stderr)
    return ProfileRun(profile, n, phases, bench.lifetime_peak_mb, passed, time.monotonic() - started,
                      mix, decode_cost, clamd_info, spamd_info)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (private Postfix instances)", file=sys.stderr)
        return 1
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not os.access(tool, os.X_OK):
            print(f"bench: {tool} not found (Debian package postfix)", file=sys.stderr)
            return 1

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(signum, frame):
        raise OutOfTime(f"the run took longer than --max-minutes {args.max_minutes:g}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.max_minutes * 60))

    command = "make bench" if os.environ.get("MAKELEVEL") and len(sys.argv) == 1 else \
        shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    workdir = Path(tempfile.mkdtemp(prefix="pymavis-bench-", dir="/tmp"))
    workdir.chmod(0o755)   # the postfix user must reach the instances' directories
    started = time.monotonic()
    profiles = list(PROFILES.values()) if args.profile == "all" else [PROFILES[args.profile]]
    if args.variants is not None:   # observe only (parse_args): the baselines and the chosen ones
        keep = {"null", "pymavis", *args.variants.split(",")}
        profiles = [replace(OBSERVE, variants=tuple(v for v in OBSERVE.variants if v[0] in keep))]
    background = background_busy_pct()
    log(f"background load before the run: {background:.0f}% of all cores busy")
    if background > BACKGROUND_WARN_PCT:
        log(f"WARNING: the machine is not idle ({background:.0f}% busy): figures will be noisy "
            "and lower than on a quiet machine")
    runs: dict[str, ProfileRun] = {}
    try:
        for profile in profiles:
            runs[profile.name] = run_profile(args, workdir, profile)
    except (RunFailed, OutOfTime, KeyboardInterrupt, TimeoutError) as e:
        print(f"\nbench: FAILED RUN, no figures: {e}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        signal.alarm(0)
        if args.keep:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    duration = time.monotonic() - started
    info = machine_info()
    info["background"] = f"{background:.0f}% of all cores busy in the 3 s before the run"
    text, ok = render(args, info, runs, duration, command)
    print()
    print(text)
    if not args.no_docs:
        new = not DOCS.exists()
        with open(DOCS, "a") as fh:
            if new:
                fh.write(DOCS_HEADER)
            fh.write(text + "\n")
        log(f"appended to {DOCS.relative_to(REPO)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "args": vars(args),
            "profiles": {name: {"messages": r.messages, "phases": [asdict(p) for p in r.phases],
                                "peak_rss_mb": {k: r.peak_rss_mb(k) for k in r.lifetime_peak_mb},
                                "passed": r.passed, "decode_cost": r.decode_cost, "clamd": r.clamd,
                                "spamd": r.spamd}
                         for name, r in runs.items()}}, indent=1))
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
