"""The milter adapter: the only module that imports pymilter (`Milter`, `milter`).

Callbacks only collect facts into a TransactionBuilder; at end-of-message the work runs in
our own ThreadPoolExecutor (Debian's libmilter runs callbacks of one connection on
different threads of its worker pool, and C-to-Python callbacks from those threads are
unsafe; see DEPENDENCIES.md) and the resulting Outcome is applied here, on the callback's
thread, through outcome.apply — the one funnel for replies and edits.

Negotiation: we ask only for the actions outcomes can produce, skip unknown commands (DATA
and end-of-header stay: see SKIPPED_STEPS, and miltertest cannot skip end-of-header), want no reply for header and body chunks, keep
header values' leading space (exact header bytes for later DKIM work), and request our
macros per stage with setsymlist (pymilter's own symlist helpers are broken on Python 3).

Failure: each callback has one deliberate catch-all that logs the traceback under an error
id and answers TEMPFAIL 451 4.3.0 (or ACCEPT where the bank says `on_internal_error:
accept`); an error in a no-reply callback is remembered and answered at end-of-message.

Status: each connection has an entry on App.board (progress.py) whose trail the callbacks
extend (A m r d, then = and the pipeline's D V S Q from the worker, and . after the
answer); the control socket (control.py) answers `pymavis status` from it and `pymavis
stats` from metrics.py's counters. A message whose sender matches `debug_sender` or one of
whose recipients matches `debug_recipient` is logged at debug (log.py), callbacks and worker.

Signals: libmilter's signal thread owns SIGTERM/SIGINT/SIGHUP. SIGUSR1 reloads the
configuration (a waiting thread takes it with sigwait). After SIGTERM, libmilter stops
accepting connections and lets running callbacks finish: we wait up to
`milter.shutdown_grace_s` for end-of-message work in flight, whose answers still reach the
MTA. Sessions between commands are closed by libmilter; the MTA answers those clients per
its milter_default_action (tempfail), so nothing is lost.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid

import Milter
import milter as libmilter

from . import __version__, control, progress, workpool
from . import config as config_mod
from . import decide as decide_mod
from . import log as logmod
from . import outcome as outcome_mod
from . import events, keep, metrics, notices, observe, pipeline, policy as policy_mod, report, sqllog, sqlstore
from .lookups import LookupFailed
from .outcome import Action, Outcome, Reply
from .transaction import Connection, Rcpt, TransactionBuilder, strip_brackets, tmp_dir_for

CONNECT_MACROS = ("{daemon_name}", "{daemon_port}", "{daemon_addr}", "{if_addr}", "{client_addr}",
                  "{client_port}", "{client_name}", "{client_ptr}", "j")
ENVFROM_MACROS = ("i", "{auth_type}", "{auth_authen}", "{auth_ssf}", "{tls_version}", "{cipher}")
EOM_MACROS = ("i",)

# What an Outcome can ask for; derived once, so no action is refused at run time.
WANTED_ACTIONS = (Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT
                  | Milter.QUARANTINE | Milter.SETSYMLIST)
# DATA is not skipped on purpose: when it is, Postfix's DATA-stage macro packet gets no
# answer and its next write waits for a 40 ms delayed ACK (found with strace in bench/).
SKIPPED_STEPS = Milter.P_NOUNKNOWN
NO_REPLY_STEPS = Milter.P_NR_HDR | Milter.P_NR_BODY
OPTIONAL_PROTOCOL = Milter.P_HDR_LEADSPC

_ANSWER = {Action.CONTINUE: Milter.CONTINUE, Action.REJECT: Milter.REJECT,
           Action.DISCARD: Milter.DISCARD, Action.TEMPFAIL: Milter.TEMPFAIL}

# Virus names `pymavis stats` gets at most (it shows --top of them).
VIRUS_NAMES_REPORTED = 100

# Which macro each bank selector needs, and where an admin turns it on.
_SELECTOR_MACROS = {
    "daemon_name_policy": ("{daemon_name}", "Postfix: milter_connect_macros and -o milter_macro_daemon_name=NAME "
                                            "in master.cf; Sendmail: confMILTER_MACROS_CONNECT and Name= in "
                                            "DAEMON_OPTIONS"),
    "interface_policy": ("{daemon_port}", "Postfix: add {daemon_port} to milter_connect_macros; Sendmail: add "
                                          "{daemon_port} to confMILTER_MACROS_CONNECT"),
}


class App:
    """Process-wide state: the current configuration snapshot, the worker pool, counters."""

    def __init__(self, config, config_path: str, *, force_stderr: bool = False):
        self.config = config
        self.config_path = config_path
        self.force_stderr = force_stderr
        s = config.settings["milter"]
        # counts messages waiting for a worker and workers busy (pymavis_pool_*, pymavis status)
        self.executor = workpool.Pool("work", s["workers"], "pymavis-work")
        self.tmp_dir = tmp_dir_for(config.settings["state_dir"])
        self._lock = threading.Lock()
        self._conn_seq = 0
        self.in_flight = 0
        self._idle = threading.Condition(self._lock)
        self.warned_macros: set[str] = set()
        self.board = progress.Board()
        self.started = time.time()

    def next_conn_id(self) -> str:
        with self._lock:
            self._conn_seq += 1
            return f"{os.getpid()}-{self._conn_seq:02d}"

    def begin(self):
        with self._lock:
            self.in_flight += 1

    def end(self):
        with self._lock:
            self.in_flight -= 1
            if self.in_flight <= 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def reload(self):
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            logmod.log.error("reload of %s failed, keeping the running configuration:\n%s",
                             self.config_path, exc)
            return False
        self.config = new
        set_switch_interval(new.settings["milter"])
        logmod.setup(new.settings["log"], force_stderr=self.force_stderr)
        logmod.log.info("configuration reloaded from %s", self.config_path)
        return True

    def status_answer(self) -> dict:
        """The control socket's `status`: every open connection's entry (progress.py)."""
        waiting, busy, workers = self.executor.counts()
        return {"version": __version__, "pid": os.getpid(), "started": self.started,
                "uptime_s": round(time.time() - self.started, 3), "in_flight": self.in_flight,
                "waiting": waiting, "busy": busy, "workers": workers, "entries": self.board.snapshot()}

    def stats_answer(self) -> dict:
        """The control socket's `stats`: the counters since start (metrics.py)."""
        m = metrics.ACTIVE
        if m is None:
            return {"error": "no counters (metrics not started)"}
        return m.stats(VIRUS_NAMES_REPORTED)

    def warn_missing_macro(self, name: str, hint: str):
        with self._lock:
            if name in self.warned_macros:
                return
            self.warned_macros.add(name)
        logmod.log.warning("macro %s never arrived from the MTA but a bank selector needs it; %s", name, hint)


