"""`pymavis scan FILE...`: run the checks offline on message files and show what they found.

The operator's window into the checks, without an MTA: for each file, the part tree the
decoder saw (path, depth path, declared type, detected type, size, name), the walk's
problems, every finding, and per recipient the main content category, its destiny and what
the MTA would be told (action, reply, headers added, recipients removed), plus the main log
line(s) the milter would write. `--json` prints one object per file per line instead.

How a file becomes a transaction (what the adapter would have built from the MTA):
- a leading mbox "From " line is dropped; the rest of the file is one message (an mbox
  with several messages is scanned as one);
- line ends become CRLF (LF or CRLF in the file), and a last line without one gets one;
- the header section is split into (name, value) fields as Postfix hands them to a milter:
  it ends at the first empty line, or at the first line that is neither a field head
  (`Name:`) nor a continuation -- that line starts the body, as in Postfix -- and each
  field is written back to the spool as `Name: value` (whitespace after the colon dropped),
  exactly as the adapter does;
- as in the adapter, once the message passes every recipient's `message_size_limit` the
  rest is counted but not stored (UNCHECKED over limits besides OVERSIZED).

Envelope and policy: `--from ADDR` (default: the null sender, `<>`: no sender-dependent
bank, nothing owed to anyone); `--to ADDR`, repeatable (default: `user@MYDOMAIN`, with
`mydomain` from the configuration). The policy is `--bank NAME[,NAME...]` merged over the
default bank (`--bank DEFAULT` or `--bank ""`: the default bank alone); without it, banks are
selected as the milter does from what we know offline: `--client-ip` (client_ipaddr_policy,
mynets_bank) and the sender (myusers_bank). Daemon name, port and SMTP AUTH are unknown
offline: name such banks with `--bank`.

Exit codes: 0 every file is Clean for every recipient; 1 some file has findings (a main
category other than Clean for some recipient); 2 some file could not be read or scanned
(an internal error, a failed lookup), a usage error, a configuration error or an unknown
bank. A file that cannot be read or scanned is reported (on stderr, and as
{"file", "error"} with --json) and the next file is scanned; 2 wins over 1.

JSON object per file (amavis's content-type names: Clean, MTA, Oversized, BadHdr, Spammy,
Spam, Unchecked, Banned, Virus): file, content_type (the highest main category over the
recipients), ccat_main {rcpt: {ccat, minor, destiny, blocking}}, decoded, parts [{path,
depth_path, declared_type, detected, name, size, magic}], problems [{minor, part, detail}],
findings [{check, ccat, minor, detail, rcpts (null: all), values}], action, reply, headers
[[name, value]], del_rcpts, notify_sender, mail_id, size, sender, bank, timings_ms. Later
checks' results (virus names, spam score) arrive as their findings' `values`.

Limits: the file is read whole into memory (a message, not a mailbox); the spool holds
up to `milter.spool_memory_bytes` in memory, the rest in the system's temp directory (not
state_dir: an offline run writes nothing there). The walk has the configuration's `decode:`
limits, as in the milter.

Configuration read: everything the pipeline reads (policy, banks, decode, file_type_map,
banned_rules), `mydomain` (default recipient), `milter.spool_memory_bytes`. Logging is not
set up from `log:` (an offline run must not write to syslog): the checks' warnings, if
any, reach stderr through Python's last-resort handler.
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback
from dataclasses import dataclass

from . import pipeline, report
from .categories import CONTENT_TYPE_NAMES, Ccat
from .lookups import LookupFailed
from .outcome import Action
from .policy import SelectionFacts, merge, select
from .sanitize import ascii_text, header_text
from .spec import suggest
from .transaction import Connection, Rcpt, TransactionBuilder, strip_brackets

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

DEFAULT_LOCAL_PART = "user"
NOT_DECODED = "not decoded: every recipient bypasses the checks that need the parts"

_FIELD_HEAD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")   # as checks/headers.py and Postfix's is_header()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ScanError(Exception):
    """Nothing can be scanned with these options (an unknown bank, a failed bank lookup)."""


class FileError(Exception):
    """This file could not be scanned; the message says why."""


# --- from file bytes to a transaction --------------------------------------------------


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(fields, body) as an MTA hands the message to a milter: [(name, value)], where a folded
    value keeps its CRLF line breaks, and the body with CRLF line ends."""
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    if data and not data.endswith(b"\n"):
        data += b"\n"
    data = re.sub(rb"\r?\n", b"\r\n", data)
    fields: list[list] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        line, after = data[pos:end], end + 2
        if not line:
            pos = after
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\r\n" + line
        elif m := _FIELD_HEAD.match(line):
            fields.append([m.group(1), line[m.end():].lstrip(b" \t")])
        else:
            break   # Postfix: a line that is no header ends the header section and starts the body
        pos = after
    return [(name, value) for name, value in fields], data[pos:]


