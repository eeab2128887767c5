"""One JSON event per message, with amavisd-new's `structured_report` field names, to a
JSON-lines file, stdout or syslog (`event_log:`), so an existing Logstash/Elasticsearch
pipeline for amavis keeps working.

`build(config, policy, txn, result, outcome, elapsed_ms)` is a pure function of what the
milter knew once it had answered (plus a digest of the body, hashed as it arrived or read
from the spool); raw 8-bit envelope text in it (surrogate escapes) is made valid UTF-8 when
the event is written (`valid_text`: UTF-8 where it is, U+FFFD where not), only for the rare
line that needs it; the
fields and their meaning are in docs/observability.md, their shape in
docs/event.schema.json. As in amavis, a field with nothing to say is left out (a missing
boolean is false), times are seconds with three decimals, the per-recipient `action` is
PASS, REJECT, BOUNCE, DISCARD or TEMPFAIL (and our HOLD: accepted into the MTA's hold
queue). Differences from amavis: no `queued_as` (the MTA queues the message once, under
`queue_id`), `smtp_code`/`smtp_response` of passed and discarded recipients are what the
milter let the MTA answer (250), not a downstream MTA's reply; `type` is "amavis" so that
pipelines filtering on it keep working, `program` says "pymavis".

Redaction (`event_log.redact`), done once on the event before any sink sees it:
`addresses` replaces the local part of every envelope and header address (and addresses
inside reply and error texts) with the first 12 hex digits of the address's SHA-256,
keeping the domain; `subjects` replaces the Subject with "[redacted:<12 hex digits>]".
The digests let a reader count one sender or one campaign without reading it.

Sinks: the events are written by one thread of their own through a bounded queue
(MAX_QUEUED), never on the milter's thread: a slow or blocked sink (a full pipe on stdout)
drops events (counted, logged once a minute), it never delays an answer. The writer is
woken by the first event of a batch and lets the batch gather for LINGER_S, then writes
it with one write and one flush (a wake-up and a write per message cost the milter more
CPU than building the events: measured with bench/logging_cost.py). A file is opened for
appending and reopened when it was moved or removed (logrotate without copytruncate: no
signal needed). A sink that fails logs why (once a minute) and
the event is dropped; nothing here raises into the milter (`EventLog.emit` catches).

Configuration read: `event_log` (target, path, redact), `state_dir` (default path),
`log.syslog_socket` and `log.syslog_facility` (the syslog sink), `myhostname`.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import collections
import logging.handlers
import math
import os
import re
import sys
import threading
import time

from .addresses import plain_addresses
from .categories import CONTENT_TYPE_NAMES, Ccat
from .decode.mime import decode_bytes, decode_words
from .log import log
from .outcome import Action, reply_for

MAX_QUEUED = 10000      # events waiting for the writer; about 3 kB each, so at most ~30 MB
LINGER_S = 0.2          # how long the writer lets a batch of events gather
MAX_TEXT = 1000         # characters of a header text (Subject, User-Agent) in an event
MAX_NAMES = 100         # attached file names listed
WARN_EVERY_S = 60.0     # a failing sink or a full queue is logged at most this often
DIGEST_CHUNK = 64 * 1024

# amavis's checks_performed letters, by our check names (decode and size have none)
CHECK_LETTERS = {"virus": "V", "spam": "S", "header": "H", "banned": "B", "auth": "D"}   # auth: DKIM (SPF, DMARC)
_ACTION_OF = {"reject": "REJECT", "bounce": "BOUNCE", "discard": "DISCARD", "tempfail": "TEMPFAIL"}


# --- building the event (pure, apart from reading the spool for digest_body) ------------------


def build(config, policy, txn, result, outcome, elapsed_ms: float, *, log_id: str | None = None,
          error: str | None = None, now: float | None = None) -> dict:
    """The event for one answered message. `result` (pipeline.Result) is None when the
    checks never finished (scan deadline, an error before them): then there are no
    findings and no digest (the spool may still be read by the work left running)."""
    now = time.time() if now is None else now
    received = now - elapsed_ms / 1000   # wall time of MAIL FROM
    rcpts = [r.addr for r in txn.rcpts]
    headers = _Headers(txn)
    spam = spam_view(result)
    recipients = recipient_rows(policy, txn, outcome, spam)
    actions = list(dict.fromkeys(r["action"] for r in recipients))
    codes = list(dict.fromkeys(r["smtp_code"] for r in recipients if "smtp_code" in r))
    ctype = content_type(outcome)
    conn_macros = dict(txn.conn.macros)
    event: dict = {
        "@timestamp": _iso(received),
        "time_unix": round(received, 3),
        "time_iso_week_date": _week_date(received),
        "type": "amavis",
        "program": "pymavis",
        "host": config.myhostname if config is not None else None,
        "log_id": log_id or txn.conn.conn_id,
        "mail_id": txn.mail_id,
        "queue_id": txn.queue_id,
        "client_ip": txn.conn.client_ip,
        "client_port": txn.conn.client_port,
        "dst_ip": conn_macros.get("{daemon_addr}"),
        "dst_port": _int(conn_macros.get("{daemon_port}")),
        "policy_banks": list(policy.bank_path) if policy is not None else [],
        "originating": bool(policy is not None and policy.originating),
        "size": txn.size,
        "digest_body": digest_body(txn.spool) if result is not None else None,
        "mail_from": txn.mail_from,
        "rcpt_to": rcpts,
        "rcpt_num": len(rcpts),
        "recipients": recipients,
        "sender": headers.address("Sender"),
        "author": headers.addresses("From"),
        "to_addr": headers.addresses("To"),
        "cc_addr": headers.addresses("Cc"),
        "subject": headers.text("Subject"),
        "message_id": headers.text("Message-ID"),
        "user_agent": headers.text("User-Agent") or headers.text("X-Mailer"),
        "action": actions,
        "smtp_code": codes,
        "content_type": ctype,
        "quarantine": outcome.quarantined or None,
        "dsn_sent": bool(outcome.notify_sender),
        "message": f"{log_id or txn.conn.conn_id} {','.join(actions)} {ctype} <{txn.mail_from}> -> "
                   + ",".join(f"<{r}>" for r in rcpts),
        "error": error or outcome.lookup_error or outcome.quarantine_failed,
    }
    if result is not None:
        event.update(_from_result(result, spam))
    event["elapsed"] = elapsed(txn, result, elapsed_ms)
    return {k: v for k, v in event.items() if v not in (None, [], {})}


_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SEPARATORS = (",", ":")


def json_line(event: dict) -> str:
    """The event as one line of JSON that is valid UTF-8 (never a lone surrogate, which
    Elasticsearch refuses)."""
    line = json.dumps(event, ensure_ascii=False, separators=_JSON_SEPARATORS)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(valid_text(event), ensure_ascii=False, separators=_JSON_SEPARATORS)
    return line


def valid_text(value):
    """`value` with every string valid Unicode: raw 8-bit text from the MTA (surrogate
    escapes) read as UTF-8 where it is, U+FFFD where it is not (never invalid UTF-8 in the
    JSON, which Elasticsearch would refuse)."""
    if isinstance(value, str):
        if value.isascii() or not _SURROGATE.search(value):
            return value
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {k: valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    return value


def spam_view(result):
    """The spam check's SpamView, when it ran."""
    if result is None:
        return None
    return next((r.spam for r in result.checks if r.spam is not None), None)