APP: App | None = None


def _guard(stage: str, *, no_reply: bool = False):
    """The adapter's one catch-all: log with an error id, answer TEMPFAIL (or remember it)."""

    def wrap(method):
        def guarded(self, *args):
            try:
                return method(self, *args)
            except Exception:  # noqa: BLE001 - the deliberate catch-all; see module doc
                err_id = uuid.uuid4().hex[:8]
                mail_id = self.mail_id
                if no_reply:
                    self.log.error("internal error %s in %s (mail_id %s), answered at end of message:\n%s",
                                   err_id, stage, mail_id or "-", traceback.format_exc().rstrip())
                    if self.builder is not None:
                        self.builder.failed = f"internal error {err_id} in {stage}"
                    return Milter.NOREPLY if self._no_reply(stage) else Milter.CONTINUE
                answer = outcome_mod.internal_error(mail_id, accept=self._accept_on_error())
                self.log.error("internal error %s in %s (mail_id %s), reply: %s:\n%s", err_id, stage,
                               mail_id or "-", answer.reply or "accept (on_internal_error)",
                               traceback.format_exc().rstrip())
                return self._answer(answer)

        guarded.__name__ = method.__name__
        return guarded

    return wrap


class PymavisMilter(Milter.Base):
    def __init__(self):
        self.app = APP
        self.config = APP.config       # the snapshot this connection keeps
        self.conn: Connection | None = None
        self.conn_id = APP.next_conn_id()
        self.log = logmod.for_context(self.conn_id)
        self.builder: TransactionBuilder | None = None
        self.mail_id: str | None = None   # of the current (or last) transaction, for error replies
        self.policy = None
        self.messages = 0
        self.entry: progress.Entry | None = None   # this connection on App.board
        self.serial = 0                             # the current message's, on the board
        self._debugging = False                     # this message is logged at debug
        self._protocol = 0
        self._actions = 0

    # --- negotiation -------------------------------------------------------------------
    def negotiate(self, opts):
        offered_actions, offered_protocol = opts[0], opts[1]
        self._actions = opts[0] = offered_actions & WANTED_ACTIONS
        self._protocol = opts[1] = offered_protocol & (SKIPPED_STEPS | NO_REPLY_STEPS | OPTIONAL_PROTOCOL)
        opts[2] = opts[3] = 0
        if self._actions & Milter.SETSYMLIST:
            self._ctx.setsymlist(Milter.M_CONNECT, " ".join(CONNECT_MACROS))
            self._ctx.setsymlist(Milter.M_ENVFROM, " ".join(ENVFROM_MACROS))
            self._ctx.setsymlist(Milter.M_EOM, " ".join(EOM_MACROS))
        return Milter.CONTINUE

    def _no_reply(self, stage: str) -> bool:
        bit = {"header": Milter.P_NR_HDR, "body": Milter.P_NR_BODY}.get(stage, 0)
        return bool(self._protocol & bit)

    def _macros(self, names) -> dict:
        out = {}
        for name in names:
            value = self.getsymval(name)
            if value is not None:
                out[name] = value
        return out

    def _accept_on_error(self) -> bool:
        policy = self.policy or policy_mod.merge(self.config, ())
        return policy.on_internal_error == "accept"

    def _answer(self, outcome: Outcome):
        return _ANSWER[outcome_mod.apply(outcome, self, leading_space=self._leadspc)]

    @property
    def _leadspc(self) -> bool:
        return bool(self._protocol & Milter.P_HDR_LEADSPC)

    # --- callbacks ---------------------------------------------------------------------
    @_guard("connect")
    def connect(self, hostname, family, hostaddr):
        macros = self._macros(CONNECT_MACROS)
        ip = port = None
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, tuple):
            ip, port = hostaddr[0], hostaddr[1]
        ip = macros.get("{client_addr}") or ip
        if macros.get("{client_port}", "").isdigit():
            port = int(macros["{client_port}"])
        self.entry = self.app.board.open(self.conn_id, ip)
        self.log.debug("connect from %s [%s]:%s", macros.get("{client_name}") or hostname, ip or "-", port or "-")
        for setting, (macro, hint) in _SELECTOR_MACROS.items():
            if self.config.settings[setting] and macro not in macros:
                self.app.warn_missing_macro(macro, hint)
        self.conn = Connection(self.conn_id, ip, port, macros.get("{client_name}") or hostname, None,
                               tuple(sorted(macros.items())), time.time())
        return Milter.CONTINUE

    @_guard("helo")
    def hello(self, name):
        if self.conn is not None:
            self.conn = dataclasses.replace(self.conn, helo=name)
        return Milter.CONTINUE

    @_guard("envfrom")
    def envfrom(self, mail_from, *params):
        self._reset()
        self.messages += 1
        ctx_id = self.conn_id if self.messages == 1 else f"{self.conn_id}-{self.messages}"
        self.log = logmod.for_context(ctx_id)
        macros = self._macros(ENVFROM_MACROS)
        conn = self.conn or Connection(ctx_id, None, None, None, None, (), time.time())
        s = self.config.settings
        self.builder = TransactionBuilder(conn, mail_from, params, macros,
                                          s["milter"]["spool_memory_bytes"], self.app.tmp_dir,
                                          digest_body=s["event_log"]["target"] != "none")
        self.mail_id = self.builder.mail_id
        self.serial = self.app.board.begin(self.entry, ctx_id, self.mail_id)
        conn_macros = dict(conn.macros)
        port = conn_macros.get("{daemon_port}")
        facts = policy_mod.SelectionFacts(
            daemon_name=conn_macros.get("{daemon_name}"),
            daemon_port=int(port) if port and port.isdigit() else None,
            client_ip=conn.client_ip,
            auth_authen=macros.get("{auth_authen}"),
            sender=self.builder.mail_from or None,
        )
        try:
            self.policy = policy_mod.select(self.config, facts)
            sender = self.builder.mail_from
            if self.policy.debug_sender.tables and self.policy.rcpt_value(
                    "debug_sender", sender, is_local=self.policy.is_local(sender) if sender else False):
                self._debug_message(f"debug_sender <{sender}>")
        except LookupFailed as exc:
            self.log.warning("bank selection lookup failed: %s", exc)
            return self._answer(Outcome(Action.TEMPFAIL, Reply("451", "4.3.0", "Temporary lookup failure")))
        self.log.debug("MAIL FROM <%s>%s, mail_id %s, bank %s", self.builder.mail_from,
                       "".join(f" {p}" for p in params), self.mail_id, self.policy.bank_path_str)
        return Milter.CONTINUE

    def _debug_message(self, why: str):
        """Log the rest of this message at debug (log.py), whatever log.level says."""
        if self._debugging:
            return
        self._debugging = True
        logmod.debug_begin()
        self.log = logmod.for_context(self.log.extra["ctx"], debug=True)
        self.log.debug("logging this message at debug: %s", why)

    @_guard("envrcpt")
    def envrcpt(self, to, *params):
        if self.builder is None:
            return Milter.TEMPFAIL
        addr = strip_brackets(to)
        self.app.board.mark(self.entry, "r")
        try:
            limit = self.policy.rcpt_value("message_size_limit", addr)
            if (not self._debugging and self.policy.debug_recipient.tables
                    and self.policy.rcpt_value("debug_recipient", addr)):
                self._debug_message(f"debug_recipient <{addr}>")
        except LookupFailed as exc:
            self.log.warning("lookup for <%s> failed: %s", addr, exc)
            return self._answer(Outcome(Action.TEMPFAIL, Reply("451", "4.3.0", "Temporary lookup failure")))
        declared = self.builder.declared_size
        if limit and declared is not None and declared > limit:
            self.log.info("RCPT <%s> refused: declared SIZE %d > message_size_limit %d", addr, declared, limit)
            return self._answer(Outcome(Action.REJECT, Reply(
                "552", "5.3.4", f"Message size ({declared} bytes) exceeds the size limit ({limit}) of this recipient")))
        if self.policy.split_recipients_at_rcpt and not self.policy.originating:
            try:
                fingerprint = decide_mod.fingerprint(self.policy, addr)
            except LookupFailed as exc:
                self.log.warning("lookup for <%s> failed: %s", addr, exc)
                return self._answer(Outcome(Action.TEMPFAIL, Reply("451", "4.3.0", "Temporary lookup failure")))
            if self.builder.rcpts and fingerprint != self.builder.fingerprint:
                # RFC 5321 3.3 and 4.5.3.1.10: the client sends it again in a transaction of its own
                self.log.info("RCPT <%s> deferred with 452 4.5.3: its policy differs from <%s>'s "
                              "(split_recipients_at_rcpt)", addr, self.builder.rcpts[0].addr)
                return self._answer(Outcome(Action.TEMPFAIL, Reply("452", "4.5.3", "Too many recipients")))
            if not self.builder.rcpts:
                self.builder.fingerprint = fingerprint
        self.builder.add_rcpt(Rcpt(to, addr, tuple(params)), limit)
        self.log.debug("RCPT <%s>%s", addr, "".join(f" {p}" for p in params))
        return Milter.CONTINUE

    @_guard("header", no_reply=True)
    def header_bytes(self, name, value):
        # pymilter calls header_bytes with the raw value; we keep bytes for exact reconstruction
        if self.builder is not None:
            sep = b":" if self._leadspc else b": "
            raw = name.encode("ascii", "surrogateescape") + sep + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
            text = value.decode("utf-8", "surrogateescape")
            self.builder.add_header(name, text, raw)
        return Milter.NOREPLY if self._no_reply("header") else Milter.CONTINUE

    @_guard("data")
    def data(self):
        self.app.board.mark(self.entry, "d")
        return Milter.CONTINUE

    @_guard("eoh")
    def eoh(self):
        if self.builder is not None and not self.builder.headers_done:
            self.builder.end_of_headers()
        return Milter.CONTINUE

    @_guard("body", no_reply=True)
    def body(self, chunk):
        if self.builder is not None:
            if not self.builder.headers_done:
                self.builder.end_of_headers()
            self.builder.add_body(chunk)
        return Milter.NOREPLY if self._no_reply("body") else Milter.CONTINUE

    @_guard("eom")
    def eom(self):
        builder = self.builder
        if builder is None:
            return Milter.TEMPFAIL
        if not builder.headers_done:
            builder.end_of_headers()
        macros = self._macros(EOM_MACROS)
        txn = builder.freeze(macros.get("i") or builder.macros.get("i"), macros)
        deadline = self.config.settings["milter"]["scan_deadline_s"]
        self.log.debug("end of data: %d bytes, %d header fields, queue id %s", txn.size, len(txn.headers),
                       txn.queue_id or "-")
        self.app.board.mark(self.entry, "d", self.serial, queue_id=txn.queue_id)
        self.app.begin()
        try:
            log_id = self.log.extra["ctx"]
            if builder.failed:
                self.log.error("answering TEMPFAIL for mail_id %s: %s", txn.mail_id, builder.failed)
                answer = outcome_mod.internal_error(txn.mail_id, accept=self._accept_on_error())
                action = self._answer(answer)
                observe.after_answer(self.config, self.policy, txn, None, answer, logger=self.log, log_id=log_id,
                                     error=builder.failed, error_reason="internal")
                return action
            # XXX: on a deadline the work goes on in its worker thread (it cannot be cancelled)
            # and the spool is closed under it; its late exception is discarded with the future.
            future = self.app.executor.submit(_check, self.app.board, self.entry, self.serial, self._debugging,
                                              self.config, self.policy, txn)
            try:
                result, cpu_ms = future.result(timeout=deadline)
            except concurrent.futures.TimeoutError:
                self.log.error("mail_id %s: checks did not finish within scan_deadline_s=%s; TEMPFAIL",
                               txn.mail_id, deadline)
                answer = Outcome(Action.TEMPFAIL, Reply(
                    "451", "4.7.1", f"Content check took too long, try again later, id={txn.mail_id}"))
                action = self._answer(answer)
                observe.after_answer(self.config, self.policy, txn, None, answer, logger=self.log, log_id=log_id,
                                     error=f"checks did not finish within scan_deadline_s={deadline}",
                                     error_reason="deadline")
                return action
            except Exception as exc:
                # counted and logged as an event here, answered (and its traceback logged) by _guard
                observe.after_answer(self.config, self.policy, txn, None,
                                     outcome_mod.internal_error(txn.mail_id, accept=self._accept_on_error()),
                                     logger=self.log, log_id=log_id, error_reason="internal",
                                     error=f"internal error: {type(exc).__name__}: {exc}")
                raise
            action = self._answer(result.outcome)
            if result.outcome.lookup_error:
                self.log.warning("mail_id %s: lookup failed (%s); reply: %s", txn.mail_id,
                                 result.outcome.lookup_error, result.outcome.reply)
            elapsed = (time.monotonic() - txn.started) * 1000
            if self.log.isEnabledFor(logging.DEBUG):
                for r in result.checks:
                    self.log.debug("check %s: %s, %.0f ms", r.name, _check_summary(r), r.elapsed_ms)
            for line in report.finding_lines(txn, result.findings):
                self.log.info("%s", line)
            decided_under = result.policy or self.policy   # with the banks the auth check chose
            for line in report.main_lines(txn, decided_under, result.outcome, elapsed):
                self.log.info("%s", line)
            observe.after_answer(self.config, decided_under, txn, result, result.outcome, logger=self.log,
                                 log_id=log_id, elapsed_ms=elapsed, cpu_ms=cpu_ms)
            return action
        finally:
            self.app.end()
            self.app.board.done(self.entry)
            self._reset()

    @_guard("abort")
    def abort(self):
        self.app.board.idle(self.entry)
        self._reset()
        return Milter.CONTINUE

    @_guard("close")
    def close(self):
        self.app.board.close(self.entry)
        self._reset()
        return Milter.CONTINUE

    def _reset(self):
        if self.builder is not None:
            self.builder.close()
        self.builder = None
        if self._debugging:
            self._debugging = False
            logmod.debug_end()
            self.log = logmod.for_context(self.log.extra["ctx"])