def build_transaction(config, policy, data: bytes, sender: str, rcpts: list[str], *, client_ip: str | None = None):
    """A frozen Transaction for `data`, its spool filled as the adapter fills it.
    Raises LookupFailed (message_size_limit) and OSError (the spool's temp file)."""
    conn = Connection("scan", client_ip, None, None, None, (), time.time())
    builder = TransactionBuilder(conn, sender, (), {}, config["milter"]["spool_memory_bytes"], None)
    try:
        for r in rcpts:
            builder.add_rcpt(Rcpt(f"<{r}>", r), policy.rcpt_value("message_size_limit", r))
        fields, body = split_message(data)
        for name, value in fields:
            builder.add_header(name.decode("ascii"), value.replace(b"\r\n", b"\n").decode("utf-8", "surrogateescape"),
                               name + b": " + value + b"\r\n")
        builder.end_of_headers()
        builder.add_body(body)
        return builder.freeze(None, {})
    except BaseException:
        builder.close()
        raise


def choose_policy(config, banks: str | None, *, client_ip: str | None = None, sender: str = ""):
    """--bank NAMES merged over the default bank, else selected as the milter would from the
    client address and the sender. Raises ScanError."""
    if banks is None:
        try:
            return select(config, SelectionFacts(client_ip=client_ip, sender=sender or None))
        except LookupFailed as exc:
            raise ScanError(f"bank selection failed: {exc}") from None
    names = tuple(n.strip() for n in banks.split(",") if n.strip())
    if names == ("DEFAULT",) and "DEFAULT" not in config.banks:
        names = ()
    for name in names:
        if name not in config.banks:
            defined = ", ".join(sorted(config.banks)) or "none"
            raise ScanError(f"--bank: policy bank {name!r} is not defined{suggest(name, config.banks)}; "
                            f"defined banks: {defined}")
    return merge(config, names)


# --- one file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scanned:
    file: str
    txn: object             # transaction.Transaction (its spool closed)
    policy: object
    result: pipeline.Result
    elapsed_ms: float

    @property
    def content_type(self) -> Ccat:
        return max((d.main for d in self.result.outcome.decisions), default=Ccat.CLEAN)


def scan_bytes(config, policy, file: str, data: bytes, sender: str, rcpts: list[str], *,
               client_ip: str | None = None) -> Scanned:
    """Run the pipeline on one message. Raises FileError; other exceptions are ours (bugs)."""
    started = time.monotonic()
    try:
        txn = build_transaction(config, policy, data, sender, rcpts, client_ip=client_ip)
    except LookupFailed as exc:
        raise FileError(f"lookup failed: {exc}") from None
    except OSError as exc:
        raise FileError(f"cannot spool the message: {exc}") from None
    try:
        result = pipeline.process(config, policy, txn, keep_blocked=False)
        if result.outcome.lookup_error:
            raise FileError(f"lookup failed: {result.outcome.lookup_error}; the milter would answer "
                            f"{result.outcome.reply}")
        if not result.outcome.decisions:   # a check could not run at all (every virus scanner failed)
            why = next((r.tempfail for r in result.checks if r.tempfail), "no decision")
            raise FileError(f"{why}; the milter would answer {result.outcome.reply}")
        if result.scan is not None and result.scan.decoded:
            try:
                result.scan.walk   # cached by now; only a spool read error can show here
            except OSError as exc:
                raise FileError(f"cannot read the spool: {exc}") from None
    finally:
        txn.spool.close()
    return Scanned(file, txn, policy, result, (time.monotonic() - started) * 1000)