def virus_names(result) -> list[str]:
    """The names of the viruses found, as the scanners reported them (also counted by metrics.py)."""
    return [v for f in result.findings if f.ccat is Ccat.VIRUS for v in dict(f.values).get("virus_names", ())]


def _from_result(result, spam) -> dict:
    letters = [CHECK_LETTERS[r.name] for r in result.checks if r.name in CHECK_LETTERS and performed(r)]
    viruses = virus_names(result)
    verdict = spam.verdict if spam is not None else None
    levels = [j.level for j in spam.judgements if j.level is not None] if spam is not None else []
    score = max(levels) if levels else (verdict.score if verdict is not None else None)
    scan = result.scan
    walk = scan._walk if scan is not None and scan.decoded else None   # never decodes here
    names = list(dict.fromkeys(p.name for p in walk.parts if p.name))[:MAX_NAMES] if walk is not None else []
    return {
        "checks_performed": " ".join(sorted(letters, key="VSHBFPD".index)) or None,
        "virusnames": list(dict.fromkeys(viruses)),
        "tests": sorted(verdict.tests) if verdict is not None else [],
        "spam_score": round(score, 3) if score is not None else None,
        "spam_cached": True if verdict is not None and verdict.cached else None,
        "attached_file_names": names,
    }


def performed(r) -> bool:
    """Whether a check did its work (a skipped one returns nothing and took no time)."""
    if r.could_not_check or r.tempfail:
        return False
    if r.name == "virus":
        return bool(r.scanned_by)
    if r.name == "spam":
        return r.spam is not None and r.spam.verdict is not None
    # XXX: header and banned checks say "skipped" only by returning nothing in 0 ms
    return bool(r.findings) or r.elapsed_ms > 0