def _check(board, entry, serial: int, debug: bool, config, policy, txn):
    """The worker's part of end-of-message: the pipeline (with its CPU time), its steps shown
    on the status board, its own log lines at debug for a message at debug."""
    with board.checking(entry, serial), logmod.debugging(debug):
        return observe.with_cpu(pipeline.process, config, policy, txn)


def _check_summary(r) -> str:
    if r.could_not_check:
        return f"could not check: {r.could_not_check}"
    if r.tempfail:
        return f"tempfail: {r.tempfail}"
    found = "; ".join(f"{f.ccat.name} {f.detail}".rstrip() for f in r.findings)
    return found or "nothing found"


def _reload_waiter(app: App):
    while True:
        signal.sigwait({signal.SIGUSR1})
        app.reload()


def _serve(spec: str, timeout: int):
    """Milter.runmilter's registration, plus TCP_NODELAY on the listening socket.

    libmilter writes a header edit and the final reply of end-of-message as separate
    packets; with Nagle's algorithm the reply waits for the MTA's delayed ACK (40 ms per
    message, measured in bench/). Linux copies TCP_NODELAY from the listening socket to
    every accepted one, so setting it once after opensocket() covers all connections."""
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.setconn(spec)
    libmilter.settimeout(timeout)
    libmilter.register("pymavis", data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                       negotiate=Milter.negotiate_callback)
    libmilter.opensocket(True)
    if spec.startswith(("inet:", "inet6:")):
        _set_nodelay_on_listener(int(spec.split(":", 1)[1].split("@", 1)[0]))
    libmilter.main()