def read_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def run(config, files: list[str], *, sender: str = "", rcpts: list[str] | None = None, banks: str | None = None,
        client_ip: str | None = None, as_json: bool = False, quiet: bool = False, out=None, err=None) -> int:
    """Scan every file, print as asked, return the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    sender = strip_brackets(sender)
    rcpts = [strip_brackets(r) for r in rcpts] if rcpts else [f"{DEFAULT_LOCAL_PART}@{config.mydomain}"]
    try:
        policy = choose_policy(config, banks, client_ip=client_ip, sender=sender)
    except ScanError as exc:
        print(f"pymavis scan: {exc}", file=err)
        return EXIT_ERROR
    status = EXIT_CLEAN
    for file in files:
        try:
            data = read_file(file)
        except OSError as exc:
            status = _error(out, err, file, f"cannot read: {exc.strerror or exc}", as_json, quiet)
            continue
        try:
            scanned = scan_bytes(config, policy, file, data, sender, rcpts, client_ip=client_ip)
        except FileError as exc:
            status = _error(out, err, file, str(exc), as_json, quiet)
            continue
        except Exception as exc:  # a bug must not cost the operator the other files' results
            where = traceback.extract_tb(exc.__traceback__)[-1]
            status = _error(out, err, file, f"internal error: {type(exc).__name__}: {exc} "
                                            f"(at {where.filename}:{where.lineno})", as_json, quiet)
            continue
        if scanned.content_type is not Ccat.CLEAN and status == EXIT_CLEAN:
            status = EXIT_FINDINGS
        if quiet:
            continue
        if as_json:
            print(json.dumps(to_json(scanned), default=str), file=out)
        else:
            print(render_text(scanned), file=out)
    return status


def _error(out, err, file: str, message: str, as_json: bool, quiet: bool) -> int:
    print(f"pymavis scan: {safe(file)}: {message}", file=err)
    if as_json and not quiet:
        print(json.dumps({"file": file, "error": message}), file=out)
    return EXIT_ERROR


# --- rendering ---------------------------------------------------------------------------


def safe(text) -> str:
    """One line of printable ASCII: non-ASCII and control characters as escapes
    (sanitize.ascii_text leaves C0 controls, which would break a line)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", ascii_text(text))


def _parts(scanned: Scanned):
    """(parts, problems), or None when the walk never ran."""
    scan = scanned.result.scan
    if scan is None or not scan.decoded:
        return None
    return scan.walk.parts, scan.walk.problems


def _rcpt_fate(outcome, rcpt: str) -> str:
    if outcome.action is Action.REJECT:
        return "rejected (the whole message)"
    if outcome.action is Action.DISCARD:
        return "discarded (the whole message)"
    if outcome.action is Action.TEMPFAIL:
        return "tempfailed (the whole message)"
    if rcpt in outcome.del_rcpts:
        owed = ", sender notice owed" if rcpt in outcome.notify_sender else ""
        return f"removed with delrcpt{owed}"
    return "delivered"