def recipient_action(outcome, decision) -> str:
    """amavis's per-recipient action (its destiny as the client saw it)."""
    if outcome.action is Action.TEMPFAIL:
        return "TEMPFAIL"
    if not decision.blocked:
        return "PASS"
    if outcome.action is Action.REJECT:   # one 5xx reply for the whole message
        return "BOUNCE" if decision.destiny == "bounce" else "REJECT"
    if outcome.action is Action.DISCARD:
        return "DISCARD"
    if outcome.quarantine_reason:
        return "HOLD"
    return _ACTION_OF[decision.destiny]


def recipient_rows(policy, txn, outcome, spam=None) -> list[dict]:
    """One row per recipient (amavis's `recipients[]`); `spam` is the spam check's SpamView."""
    by_rcpt = {d.rcpt: d for d in outcome.decisions}
    rows = []
    for rcpt in txn.rcpts:
        d = by_rcpt.get(rcpt.addr)
        row: dict = {"rcpt_to": rcpt.addr}
        local = _is_local(policy, rcpt.addr)
        if local is not None:
            row["rcpt_is_local"] = local
        if d is None:   # answered before deciding (an error, a tempfail of a check)
            row["action"] = "PASS" if outcome.action is Action.CONTINUE else outcome.action.name
            reply = outcome.reply
        else:
            row["action"] = recipient_action(outcome, d)
            row["ccat_main"] = CONTENT_TYPE_NAMES[d.main]
            if d.blocked and d.blocking is not None:
                row["ccat_blocking"] = CONTENT_TYPE_NAMES[d.blocking.ccat]
            if outcome.action in (Action.TEMPFAIL, Action.REJECT):
                reply = outcome.reply if d.blocked or outcome.action is Action.TEMPFAIL else None
            elif row["action"] in ("REJECT", "BOUNCE"):   # refused while others passed: a DSN
                reply = reply_for(policy, d, txn.mail_id)
            else:
                reply = None
        if reply is not None:
            row.update(smtp_code=reply.code, smtp_response=str(reply))
        elif row["action"] == "DISCARD":
            row.update(smtp_code="250", smtp_response=f"250 2.7.0 Ok, discarded, id={txn.mail_id}")
        else:
            row.update(smtp_code="250", smtp_response=f"250 2.0.0 Ok, id={txn.mail_id}")
        j = spam.judgement(rcpt.addr) if spam is not None and d is not None else None
        if j is not None:
            if j.level is not None:
                row["spam_score"] = round(j.level, 3)
            if j.lists.blacklisted:
                row["blacklisted"] = True
            if j.lists.whitelisted:
                row["whitelisted"] = True
        rows.append(row)
    return rows


def content_type(outcome) -> str:
    """amavis's message-level content_type: the highest blocking category when someone was
    blocked, else the highest main category; MTA when nothing was decided."""
    blocking = [d.blocking.ccat for d in outcome.decisions if d.blocked and d.blocking is not None]
    if blocking:
        return CONTENT_TYPE_NAMES[max(blocking)]
    if outcome.decisions:
        return CONTENT_TYPE_NAMES[max(d.main for d in outcome.decisions)]
    return CONTENT_TYPE_NAMES[Ccat.MTA]


def message_action(outcome) -> str:
    """The milter's one answer, for metrics: pass, hold, reject, discard, tempfail."""
    if outcome.action is Action.CONTINUE:
        return "hold" if outcome.quarantine_reason else "pass"
    return outcome.action.value


STAGE_FIELDS = {"decode": "Decoding", "virus": "VirusCheck", "spam": "SpamCheck"}