def _set_nodelay_on_listener(port: int):
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if (sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port
                        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return
            except (OSError, IndexError, TypeError):
                continue
    logmod.log.warning("could not set TCP_NODELAY on the listening socket (port %d)", port)


def libmilter_socket(spec: str) -> str:
    """Accept Postfix-style 'inet:HOST:PORT' as well as libmilter's 'inet:PORT@HOST'."""
    kind, _, rest = spec.partition(":")
    if kind in ("inet", "inet6") and "@" not in rest and ":" in rest:
        host, _, port = rest.rpartition(":")
        return f"{kind}:{port}@{host.strip('[]')}"
    if kind == "unix" or kind == "local":
        return spec
    return spec


# glibc gives each thread that allocates its own malloc arena (up to 8 per core) and keeps
# what is freed there; with libmilter's, our workers' and libmagic's threads that turned
# short peaks of decoding into resident memory (bench/README.md). Two arenas measured
# lower peak RSS at no throughput cost.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8


def _limit_malloc_arenas(arenas: int) -> None:
    """mallopt(M_ARENA_MAX) before any thread starts; nothing on a libc without it."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def set_switch_interval(milter_settings) -> None:
    """`milter.switch_interval_ms` as the interpreter's switch interval: how long a thread
    running Python keeps the GIL while others wait for it (Python's default 5 ms). The
    milter's Python is GIL-bound (libmilter's session threads, the workers, the log
    writers: ~21 thread switches per message in the workers, bench/logging_cost.py); 20 ms
    means fewer forced hand-overs: in one observe run of 10 repetitions -4% CPU per message
    with logging off, -7% with full logging, +5% throughput, the same median latency
    (docs/benchmarks.md, 2026-12-04).
    A thread that blocks or calls C code that lets go of the GIL (sockets, libmagic,
    libarchive, hashing, SQLite) hands it over at once, whatever the interval."""
    sys.setswitchinterval(milter_settings["switch_interval_ms"] / 1000)


def run(config, config_path: str, socket_spec: str | None = None, *, force_stderr: bool = False) -> int:
    global APP
    logmod.setup(config.settings["log"], force_stderr=force_stderr)
    APP = App(config, config_path, force_stderr=force_stderr)
    s = config.settings["milter"]
    spec = libmilter_socket(socket_spec or s["socket"])
    # Block these before any thread starts, so every thread inherits the mask: USR1 is taken
    # only by our waiter, TERM/INT/HUP only by libmilter's signal thread (sigwait). A thread
    # with them unblocked would let the kernel's default action kill the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    _limit_malloc_arenas(MALLOC_ARENAS)
    set_switch_interval(s)
    threading.Thread(target=_reload_waiter, args=(APP,), name="pymavis-reload", daemon=True).start()
    Milter.factory = PymavisMilter
    libmilter.setbacklog(s["backlog"])
    # Should anything escape the adapter's own catch-all, pymilter answers 451 4.3.0.
    libmilter.set_exception_policy(libmilter.TEMPFAIL)
    if config["event_log"]["target"] != "none":
        try:
            events.EVENTS.open_check(config)
        except events.SinkError as exc:
            logmod.log.error("%s; messages are filtered, their events are dropped until it works", exc)
        events.EVENTS.start()
    metrics.start(config, in_flight=lambda: APP.in_flight, current_config=lambda: APP.config)
    ctl_path = control.socket_path(config)
    ctl = None
    if ctl_path:   # pymavis status, pymavis stats
        ctl = control.ControlServer(ctl_path, {"status": APP.status_answer, "stats": APP.stats_answer})
        if not ctl.start():
            ctl = None
    logmod.log.info("pymavis starting on %s (config %s, %d workers)", spec, config_path, s["workers"])
    if not config["av_scanners"] and not config["av_scanners_backup"]:
        logmod.log.warning("no virus scanners configured (av_scanners): mail is not scanned for viruses")
    if not config["spam_scanners"]:
        logmod.log.warning("no spam scanners configured (spam_scanners): mail is not checked for spam")
    try:
        keep.keeper(config).db   # creates the index tables now, not at the first blocked message
    except sqlstore.StoreError as exc:
        logmod.log.error("the quarantine database is unusable, blocked mail will be answered TEMPFAIL "
                         "until it works: %s", exc)
    if config["resubmit"]["socket"]:
        notices.outbox(config)   # sends what an earlier run left queued
    _serve(spec, s["timeout"])
    logmod.log.info("stopping: waiting up to %ss for %d message(s) in flight", s["shutdown_grace_s"], APP.in_flight)
    if not APP.wait_idle(s["shutdown_grace_s"]):
        logmod.log.warning("shutdown grace period over with %d message(s) in flight; the MTA keeps them",
                           APP.in_flight)
    APP.executor.shutdown(wait=False, cancel_futures=True)
    notices.stop_all()
    sqllog.stop_all()   # writes what is queued, for a few seconds
    events.EVENTS.close()   # writes what is queued
    if ctl is not None:
        ctl.stop()
    metrics.stop()
    logmod.log.info("pymavis stopped")
    return 0