def render_text(scanned: Scanned) -> str:
    txn, result = scanned.txn, scanned.result
    outcome = result.outcome
    lines = [f"{safe(scanned.file)}: {CONTENT_TYPE_NAMES[scanned.content_type]} (mail_id {txn.mail_id}, {txn.size} bytes, "
             f"bank {scanned.policy.bank_path_str}, sender <{safe(txn.mail_from)}>, {scanned.elapsed_ms:.0f} ms)"]
    walked = _parts(scanned)
    if walked is None:
        lines.append(f"  parts: {NOT_DECODED}")
    else:
        parts, problems = walked
        lines.append("  parts:")
        for p in parts:
            indent = "  " * (p.depth_path.count("/") + 2)
            detected = f" ({p.detected})" if p.detected else ""
            name = f', name "{safe(p.name)}"' if p.name is not None else ""
            lines.append(f"{indent}{p.path} {p.depth_path} {safe(p.declared_type or '-')}{detected}, "
                         f"{p.size} bytes{name}")
        lines.append("  problems:" + ("" if problems else " none"))
        lines.extend(f"    {pr.minor}: {pr.part or '-'}: {safe(pr.detail)}" for pr in problems)
    lines.append("  findings:" + ("" if result.findings else " none"))
    for f in result.findings:
        rcpts = "" if f.rcpts is None else " for " + ",".join(f"<{safe(r)}>" for r in sorted(f.rcpts))
        lines.append(f"    {report.ccat_name(f.ccat, f.minor)} (minor {f.minor}) {f.check}{rcpts}: {safe(f.detail)}")
    lines.append("  recipients:")
    for d in outcome.decisions:
        why = f", blocked by {report.ccat_name(d.blocking.ccat, d.blocking.minor)} ({d.blocking.check})" \
            if d.blocking else ""
        lines.append(f"    <{safe(d.rcpt)}>: {CONTENT_TYPE_NAMES[d.main]} (minor {d.main_minor}), destiny {d.destiny}{why}"
                     f" -> {_rcpt_fate(outcome, d.rcpt)}")
    reply = f" {outcome.reply}" if outcome.reply else ""
    lines.append(f"  MTA: {outcome.action.value}{reply}")
    lines.extend(f"    add header: {h.name}: {header_text(h.value)}" for h in outcome.headers)
    lines.extend(f"    delrcpt: <{safe(r)}>" for r in outcome.del_rcpts)
    lines.extend(f"  log: {line}" for line in report.main_lines(txn, scanned.policy, outcome, scanned.elapsed_ms))
    return "\n".join(lines)


def to_json(scanned: Scanned) -> dict:
    txn, result = scanned.txn, scanned.result
    outcome = result.outcome
    walked = _parts(scanned)
    parts, problems = walked if walked is not None else ((), ())
    return {
        "file": scanned.file,
        "content_type": CONTENT_TYPE_NAMES[scanned.content_type],
        "ccat_main": {d.rcpt: {"ccat": CONTENT_TYPE_NAMES[d.main], "minor": d.main_minor, "destiny": d.destiny,
                               "blocking": None if d.blocking is None else {
                                   "check": d.blocking.check, "ccat": CONTENT_TYPE_NAMES[d.blocking.ccat],
                                   "minor": d.blocking.minor}}
                      for d in outcome.decisions},
        "decoded": walked is not None,
        "parts": [{"path": p.path, "depth_path": p.depth_path, "declared_type": p.declared_type,
                   "detected": p.detected, "name": p.name, "size": p.size, "magic": p.magic} for p in parts],
        "problems": [{"minor": p.minor, "part": p.part, "detail": p.detail} for p in problems],
        "findings": [{"check": f.check, "ccat": CONTENT_TYPE_NAMES[f.ccat], "minor": f.minor, "detail": f.detail,
                      "rcpts": None if f.rcpts is None else sorted(f.rcpts), "values": dict(f.values)}
                     for f in result.findings],
        "action": outcome.action.value,
        "reply": str(outcome.reply) if outcome.reply else None,
        "headers": [[h.name, header_text(h.value)] for h in outcome.headers],
        "del_rcpts": list(outcome.del_rcpts),
        "notify_sender": list(outcome.notify_sender),
        "mail_id": txn.mail_id,
        "size": txn.size,
        "sender": txn.mail_from,
        "bank": scanned.policy.bank_path_str,
        "timings_ms": {**{stage: round(ms, 3) for stage, ms in result.timings}, "total": round(scanned.elapsed_ms, 3)},
    }