def elapsed(txn, result, elapsed_ms: float) -> dict:
    """amavis's `elapsed` (seconds): Receiving (MAIL FROM to end of data); Decoding,
    VirusCheck, SpamCheck from the pipeline's stages, when they ran; Amavis (Total less
    the two scans) and Total (MAIL FROM to the answer)."""
    out = {"Receiving": max(0.0, txn.data_done - txn.started) if txn.data_done else 0.0}
    if result is not None:
        ran = {r.name for r in result.checks if performed(r)}
        if result.scan is None or result.scan.decoded:   # None: a result without its Scan (tests)
            ran.add("decode")
        for stage, ms in result.timings:
            name = STAGE_FIELDS.get(stage)
            if name and stage in ran:   # as amavis: only the sections that ran
                out[name] = out.get(name, 0.0) + ms / 1000
    total = elapsed_ms / 1000
    out["Amavis"] = max(0.0, total - out.get("SpamCheck", 0.0) - out.get("VirusCheck", 0.0))
    out["Total"] = total
    return {k: round(v, 3) for k, v in out.items()}


def digest_body(spool) -> str | None:
    """MD5 of the body (after the header section) as stored, amavis's digest_body; None
    when the message was not stored whole (or the spool cannot be read). The milter hashes
    the body as it arrives when events are on (TransactionBuilder digest_body); else the
    spool is read again."""
    if getattr(spool, "truncated", False):
        return None
    if getattr(spool, "body_md5", None) is not None:   # hashed as the body arrived
        return spool.body_md5.hexdigest()
    digest = hashlib.md5(usedforsecurity=False)
    try:
        head = spool.read_head()
        reader = spool.reader()
        reader.seek(len(head))
        while chunk := reader.read(DIGEST_CHUNK):
            digest.update(chunk)
    except (OSError, ValueError) as exc:   # ValueError: a closed spool
        log.warning("digest_body: cannot read the spool: %s", exc)
        return None
    return digest.hexdigest()


def _is_local(policy, addr: str) -> bool | None:
    if policy is None:
        return None
    try:
        return policy.is_local(addr)
    except Exception:   # noqa: BLE001 - a failed lookup (LookupFailed) only leaves the field out
        return None


def _int(text) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() else None


def _iso(t: float) -> str:
    seconds = math.floor(t)
    us = round((t - seconds) * 1_000_000)   # as datetime: to the microsecond (half to even), then cut
    if us == 1_000_000:
        seconds, us = seconds + 1, 0
    g, ms = time.gmtime(seconds), us // 1000
    return (f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}T{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
            f".{ms:03d}Z")


def _week_date(t: float) -> str:
    year, week, day = datetime.datetime.fromtimestamp(t).isocalendar()
    return f"{year:04d}-W{week:02d}-{day}"


_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")    # raw 8-bit text from the MTA, as surrogateescape
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def clean_text(value: str, limit: int = MAX_TEXT, *, words: bool = True) -> str:
    """A header value as a reader sees it: unfolded, raw 8-bit read as UTF-8 (else Latin-1),
    encoded-words decoded (unless `words` is false: an address list, where a decoded comma
    would split a name), control characters as spaces, at most `limit` characters."""
    text = _UNFOLD.sub("", value)
    if not text.isascii() and _ESCAPED_BYTE.search(text):
        text = decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    if words and "=?" in text:
        text = decode_words(text)
    text = _CONTROL.sub(" ", text).strip()
    text = text.encode("utf-8", "replace").decode("utf-8")   # no lone surrogates in JSON
    return text if len(text) <= limit else text[: limit - 3] + "..."


def address_list(values: list[str]) -> list[str]:
    """The addresses of address-list header values, as email.utils.getaddresses finds
    them (the plain forms through pymavis.addresses, the rest through getaddresses).
    Empty addresses are left out."""
    found = plain_addresses(", ".join(values))
    if found is not None:
        return found
    try:
        return [addr for _, addr in email.utils.getaddresses(values) if addr]
    except (ValueError, IndexError):
        return []


class _Headers:
    """The header fields by lower-cased name (one pass over them for all the event's fields)."""

    def __init__(self, txn):
        self.by_name = txn.header_index

    def text(self, name: str) -> str | None:
        values = self.by_name.get(name.lower())
        return clean_text(values[0]) if values else None

    def addresses(self, name: str) -> list[str]:
        values = self.by_name.get(name.lower())
        if not values:
            return []
        return list(dict.fromkeys(address_list([clean_text(v, 10000, words=False) for v in values])))[:MAX_NAMES]

    def address(self, name: str) -> str | None:
        found = self.addresses(name)
        return found[0] if found else None


# --- redaction ---------------------------------------------------------------------------------

_ADDRESS = re.compile(r"[^\s<>@\"',;:()\[\]]+@[A-Za-z0-9.\-\[\]:]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def pseudonym(addr: str) -> str:
    """The address with its local part replaced by a digest of the whole (lower-cased)."""
    if not addr:
        return addr   # the null sender stays visible
    _, at, domain = addr.rpartition("@")
    return f"{_digest(addr.lower())}@{domain}" if at else _digest(addr.lower())


def _redact_in_text(text: str) -> str:
    return _ADDRESS.sub(lambda m: pseudonym(m.group(0)), text)


def redact(event: dict, addresses: bool, subjects: bool) -> dict:
    """A copy of `event` with addresses and/or the subject replaced (module doc)."""
    if not (addresses or subjects):
        return event
    out = dict(event)
    if subjects and "subject" in out:
        out["subject"] = f"[redacted:{_digest(out['subject'])}]"
    if addresses:
        if "mail_from" in out:
            out["mail_from"] = pseudonym(out["mail_from"])
        for key in ("rcpt_to", "author", "to_addr", "cc_addr"):
            if key in out:
                out[key] = [pseudonym(a) for a in out[key]]
        if "sender" in out:
            out["sender"] = pseudonym(out["sender"])
        out["recipients"] = [_redact_row(r) for r in out.get("recipients", ())]
        for key in ("message", "error"):
            if key in out:
                out[key] = _redact_in_text(out[key])
    return out


def _redact_row(row: dict) -> dict:
    row = dict(row, rcpt_to=pseudonym(row["rcpt_to"]))
    if "smtp_response" in row:
        row["smtp_response"] = _redact_in_text(row["smtp_response"])
    return row


# --- sinks ---------------------------------------------------------------------------------------


class SinkError(Exception):
    pass


class FileSink:
    """Appends one line per event; reopens the file when it was moved away or removed."""

    def __init__(self, path: str):
        self.path = path
        self._fh = None
        self._ino = None

    def _open(self):
        self.close()
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
            st = os.fstat(self._fh.fileno())
        except OSError as exc:
            self._fh = None
            raise SinkError(f"cannot open the event log {self.path}: {exc.strerror or exc}") from None
        self._ino = (st.st_dev, st.st_ino)

    def write_lines(self, lines: list[str]) -> None:
        if self._fh is None or self._moved():
            self._open()
        try:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
        except (OSError, ValueError) as exc:
            self.close()
            raise SinkError(f"cannot write to the event log {self.path}: {exc}") from None

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._ino

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None


class StdoutSink:
    def __init__(self, stream=None):
        self.stream = stream

    def write_lines(self, lines: list[str]) -> None:
        stream = self.stream or sys.stdout
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot write events to stdout: {exc}") from None

    def close(self) -> None:
        pass


class _SyslogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record):   # noqa: N802 - logging's name
        raise SinkError(f"cannot send the event to syslog at {self.address}: {sys.exc_info()[1]}")


class SyslogSink:
    """One syslog message per event, tag `pymavis-event[PID]`, priority info, the facility
    and socket of `log:` (rsyslog: `:programname, isequal, "pymavis-event"` selects them)."""

    def __init__(self, socket_path: str, facility: str):
        self.socket_path, self.facility = socket_path, facility
        self._handler = None

    def write_lines(self, lines: list[str]) -> None:
        if self._handler is None:
            try:
                self._handler = _SyslogHandler(address=self.socket_path, facility=self.facility)
            except OSError as exc:
                raise SinkError(f"cannot open syslog socket {self.socket_path}: {exc}") from None
            self._handler.setFormatter(logging.Formatter(f"pymavis-event[{os.getpid()}]: %(message)s"))
        for line in lines:
            self._handler.emit(logging.LogRecord("pymavis.event", logging.INFO, __file__, 0, line, None, None))

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


def default_path(config) -> str:
    path = config["event_log"]["path"] or "events.jsonl"
    return path if os.path.isabs(path) else os.path.join(config["state_dir"], path)


def sink_key(config) -> tuple | None:
    """What identifies the sink this configuration asks for (None: events off)."""
    s = config["event_log"]
    if s["target"] == "none":
        return None
    if s["target"] == "file":
        return ("file", default_path(config))
    if s["target"] == "syslog":
        return ("syslog", config["log"]["syslog_socket"], config["log"]["syslog_facility"])
    return ("stdout",)


def make_sink(key: tuple):
    if key[0] == "file":
        return FileSink(key[1])
    if key[0] == "syslog":
        return SyslogSink(key[1], key[2])
    return StdoutSink()


class EventLog:
    """The writer thread and its queue; one sink per distinct target the configurations
    asked for (a reload that names another file opens it at its first event; the old one
    stays open for connections that still hold the old snapshot)."""

    def __init__(self, max_queued: int = MAX_QUEUED, linger_s: float = LINGER_S):
        self.max_queued, self.linger_s = max_queued, linger_s
        self._pending: collections.deque = collections.deque()
        self._writing = 0         # events taken from _pending, not written yet
        self._hurry = 0           # flush() callers waiting: no lingering
        self._cond = threading.Condition()
        self._sinks: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.written = self.dropped = self.failed = 0
        self._warned_at: dict[str, float] = {}

    def emit(self, config, event: dict) -> bool:
        """Queue `event` for the sink `config` names; False when it was dropped. Never raises."""
        try:
            key = sink_key(config)
            if key is None:
                return False
            s = config["event_log"]["redact"]
            event = redact(event, s["addresses"], s["subjects"])
            self.start()
            with self._cond:
                if len(self._pending) >= self.max_queued:
                    self.dropped += 1
                    full = True
                else:
                    self._pending.append((key, event))
                    full = False
                    if len(self._pending) == 1:   # the first of a batch wakes the writer
                        self._cond.notify_all()
            if not full:
                return True
            self._warn("full", "event log queue full (%d events waiting): events are dropped; %d so far",
                       self.max_queued, self.dropped)
        except Exception:   # noqa: BLE001 - an event must never reach into the milter's answer
            with self._cond:
                self.dropped += 1
            log.exception("building the JSON event of mail_id %s failed", event.get("mail_id", "-"))
        return False

    def open_check(self, config) -> None:
        """Open the configured sink now, so a bad path is reported at start; raises SinkError."""
        key = sink_key(config)
        if key is not None and key[0] == "file":
            with self._lock:
                sink = self._sinks.get(key) or self._sinks.setdefault(key, make_sink(key))
                sink._open()

    def start(self):
        """Start the writer thread (once; the milter starts it before libmilter's threads)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="pymavis-events", daemon=True)
                    self._thread.start()

    def _run(self):
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                if not self._hurry:       # let the batch gather (emit does not wake us again)
                    self._cond.wait(self.linger_s)
                batch = list(self._pending)
                self._pending.clear()
                self._writing = len(batch)
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()

    def _write(self, batch: list[tuple[tuple, dict]]) -> None:
        lines: dict[tuple, list[str]] = {}
        for key, event in batch:
            try:
                lines.setdefault(key, []).append(json_line(event))
            except Exception:   # noqa: BLE001 - the writer thread must live on
                self._count("failed", 1)
                log.exception("writing the JSON event of mail_id %s failed", event.get("mail_id", "-"))
        for key, some in lines.items():
            with self._lock:
                sink = self._sinks.get(key) or self._sinks.setdefault(key, make_sink(key))
            try:
                sink.write_lines(some)
                self._count("written", len(some))
            except SinkError as exc:
                failed = self._count("failed", len(some))
                self._warn(str(key), "%s; events are dropped until it works (%d so far)", exc, failed)
            except Exception:   # noqa: BLE001 - the writer thread must live on
                self._count("failed", len(some))
                log.exception("writing %d JSON event(s) failed", len(some))

    def _count(self, what: str, n: int) -> int:
        with self._cond:
            value = getattr(self, what) + n
            setattr(self, what, value)
            return value

    def _warn(self, what: str, fmt: str, *args):
        now = time.monotonic()
        if now - self._warned_at.get(what, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned_at[what] = now
            log.error(fmt, *args)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                while self._pending or self._writing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._hurry -= 1

    def close(self) -> None:
        self.flush()
        with self._lock:
            for sink in self._sinks.values():
                sink.close()
            self._sinks.clear()


EVENTS = EventLog()
